#!/usr/bin/env bash
# Stage 1 on one node of N GPUs: the hyper-parameters of slurm_pretrain_{7b,13b}.sh, the global batch of 256 kept
# by gradient accumulation (computed and printed).
#
#   MODEL_SIZE=7b NUM_GPUS=8 bash scripts/sharegpt4v/local_pretrain.sh
#
# Environment: MODEL_SIZE (7b | 13b), NUM_GPUS (default: all), MICRO_BATCH (16), DATA_ROOT (data), LLM,
# VISION_TOWER, PROJECTOR, SAVE_PATH, DEEPSPEED (./scripts/zero3.json), SHARDING (deepspeed | fsdp2;
# see lib.sh), REPORT_TO (none), DRY_RUN.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

stage1_args "${MODEL_SIZE:-7b}"
launch_local 256 "${MICRO_BATCH:-16}" "${ARGS[@]}"
