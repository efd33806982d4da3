#!/usr/bin/env bash
# VQAv2 test-dev: answers sharded over the GPUs, merged, converted to the EvalAI upload (scored by the server only).
#
#   CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 bash scripts/sharegpt4v/eval/vqav2.sh [CKPT_NAME] [CKPT_DIR]
#
# Reads $EVAL_ROOT/vqav2/{share4v_vqav2_mscoco_test-dev2015.jsonl, llava_vqav2_mscoco_test2015.jsonl, test2015/};
# writes vqav2/answers/SPLIT/CKPT/merge.jsonl and vqav2/answers_upload/SPLIT/CKPT.json. Environment: see lib.sh.
set -euo pipefail
# shellcheck source=scripts/sharegpt4v/eval/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval_init vqav2 "$@"

DATA=$EVAL_ROOT/vqav2
SPLIT=share4v_vqav2_mscoco_test-dev2015
need "$DATA/$SPLIT.jsonl" "the question file is in the evaluation playground.zip (extract it to playground/)"
need "$DATA/llava_vqav2_mscoco_test2015.jsonl" "the full test2015 question list is in the evaluation playground.zip"
need "$DATA/test2015" "download COCO test2015 images (test2015.zip) and extract them there"

ANSWERS=$DATA/answers/$SPLIT/$CKPT
run_chunks "$ANSWERS" share4v.eval.model_vqa_loader --model-path "$MODEL_PATH" --question-file "$DATA/$SPLIT.jsonl" \
    --image-folder "$DATA/test2015" --temperature 0 --conv-mode "$CONV_MODE" --batch-size "$BATCH_SIZE"
merge_chunks "$ANSWERS"

"$PYTHON" scripts/convert_vqav2_for_submission.py --split "$SPLIT" --ckpt "$CKPT" --dir "$DATA"
echo "submit $DATA/answers_upload/$SPLIT/$CKPT.json to the VQAv2 challenge on EvalAI (test-dev phase)" >&2
