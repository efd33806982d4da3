#!/usr/bin/env bash
# POPE (COCO; adversarial, popular, random): answers sharded over the GPUs, merged, scored locally (accuracy,
# precision, recall, F1, yes-ratio per category). Not in the paper's table; LLaVA-1.5 users expect it.
#
#   CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 bash scripts/sharegpt4v/eval/pope.sh [CKPT_NAME] [CKPT_DIR]
#
# Reads $EVAL_ROOT/pope/{llava_pope_test.jsonl, coco/coco_pope_<category>.json, val2014/}; writes
# pope/answers/CKPT.jsonl (chunks in pope/answers/CKPT/) and scores/CKPT/pope.json. Environment: see lib.sh.
set -euo pipefail
# shellcheck source=scripts/sharegpt4v/eval/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
eval_init pope "$@"

DATA=$EVAL_ROOT/pope
QUESTIONS=$DATA/llava_pope_test.jsonl
need "$QUESTIONS" "the question file is in LLaVA-1.5's evaluation playground (playground/data/eval/pope)"
need "$DATA/coco" "download POPE's annotations (output/coco/coco_pope_*.json of the POPE repository) into pope/coco/"
need "$DATA/val2014" "download COCO val2014 images (val2014.zip) and extract them there"

run_chunks "$DATA/answers/$CKPT" share4v.eval.model_vqa_loader --model-path "$MODEL_PATH" \
    --question-file "$QUESTIONS" --image-folder "$DATA/val2014" --temperature 0 --conv-mode "$CONV_MODE" \
    --batch-size "$BATCH_SIZE"
merge_chunks "$DATA/answers/$CKPT" "$DATA/answers/$CKPT.jsonl"

"$PYTHON" -m share4v.eval.eval_pope --annotation-dir "$DATA/coco" --question-file "$QUESTIONS" \
    --result-file "$DATA/answers/$CKPT.jsonl" --scores-file "$SCORES_FILE"
