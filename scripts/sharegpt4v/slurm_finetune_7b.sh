#!/usr/bin/env bash
# ShareGPT4V-7B stage 2: instruction tuning on the 665K mix with the projector and the LLM trainable (the ViT
# from stage 1, frozen). 2 nodes x 8 GPUs, global batch 128 = 16 GPUs x micro-batch 8 (other node or GPU counts
# keep 128 by gradient accumulation).
#
#   sbatch --partition "$PARTITION" scripts/sharegpt4v/slurm_finetune_7b.sh
#
# Submit from the repository root. Paths come from the environment (DATA_ROOT, STAGE1, SAVE_PATH; defaults: the
# original layout under data/ and checkpoints/); GPUS_PER_NODE (8), MICRO_BATCH (8), REPORT_TO, MASTER_PORT,
# SHARDING (deepspeed | fsdp2, see lib.sh), DRY_RUN=1.
#SBATCH --job-name=share4v-7b-finetune
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=32
#SBATCH --output=share4v-7b-finetune-%j.log
set -euo pipefail
# sbatch runs a copy of this file: lib.sh is found from the submit folder (the repository root) when there is one
source "${SLURM_SUBMIT_DIR:-$(dirname "${BASH_SOURCE[0]}")/../..}/scripts/sharegpt4v/lib.sh"

stage2_args 7b
MASTER_PORT=${MASTER_PORT:-29501} launch_slurm 128 "${MICRO_BATCH:-8}" "${ARGS[@]}"
