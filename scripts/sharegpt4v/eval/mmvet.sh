#!/usr/bin/env bash
# MM-Vet: answers sharded over the GPUs, merged, converted to the official grader's results JSON, graded by a GPT
# judge with MM-Vet's grading prompt (total and per capability).
#
#   OPENAI_API_KEY=... CUDA_VISIBLE_DEVICES=0 bash scripts/sharegpt4v/eval/mmvet.sh [CKPT_NAME] [CKPT_DIR]
#
# Reads $EVAL_ROOT/mm-vet/{share4v-mm-vet.jsonl, mm-vet.json, images/ (or resources/images/)}; writes
# mm-vet/answers/CKPT.jsonl (chunks in answers/CKPT/), mm-vet/results/CKPT.json (what the official grader and
# server take) and scores/CKPT/mmvet.json. The judge: OPENAI_API_KEY, OPENAI_BASE_URL, SHARE4V_JUDGE_MODEL;
# SKIP_JUDGE=1 stops after the results JSON. Environment: see lib.sh.
set -euo pipefail
# shellcheck source=scripts/sharegpt4v/eval/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval_init mmvet "$@"

DATA=$EVAL_ROOT/mm-vet
QUESTIONS=$DATA/share4v-mm-vet.jsonl
IMAGES=$(first_existing "$DATA/images" "$DATA/resources/images")
need "$QUESTIONS" "the question file is in the evaluation playground.zip (extract it to playground/)"
need "$DATA/mm-vet.json" "download mm-vet.zip (MM-Vet's release v1) and extract it to $EVAL_ROOT/"
need "$IMAGES" "download mm-vet.zip (MM-Vet's release v1) and extract it to $EVAL_ROOT/"
if [[ -z ${SKIP_JUDGE:-} && -z ${OPENAI_API_KEY:-} && -z ${OPENAI_BASE_URL:-} ]]; then
    die "the GPT judge needs OPENAI_API_KEY (or OPENAI_BASE_URL of a local endpoint); SKIP_JUDGE=1 only answers"
fi

run_chunks "$DATA/answers/$CKPT" share4v.eval.model_vqa --model-path "$MODEL_PATH" --question-file "$QUESTIONS" \
    --image-folder "$IMAGES" --temperature 0 --conv-mode "$CONV_MODE" --batch-size "$BATCH_SIZE"
merge_chunks "$DATA/answers/$CKPT" "$DATA/answers/$CKPT.jsonl"

"$PYTHON" scripts/convert_mmvet_for_eval.py --src "$DATA/answers/$CKPT.jsonl" --dst "$DATA/results/$CKPT.json"
if [[ -n ${SKIP_JUDGE:-} ]]; then
    echo "SKIP_JUDGE is set: $DATA/results/$CKPT.json is ready for the official grader, not judged here" >&2
    exit 0
fi
"$PYTHON" -m share4v.eval.eval_mmvet --mmvet-path "$DATA/mm-vet.json" --result-file "$DATA/results/$CKPT.json" \
    --scores-file "$SCORES_FILE"
