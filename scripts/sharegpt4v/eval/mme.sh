#!/usr/bin/env bash
# MME: answers sharded over the GPUs, merged, converted to MME's result folder, scored locally (perception and
# cognition, as MME's eval tool computes them).
#
#   CUDA_VISIBLE_DEVICES=0 bash scripts/sharegpt4v/eval/mme.sh [CKPT_NAME] [CKPT_DIR]
#
# Reads $EVAL_ROOT/MME/{share4v_mme.jsonl, MME_Benchmark_release/ (or MME_Benchmark_release_version/)}; writes
# MME/answers/CKPT.jsonl (chunks in MME/answers/CKPT/), MME/eval_tool/answers/CKPT/<category>.txt and
# scores/CKPT/mme.json. Environment: see lib.sh.
set -euo pipefail
# shellcheck source=scripts/sharegpt4v/eval/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval_init mme "$@"

DATA=$EVAL_ROOT/MME
QUESTIONS=$DATA/share4v_mme.jsonl
BENCH=$(first_existing "$DATA/MME_Benchmark_release" "$DATA/MME_Benchmark_release_version")
need "$QUESTIONS" "the question file is in the evaluation playground.zip (extract it to playground/)"
need "$BENCH" "request MME from its authors and extract the benchmark (images and answers) there"

run_chunks "$DATA/answers/$CKPT" share4v.eval.model_vqa_loader --model-path "$MODEL_PATH" \
    --question-file "$QUESTIONS" --image-folder "$BENCH" --temperature 0 --conv-mode "$CONV_MODE" \
    --batch-size "$BATCH_SIZE"
merge_chunks "$DATA/answers/$CKPT" "$DATA/answers/$CKPT.jsonl"

"$PYTHON" -m share4v.eval.convert_answer_to_mme --experiment "$CKPT" --answers-dir "$DATA/answers" \
    --data-path "$BENCH" --results-dir "$DATA/eval_tool/answers"
"$PYTHON" -m share4v.eval.eval_mme --results_dir "$DATA/eval_tool/answers/$CKPT" --scores-file "$SCORES_FILE"
