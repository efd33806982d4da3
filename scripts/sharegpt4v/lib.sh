# scripts/sharegpt4v/lib.sh: launchers shared by the training scripts (sourced, not run).
#
#   launch_slurm ARGS...                      torchrun on every node of a SLURM allocation (c10d rendezvous)
#   launch_local GLOBAL_BATCH MICRO ARGS...   torchrun on this node's GPUs, global batch kept by accumulation
#
# DRY_RUN=1 prints the command, one argument per line, instead of running it.
# REPORT_TO: where metrics go (default none; "wandb", "tensorboard" or "wandb tensorboard" when installed).

cd "$(dirname "${BASH_SOURCE[0]}")/../.."  # the repository root: scripts/zero*.json, share4v/train/train_mem.py
export CUDA_DEVICE_MAX_CONNECTIONS=1
read -r -a REPORT_TO_ARGS <<< "${REPORT_TO:-none}"

run() {
    if [[ -n "${DRY_RUN:-}" ]]; then printf '%s\n' "$@"; else "$@"; fi
}

launch_slurm() {
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
    # srun does not pass sbatch's --cpus-per-task on to its tasks (Slurm >= 22.05): give it explicitly
    run srun --kill-on-bad-exit=1 --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-32}" torchrun --nnodes "$nodes" --nproc_per_node "$gpus" \
        --rdzv_id "${SLURM_JOB_ID:-share4v}" --rdzv_backend c10d --rdzv_endpoint "$master:$port" \
        share4v/train/train_mem.py "$@"
}

launch_local() {
    local global=$1 micro=$2
    shift 2
    local gpus=${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
    if (( gpus < 1 )); then
        echo "error: no GPU found on this node; set NUM_GPUS" >&2
        exit 2
    fi
    if (( global % (gpus * micro) != 0 )); then
        echo "error: global batch $global is not a multiple of $gpus GPUs x micro-batch $micro; set MICRO_BATCH" >&2
        exit 2
    fi
    local accumulation=$(( global / (gpus * micro) ))
    echo "global batch $global = $gpus GPUs x micro-batch $micro x gradient accumulation $accumulation" >&2
    run torchrun --standalone --nproc_per_node "$gpus" share4v/train/train_mem.py "$@" \
        --per_device_train_batch_size "$micro" --gradient_accumulation_steps "$accumulation"
}
