#!/usr/bin/env bash
# Stage 2 with LoRA on one node of N GPUs: adapters (r 128, alpha 256) on the LLM's linear layers plus the projector
# (LLaVA-1.5's LoRA recipe: lr 2e-4, projector lr 2e-5), global batch 128. Merge the result into a full checkpoint:
#   python scripts/merge_lora_weights.py --model-path "$SAVE_PATH" --model-base "$STAGE1" --save-model-path OUT
#
#   MODEL_SIZE=7b NUM_GPUS=8 bash scripts/sharegpt4v/local_finetune_lora.sh
#
# Environment: MODEL_SIZE (7b | 13b), NUM_GPUS (default: all), MICRO_BATCH (16), DATA_ROOT (data), STAGE1,
# SAVE_PATH, DEEPSPEED (./scripts/zero3.json), REPORT_TO (none), DRY_RUN. QLoRA: add `--bits 4` (bitsandbytes) and
# use DEEPSPEED=./scripts/zero2.json.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ "${SHARDING:-deepspeed}" != deepspeed ]]; then
    echo "error: SHARDING=$SHARDING: LoRA runs under DeepSpeed here (LoRA under FSDP2 is not tested)" >&2
    exit 2
fi
SAVE_PATH=${SAVE_PATH:-checkpoints/share4v-${MODEL_SIZE:-7b}-lora}
stage2_args "${MODEL_SIZE:-7b}"
launch_local 128 "${MICRO_BATCH:-16}" "${ARGS[@]}" \
    --lora_enable True --lora_r 128 --lora_alpha 256 --mm_projector_lr 2e-5 --learning_rate 2e-4
