#!/usr/bin/env bash
# Q-Bench LLVisionQA dev: answers sharded over the GPUs, merged, scored locally (the test split's labels are not
# public). The original loaded this model in 8-bit: EVAL_ARGS=--load-8bit does the same (bitsandbytes, CUDA).
#
#   CUDA_VISIBLE_DEVICES=0 bash scripts/sharegpt4v/eval/qbench.sh [CKPT_NAME] [CKPT_DIR]
#
# Reads $EVAL_ROOT/qbench/{llvisionqa_dev.json, images_llvisionqa/}; writes
# qbench/llvisionqa_dev_CKPT_answers.jsonl (chunks in qbench/answers/CKPT/) and scores/CKPT/qbench.json.
# Environment: see lib.sh (template default share4v_v1, as the original's Q-Bench script).
set -euo pipefail
CONV_MODE=${CONV_MODE:-share4v_v1}
# shellcheck source=scripts/sharegpt4v/eval/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval_init qbench "$@"

DATA=$EVAL_ROOT/qbench
SPLIT=dev
need "$DATA/llvisionqa_$SPLIT.json" "download llvisionqa_$SPLIT.json (LLVisionQA-QBench on the Hugging Face hub) there"
need "$DATA/images_llvisionqa" "download images_llvisionqa.tar (LLVisionQA-QBench) and extract the images there"

ANSWERS=$DATA/llvisionqa_${SPLIT}_${CKPT}_answers.jsonl
run_chunks "$DATA/answers/$CKPT" share4v.eval.model_vqa_qbench --model-path "$MODEL_PATH" \
    --questions-file "$DATA/llvisionqa_$SPLIT.json" --image-folder "$DATA/images_llvisionqa" --lang en \
    --temperature 0 --conv-mode "$CONV_MODE" --batch-size "$BATCH_SIZE"
merge_chunks "$DATA/answers/$CKPT" "$ANSWERS"

"$PYTHON" -m share4v.eval.eval_qbench --answers-file "$ANSWERS" --questions-file "$DATA/llvisionqa_$SPLIT.json" \
    --scores-file "$SCORES_FILE"
