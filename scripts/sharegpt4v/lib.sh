# scripts/sharegpt4v/lib.sh: the recipe's flags and the launchers, shared by the training scripts (sourced).
#
#   stage1_args SIZE / stage2_args SIZE       fill ARGS with a stage's flags (SIZE 7b or 13b; paths from the
#                                             environment: DATA_ROOT, LLM, VISION_TOWER, PROJECTOR, STAGE1,
#                                             SAVE_PATH, DEEPSPEED, SHARDING)
#   launch_slurm GLOBAL_BATCH MICRO ARGS...   torchrun on every node of a SLURM allocation (c10d rendezvous)
#   launch_local GLOBAL_BATCH MICRO ARGS...   torchrun on this node's GPUs
#
# Both keep the global batch whatever the GPU count: the gradient accumulation is GLOBAL_BATCH / (GPUs x MICRO),
# printed; a global batch the GPUs cannot divide is an error.
#
# SHARDING: deepspeed (the default, as the original: DEEPSPEED names the config, ./scripts/zero3.json) or fsdp2
# (PyTorch's FSDP2, which shards as ZeRO-3 does; at the recipe's micro-batch and checkpointing on 2 H200s about 2x
# DeepSpeed's per-GPU rate, measured on two machines: docs/Performance.md; full fine-tuning only, not LoRA).
# DRY_RUN=1 prints the command, one argument per line, instead of running it.
# REPORT_TO: where metrics go (default none; "wandb", "tensorboard" or "wandb tensorboard" when installed).

cd "$(dirname "${BASH_SOURCE[0]}")/../.."  # the repository root: scripts/zero*.json, share4v/train/train_mem.py
export CUDA_DEVICE_MAX_CONNECTIONS=1
read -r -a REPORT_TO_ARGS <<< "${REPORT_TO:-none}"

# SHARDING's flags: DeepSpeed with DEEPSPEED's config, or FSDP2.
sharding_args() {
    case "${SHARDING:-deepspeed}" in
        deepspeed) ARGS+=(--deepspeed "${DEEPSPEED:-./scripts/zero3.json}") ;;
        fsdp2)
            if [[ -n "${DEEPSPEED:-}" ]]; then
                echo "error: DEEPSPEED=$DEEPSPEED with SHARDING=fsdp2: choose one (unset DEEPSPEED for FSDP2)" >&2
                exit 2
            fi
            ARGS+=(--fsdp --fsdp_config ./scripts/fsdp2.json) ;;
        *)
            echo "error: SHARDING=$SHARDING: use deepspeed (the default) or fsdp2" >&2
            exit 2 ;;
    esac
}

# Flags both stages share (the original scripts' values; 4.31 flag names are mapped by the trainer).
common_args() {
    sharding_args
    ARGS+=(
        --mm_projector_type mlp2x_gelu
        --mm_vision_select_layer -2
        --mm_use_im_start_end False
        --mm_use_im_patch_token False
        --bf16 True
        --output_dir "$SAVE_PATH"
        --num_train_epochs 1
        --per_device_eval_batch_size 4
        --evaluation_strategy "no"
        --save_strategy "steps"
        --save_steps 50000
        --save_total_limit 1
        --learning_rate 2e-5
        --weight_decay 0.
        --warmup_ratio 0.03
        --lr_scheduler_type "cosine"
        --logging_steps 1
        --tf32 True
        --model_max_length 2048
        --gradient_checkpointing True
        --dataloader_num_workers 4
        --lazy_preprocess True
        --report_to "${REPORT_TO_ARGS[@]}"
        --run_name "$(basename "$SAVE_PATH")"
    )
}

