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

run_mmbench en mmbench_dev_20230712
