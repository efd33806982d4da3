#!/usr/bin/env bash
# MMBench dev: answers sharded over the GPUs, merged, converted to the OpenCompass upload (xlsx) and
# scored locally (circular: a question counts when each of its rotated copies in the TSV is answered right).
#
#   CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 bash scripts/sharegpt4v/eval/mmbench_en.sh [CKPT_NAME] [CKPT_DIR]
#
# Reads $EVAL_ROOT/mmbench/mmbench_dev_20230712.tsv; writes mmbench/answers/mmbench_dev_20230712/CKPT/merge.jsonl,
# mmbench/answers_upload/mmbench_dev_20230712/CKPT/merge.xlsx and scores/CKPT/mmbench_en.json.
# Environment: see lib.sh.
set -euo pipefail
# shellcheck source=scripts/sharegpt4v/eval/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval_init mmbench_en "$@"

DATA=$EVAL_ROOT/mmbench
SPLIT=mmbench_dev_20230712
need "$DATA/$SPLIT.tsv" "download $SPLIT.tsv from OpenMMLab's MMBench downloads there"

ANSWERS=$DATA/answers/$SPLIT/$CKPT
run_chunks "$ANSWERS" share4v.eval.model_vqa_mmbench --model-path "$MODEL_PATH" --question-file "$DATA/$SPLIT.tsv" \
    --lang en --single-pred-prompt --temperature 0 --conv-mode "$CONV_MODE" --batch-size "$BATCH_SIZE"
merge_chunks "$ANSWERS"

"$PYTHON" scripts/convert_mmbench_for_submission.py --annotation-file "$DATA/$SPLIT.tsv" --result-dir "$ANSWERS" \
    --upload-dir "$DATA/answers_upload/$SPLIT/$CKPT" --experiment merge
"$PYTHON" -m share4v.eval.eval_mmbench --annotation-file "$DATA/$SPLIT.tsv" --result-file "$ANSWERS/merge.jsonl" \
    --lang en --scores-file "$SCORES_FILE"
echo "for the official number, submit $DATA/answers_upload/$SPLIT/$CKPT/merge.xlsx to the OpenCompass server" >&2