# Stage 1: ShareGPT4V-PT captions; ViT layers 12-22, projector and LLM trainable; starts from Vicuna, CLIP and
# LLaVA-1.5's pre-trained projector.
stage1_args() {
    local size=$1 data=${DATA_ROOT:-data}
    SAVE_PATH=${SAVE_PATH:-checkpoints/share4v-${size}_pretrained_pt-1.2m_ft-vit-l12-mlp-llm-lr-2e-5}
    ARGS=(
        --model_name_or_path "${LLM:-lmsys/vicuna-${size}-v1.5}"
        --version plain
        --data_path "$data/sharegpt4v/share-captioner_coco_lcs_sam_1246k_1107.json"
        --image_folder "$data"
        --vision_tower "${VISION_TOWER:-openai/clip-vit-large-patch14-336}"
        --pretrain_mm_mlp_adapter
        "${PROJECTOR:-pretrained/projector/llava-v1.5-mlp2x-336px-pretrain-vicuna-${size}-v1.5/mm_projector.bin}"
        --tune_entire_model True
        --tune_vit_from_layer 12
    )
    common_args
}

# Stage 2: the 665K instruction mix; projector and LLM trainable, stage 1's ViT frozen.
stage2_args() {
    local size=$1 data=${DATA_ROOT:-data}
    STAGE1=${STAGE1:-checkpoints/share4v-${size}_pretrained_pt-1.2m_ft-vit-l12-mlp-llm-lr-2e-5}
    SAVE_PATH=${SAVE_PATH:-checkpoints/share4v-${size}}
    ARGS=(
        --model_name_or_path "$STAGE1"
        --version v1
        --data_path "$data/sharegpt4v/sharegpt4v_mix665k_cap23k_coco-ap9k_lcs3k_sam9k_div2k.json"
        --image_folder "$data"
        --vision_tower "$STAGE1/vision_tower"
        --image_aspect_ratio pad
        --group_by_modality_length True
    )
    common_args
}

run() {
    if [[ -n "${DRY_RUN:-}" ]]; then printf '%s\n' "$@"; else "$@"; fi
}

# batch_args GLOBAL MICRO GPUS: BATCH_ARGS = the micro-batch and the accumulation that make GLOBAL on GPUS GPUs.
batch_args() {
    local global=$1 micro=$2 gpus=$3
    if (( global % (gpus * micro) != 0 )); then
        echo "error: global batch $global is not a multiple of $gpus GPUs x micro-batch $micro; set MICRO_BATCH" >&2
        exit 2
    fi
    local accumulation=$(( global / (gpus * micro) ))
    echo "global batch $global = $gpus GPUs x micro-batch $micro x gradient accumulation $accumulation" >&2
    BATCH_ARGS=(--per_device_train_batch_size "$micro" --gradient_accumulation_steps "$accumulation")
}

launch_slurm() {
    local global=$1 micro=$2
    shift 2
    local nodes=${SLURM_NNODES:-2} gpus=${GPUS_PER_NODE:-8} port=${MASTER_PORT:-29500} master=${MASTER_ADDR:-}
    if [[ -z "$master" && -n "${SLURM_JOB_NODELIST:-}" ]]; then
        master=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
    elif [[ -z "$master" && -n "${DRY_RUN:-}" ]]; then
        master=localhost
    elif [[ -z "$master" ]]; then
        echo "error: not inside a SLURM allocation: submit with sbatch, or use scripts/sharegpt4v/local_*.sh" >&2
        exit 2
    fi
    echo "launching on $nodes nodes x $gpus GPUs, rendezvous at $master:$port" >&2
    batch_args "$global" "$micro" $(( nodes * gpus ))
    # srun does not pass sbatch's --cpus-per-task on to its tasks (Slurm >= 22.05): give it explicitly
    run srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-32}" torchrun --nnodes "$nodes" --nproc_per_node "$gpus" \
        --rdzv_id "${SLURM_JOB_ID:-share4v}" --rdzv_backend c10d --rdzv_endpoint "$master:$port" \
        share4v/train/train_mem.py "$@" "${BATCH_ARGS[@]}"
}

launch_local() {
    local global=$1 micro=$2
    shift 2
    local gpus=${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
    if (( gpus < 1 )); then
        echo "error: no GPU found on this node; set NUM_GPUS" >&2
        exit 2
    fi
    batch_args "$global" "$micro" "$gpus"
    run torchrun --standalone --nproc_per_node "$gpus" share4v/train/train_mem.py "$@" "${BATCH_ARGS[@]}"
}
