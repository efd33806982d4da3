#!/usr/bin/env bash
# TextVQA val: answers sharded over the GPUs, merged, scored locally (VQA soft accuracy).
#
#   CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 bash scripts/sharegpt4v/eval/textvqa.sh [CKPT_NAME] [CKPT_DIR]
#
# Reads $EVAL_ROOT/textvqa/{share4v_textvqa_val_v051_ocr.jsonl, TextVQA_0.5.1_val.json, train_images/}; writes
# textvqa/answers/CKPT/merge.jsonl and scores/CKPT/textvqa.json. Environment: see lib.sh.
set -euo pipefail
# shellcheck source=scripts/sharegpt4v/eval/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval_init textvqa "$@"

DATA=$EVAL_ROOT/textvqa
QUESTIONS=$DATA/share4v_textvqa_val_v051_ocr.jsonl
need "$QUESTIONS" "the question file is in the evaluation playground.zip (extract it to playground/)"
need "$DATA/TextVQA_0.5.1_val.json" "download TextVQA_0.5.1_val.json (TextVQA 0.5.1 annotations) there"
need "$DATA/train_images" "download TextVQA's train_val_images.zip and extract it there as train_images/"

ANSWERS=$DATA/answers/$CKPT
run_chunks "$ANSWERS" share4v.eval.model_vqa_loader --model-path "$MODEL_PATH" --question-file "$QUESTIONS" \
    --image-folder "$DATA/train_images" --temperature 0 --conv-mode "$CONV_MODE" --batch-size "$BATCH_SIZE"
merge_chunks "$ANSWERS"

"$PYTHON" -m share4v.eval.eval_textvqa --annotation-file "$DATA/TextVQA_0.5.1_val.json" \
    --result-file "$ANSWERS/merge.jsonl" --scores-file "$SCORES_FILE"
