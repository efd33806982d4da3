#!/usr/bin/env bash
# LLaVA-Bench-in-the-Wild: answers sharded over the GPUs, merged, reviewed by a GPT judge against GPT-4's answers,
# summarised as the relative score (ours / GPT-4's, in percent).
#
#   OPENAI_API_KEY=... CUDA_VISIBLE_DEVICES=0 bash scripts/sharegpt4v/eval/llavabench.sh [CKPT_NAME] [CKPT_DIR]
#
# Reads $EVAL_ROOT/llava-bench-in-the-wild/{questions.jsonl, context.jsonl, answers_gpt4.jsonl, images/}; writes
# llava-bench-in-the-wild/answers/CKPT.jsonl (chunks in answers/CKPT/), reviews/CKPT.jsonl and
# scores/CKPT/llavabench.json. The judge: OPENAI_API_KEY, OPENAI_BASE_URL (any OpenAI-compatible endpoint),
# SHARE4V_JUDGE_MODEL; SKIP_JUDGE=1 stops after the answers. Environment: see lib.sh.
set -euo pipefail
# shellcheck source=scripts/sharegpt4v/eval/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval_init llavabench "$@"

DATA=$EVAL_ROOT/llava-bench-in-the-wild
for file in questions.jsonl context.jsonl answers_gpt4.jsonl images; do
    need "$DATA/$file" "download the data set liuhaotian/llava-bench-in-the-wild (Hugging Face) into that folder"
done
if [[ -z ${SKIP_JUDGE:-} && -z ${OPENAI_API_KEY:-} && -z ${OPENAI_BASE_URL:-} ]]; then
    die "the GPT judge needs OPENAI_API_KEY (or OPENAI_BASE_URL of a local endpoint); SKIP_JUDGE=1 only answers"
fi

run_chunks "$DATA/answers/$CKPT" share4v.eval.model_vqa --model-path "$MODEL_PATH" \
    --question-file "$DATA/questions.jsonl" --image-folder "$DATA/images" --temperature 0 \
    --conv-mode "$CONV_MODE" --batch-size "$BATCH_SIZE"
merge_chunks "$DATA/answers/$CKPT" "$DATA/answers/$CKPT.jsonl"
if [[ -n ${SKIP_JUDGE:-} ]]; then
    echo "SKIP_JUDGE is set: answers in $DATA/answers/$CKPT.jsonl, not judged" >&2
    exit 0
fi

mkdir -p "$DATA/reviews"
"$PYTHON" -m share4v.eval.eval_gpt_review_bench -q "$DATA/questions.jsonl" -c "$DATA/context.jsonl" \
    -a "$DATA/answers_gpt4.jsonl" "$DATA/answers/$CKPT.jsonl" -o "$DATA/reviews/$CKPT.jsonl"
"$PYTHON" -m share4v.eval.summarize_gpt_review -f "$DATA/reviews/$CKPT.jsonl" --scores-file "$SCORES_FILE"
