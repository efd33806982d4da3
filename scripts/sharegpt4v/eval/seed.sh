#!/usr/bin/env bash
# SEED-Bench (the paper reports the image questions): answers sharded over the GPUs, merged, scored locally.
#
#   CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 bash scripts/sharegpt4v/eval/seed.sh [CKPT_NAME] [CKPT_DIR]
#
# Reads $EVAL_ROOT/seed_bench/{share4v-seed-bench-image.jsonl, SEED-Bench.json, SEED-Bench-image/}; writes
# seed_bench/answers/CKPT/merge.jsonl, seed_bench/answers_upload/CKPT.jsonl and scores/CKPT/seed.json.
# Environment: see lib.sh.
set -euo pipefail
# shellcheck source=scripts/sharegpt4v/eval/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval_init seed "$@"

DATA=$EVAL_ROOT/seed_bench
QUESTIONS=$DATA/share4v-seed-bench-image.jsonl
need "$QUESTIONS" "the question file is in the evaluation playground.zip (extract it to playground/)"
need "$DATA/SEED-Bench.json" "download SEED-Bench.json (SEED-Bench's annotations) there"
need "$DATA/SEED-Bench-image" "download SEED-Bench's images (SEED-Bench-image.zip) and extract them there"

ANSWERS=$DATA/answers/$CKPT
run_chunks "$ANSWERS" share4v.eval.model_vqa_loader --model-path "$MODEL_PATH" --question-file "$QUESTIONS" \
    --image-folder "$DATA" --temperature 0 --conv-mode "$CONV_MODE" --batch-size "$BATCH_SIZE"
merge_chunks "$ANSWERS"

"$PYTHON" scripts/convert_seed_for_submission.py --annotation-file "$DATA/SEED-Bench.json" \
    --result-file "$ANSWERS/merge.jsonl" --result-upload-file "$DATA/answers_upload/$CKPT.jsonl" \
    --scores-file "$SCORES_FILE"
