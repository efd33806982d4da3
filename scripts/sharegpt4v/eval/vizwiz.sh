#!/usr/bin/env bash
# VizWiz test: answers sharded over the GPUs, merged, converted to the EvalAI upload (scored by the server only).
#
#   CUDA_VISIBLE_DEVICES=0 bash scripts/sharegpt4v/eval/vizwiz.sh [CKPT_NAME] [CKPT_DIR]
#
# Reads $EVAL_ROOT/vizwiz/{share4v_test.jsonl, test/}; writes vizwiz/answers/CKPT.jsonl (chunks in
# vizwiz/answers/CKPT/) and vizwiz/answers_upload/CKPT.json. Environment: see lib.sh.
set -euo pipefail
# shellcheck source=scripts/sharegpt4v/eval/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval_init vizwiz "$@"

DATA=$EVAL_ROOT/vizwiz
QUESTIONS=$DATA/share4v_test.jsonl
need "$QUESTIONS" "the question file is in the evaluation playground.zip (extract it to playground/)"
need "$DATA/test" "download VizWiz's test images (test.zip) and extract them there as test/"

run_chunks "$DATA/answers/$CKPT" share4v.eval.model_vqa_loader --model-path "$MODEL_PATH" \
    --question-file "$QUESTIONS" --image-folder "$DATA/test" --temperature 0 --conv-mode "$CONV_MODE" \
    --batch-size "$BATCH_SIZE"
merge_chunks "$DATA/answers/$CKPT" "$DATA/answers/$CKPT.jsonl"

"$PYTHON" scripts/convert_vizwiz_for_submission.py --annotation-file "$QUESTIONS" \
    --result-file "$DATA/answers/$CKPT.jsonl" --result-upload-file "$DATA/answers_upload/$CKPT.json"
echo "submit $DATA/answers_upload/$CKPT.json to the VizWiz VQA challenge on EvalAI (test-standard)" >&2
