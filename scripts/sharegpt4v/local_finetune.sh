#!/usr/bin/env bash
# Stage 2 on one node of N GPUs: the hyper-parameters of slurm_finetune_{7b,13b}.sh, the global batch of 128 kept
# by gradient accumulation (computed and printed).
#
#   MODEL_SIZE=7b NUM_GPUS=8 bash scripts/sharegpt4v/local_finetune.sh
#
# Environment: MODEL_SIZE (7b | 13b), NUM_GPUS (default: all), MICRO_BATCH (8), DATA_ROOT (data), STAGE1,
# SAVE_PATH, DEEPSPEED (./scripts/zero3.json), REPORT_TO (none), DRY_RUN.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODEL_SIZE=${MODEL_SIZE:-7b}
DATA_ROOT=${DATA_ROOT:-data}
STAGE1=${STAGE1:-checkpoints/share4v-${MODEL_SIZE}_pretrained_pt-1.2m_ft-vit-l12-mlp-llm-lr-2e-5}
SAVE_PATH=${SAVE_PATH:-checkpoints/share4v-${MODEL_SIZE}}

launch_local 128 "${MICRO_BATCH:-8}" \
    --deepspeed "${DEEPSPEED:-./scripts/zero3.json}" \
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
    --learning_rate 2e-5 \
    --weight_decay 0. \
    --warmup_steps 0.03 \
    --lr_scheduler_type cosine \
    --logging_steps 1 \
    --model_max_length 2048 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --report_to "${REPORT_TO_ARGS[@]}" \
    --run_name "$(basename "$SAVE_PATH")"
