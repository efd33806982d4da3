#!/usr/bin/env bash
# ShareGPT4V-7B stage 2: instruction tuning on the 665K mix with the projector and the LLM trainable (the ViT
# from stage 1, frozen). 2 nodes x 8 GPUs, global batch 8 x 16 = 128.
#
#   sbatch --partition "$PARTITION" scripts/sharegpt4v/slurm_finetune_7b.sh
#
# Submit from the repository root. Paths come from the environment (defaults: the original layout under data/ and checkpoints/).
#SBATCH --job-name=share4v-7b-finetune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=32
#SBATCH --output=share4v-7b-finetune-%j.log
set -euo pipefail
# sbatch runs a copy of this file: lib.sh is found from the submit folder (the repository root) when there is one
source "${SLURM_SUBMIT_DIR:-$(dirname "${BASH_SOURCE[0]}")/../..}/scripts/sharegpt4v/lib.sh"

DATA_ROOT=${DATA_ROOT:-data}
STAGE1=${STAGE1:-checkpoints/share4v-7b_pretrained_pt-1.2m_ft-vit-l12-mlp-llm-lr-2e-5}
SAVE_PATH=${SAVE_PATH:-checkpoints/share4v-7b}
MASTER_PORT=${MASTER_PORT:-29501}

launch_slurm \
    --deepspeed ./scripts/zero3.json \
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
    --output_dir "$SAVE_PATH" \
    --num_train_epochs 1 \
    --per_device_train_batch_size 8 \
    --per_device_eval_batch_size 4 \
    --gradient_accumulation_steps 1 \
    --evaluation_strategy "no" \
    --save_strategy "steps" \
    --save_steps 50000 \
    --save_total_limit 1 \
    --learning_rate 2e-5 \
    --weight_decay 0. \
    --warmup_ratio 0.03 \
    --lr_scheduler_type "cosine" \
    --logging_steps 1 \
    --tf32 True \
    --model_max_length 2048 \
    --gradient_checkpointing True \
    --dataloader_num_workers 4 \
    --lazy_preprocess True \
    --report_to "${REPORT_TO_ARGS[@]}" \
    --run_name "$(basename "$SAVE_PATH")"
