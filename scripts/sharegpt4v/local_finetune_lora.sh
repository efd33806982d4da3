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

MODEL_SIZE=${MODEL_SIZE:-7b}
DATA_ROOT=${DATA_ROOT:-data}
STAGE1=${STAGE1:-checkpoints/share4v-${MODEL_SIZE}_pretrained_pt-1.2m_ft-vit-l12-mlp-llm-lr-2e-5}
SAVE_PATH=${SAVE_PATH:-checkpoints/share4v-${MODEL_SIZE}-lora}

launch_local 128 "${MICRO_BATCH:-16}" \
    --deepspeed "${DEEPSPEED:-./scripts/zero3.json}" \
    --lora_enable True \
    --lora_r 128 \
    --lora_alpha 256 \
    --mm_projector_lr 2e-5 \
    --model_name_or_path "$STAGE1" \
    --version v1 \
    --data_path "$DATA_ROOT/sharegpt4v/sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json" \
    --image_folder "$DATA_ROOT" \
    --vision_tower "$STAGE1/vision_tower" \
    --mm_projector_type mlp2x_gelu \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
    --image_aspect_ratio pad \
    --group_by_modality_length True \
    --bf16 True \
    --tf32 True \
    --output_dir "$SAVE_PATH" \
    --num_train_epochs 1 \
    --eval_strategy no \
    --save_strategy steps \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-4 \
    --weight_decay 0. \
    --warmup_steps 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps 1 \
    --model_max_length 2048 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --report_to "${REPORT_TO_ARGS[@]}" \
    --run_name "$(basename "$SAVE_PATH")"
