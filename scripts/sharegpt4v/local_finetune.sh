#!/usr/bin/env bash
# Stage 2 on one node of N GPUs: the hyper-parameters of slurm_finetune_{7b,13b}.sh, the global batch of 128 kept
# by gradient accumulation (computed and printed).
#
#   MODEL_SIZE=7b NUM_GPUS=8 bash scripts/sharegpt4v/local_finetune.sh
#
# Environment: MODEL_SIZE (7b | 13b), NUM_GPUS (default: all), MICRO_BATCH (8), DATA_ROOT (data), STAGE1,
# SAVE_PATH, DEEPSPEED (./scripts/zero3.json), SHARDING (deepspeed | fsdp2;
# see lib.sh), REPORT_TO (none), DRY_RUN.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stage2_args "${MODEL_SIZE:-7b}"
launch_local 128 "${MICRO_BATCH:-8}" "${ARGS[@]}"
