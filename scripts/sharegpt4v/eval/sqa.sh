#!/usr/bin/env bash
# ScienceQA test (the paper reports IMG-accuracy): answers sharded over the GPUs, merged, scored locally.
#
#   CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 bash scripts/sharegpt4v/eval/sqa.sh [CKPT_NAME] [CKPT_DIR]
#
# Reads $EVAL_ROOT/scienceqa/{share4v_test_CQM-A.json, images/test/, problems.json, pid_splits.json}; writes
# scienceqa/answers/CKPT/{merge.jsonl, output.jsonl, result.json} and scores/CKPT/sqa.json. The original's default
# checkpoint name had a typo (shar4v-7b); here it is share4v-7b like every other script. Environment: see lib.sh.
set -euo pipefail
# shellcheck source=scripts/sharegpt4v/eval/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval_init sqa "$@"

DATA=$EVAL_ROOT/scienceqa
QUESTIONS=$DATA/share4v_test_CQM-A.json
need "$QUESTIONS" "the question file is in the evaluation playground.zip (extract it to playground/)"
need "$DATA/problems.json" "download problems.json from data/scienceqa of the ScienceQA repository"
need "$DATA/pid_splits.json" "download pid_splits.json from data/scienceqa of the ScienceQA repository"
need "$DATA/images/test" "download ScienceQA's test images (data/scienceqa/images) into scienceqa/images/test/"

ANSWERS=$DATA/answers/$CKPT
run_chunks "$ANSWERS" share4v.eval.model_vqa_science --model-path "$MODEL_PATH" --question-file "$QUESTIONS" \
    --image-folder "$DATA/images/test" --single-pred-prompt --temperature 0 --conv-mode "$CONV_MODE" \
    --batch-size "$BATCH_SIZE"
merge_chunks "$ANSWERS"

"$PYTHON" -m share4v.eval.eval_science_qa --base-dir "$DATA" --result-file "$ANSWERS/merge.jsonl" \
    --output-file "$ANSWERS/output.jsonl" --output-result "$ANSWERS/result.json" --scores-file "$SCORES_FILE"
