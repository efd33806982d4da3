#!/usr/bin/env bash
# ShareGPT4V-13B stage 1: pre-training on ShareGPT4V-PT (1.2M detailed captions) with the later half of the
# ViT (layers 12-22; 23 feeds nothing), the projector and the LLM trainable. 2 nodes x 8 GPUs, global batch
# 256 = 16 GPUs x micro-batch 16 (other node or GPU counts keep 256 by gradient accumulation).
#
#   sbatch --partition "$PARTITION" scripts/sharegpt4v/slurm_pretrain_13b.sh
#
# Submit from the repository root. Paths come from the environment (DATA_ROOT, LLM, VISION_TOWER, PROJECTOR,
# SAVE_PATH; defaults: the original layout under data/ and checkpoints/); GPUS_PER_NODE (8), MICRO_BATCH (16),
# REPORT_TO, MASTER_PORT, SHARDING (deepspeed | fsdp2, see lib.sh), DRY_RUN=1.
#SBATCH --job-name=share4v-13b-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=32
#SBATCH --output=share4v-13b-pretrain-%j.log
set -euo pipefail
# sbatch runs a copy of this file: lib.sh is found from the submit folder (the repository root) when there is one
source "${SLURM_SUBMIT_DIR:-$(dirname "${BASH_SOURCE[0]}")/../..}/scripts/sharegpt4v/lib.sh"

stage1_args 13b
MASTER_PORT=${MASTER_PORT:-29502} launch_slurm 256 "${MICRO_BATCH:-16}" "${ARGS[@]}"
