#!/usr/bin/env bash
# GQA testdev-balanced: answers sharded over the GPUs, merged, converted to GQA predictions, scored locally.
#
#   CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 bash scripts/sharegpt4v/eval/gqa.sh [CKPT_NAME] [CKPT_DIR]
#
# Reads $EVAL_ROOT/gqa/{share4v_gqa_testdev_balanced.jsonl, images/, data/testdev_balanced_questions.json}; writes
# gqa/answers/SPLIT/CKPT/merge.jsonl, gqa/data/testdev_balanced_predictions.json (what GQA's own eval.py reads)
# and scores/CKPT/gqa.json. Environment: see lib.sh.
set -euo pipefail
# shellcheck source=scripts/sharegpt4v/eval/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval_init gqa "$@"

DATA=$EVAL_ROOT/gqa
SPLIT=share4v_gqa_testdev_balanced
GQADIR=$DATA/data
need "$DATA/$SPLIT.jsonl" "the question file is in the evaluation playground.zip (extract it to playground/)"
need "$DATA/images" "download GQA's images (images.zip) and extract them there"
need "$GQADIR/testdev_balanced_questions.json" "download GQA's questions1.2.zip and extract it into gqa/data/"

ANSWERS=$DATA/answers/$SPLIT/$CKPT
run_chunks "$ANSWERS" share4v.eval.model_vqa_loader --model-path "$MODEL_PATH" --question-file "$DATA/$SPLIT.jsonl" \
    --image-folder "$DATA/images" --temperature 0 --conv-mode "$CONV_MODE" --batch-size "$BATCH_SIZE"
merge_chunks "$ANSWERS"

"$PYTHON" scripts/convert_gqa_for_eval.py --src "$ANSWERS/merge.jsonl" --dst "$GQADIR/testdev_balanced_predictions.json"
"$PYTHON" -m share4v.eval.eval_gqa --questions "$GQADIR/testdev_balanced_questions.json" \
    --predictions "$GQADIR/testdev_balanced_predictions.json" --scores-file "$SCORES_FILE"
