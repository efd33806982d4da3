#!/usr/bin/env bash
# Stage 1 on one node of N GPUs: the hyper-parameters of slurm_pretrain_{7b,13b}.sh, the global batch of 256 kept
# by gradient accumulation (computed and printed).
#
#   MODEL_SIZE=7b NUM_GPUS=8 bash scripts/sharegpt4v/local_pretrain.sh
#
# Environment: MODEL_SIZE (7b | 13b), NUM_GPUS (default: all), MICRO_BATCH (16), DATA_ROOT (data), LLM,
# VISION_TOWER, PROJECTOR, SAVE_PATH, DEEPSPEED (./scripts/zero3.json), REPORT_TO (none), DRY_RUN.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODEL_SIZE=${MODEL_SIZE:-7b}
DATA_ROOT=${DATA_ROOT:-data}
LLM=${LLM:-lmsys/vicuna-${MODEL_SIZE}-v1.5}
VISION_TOWER=${VISION_TOWER:-openai/clip-vit-large-patch14-336}
PROJECTOR=${PROJECTOR:-pretrained/projector/llava-v1.5-mlp2x-336px-pretrain-vicuna-${MODEL_SIZE}-v1.5/mm_projector.bin}
SAVE_PATH=${SAVE_PATH:-checkpoints/share4v-${MODEL_SIZE}_pretrained_pt-1.2m_ft-vit-l12-mlp-llm-lr-2e-5}

launch_local 256 "${MICRO_BATCH:-16}" \
    --deepspeed "${DEEPSPEED:-./scripts/zero3.json}" \
    --model_name_or_path "$LLM" \
    --version plain \
    --data_path "$DATA_ROOT/sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json" \
    --image_folder "$DATA_ROOT" \
    --vision_tower "$VISION_TOWER" \
    --pretrain_mm_mlp_adapter "$PROJECTOR" \
    --mm_projector_type mlp2x_gelu \
    --tune_entire_model True \
    --tune_vit_from_layer 12 \
    --mm_vision_select_layer -2 \
    --mm_use_im_start_end False \
    --mm_use_im_patch_token False \
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
