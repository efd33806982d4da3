#!/usr/bin/env bash
# The paper's claim at miniature scale: the synthetic world, a pre-trained tiny ViT and LLM, projector alignment,
# stage 1 on detailed captions / brief captions / none, stage 2, and the held-out benchmark, per seed.
#   bash scripts/miniature/reproduce.sh [OUT_DIR] [SEEDS...]      (default: runs/miniature, seeds 0 1 2)
# Writes OUT_DIR/score_card.{json,md,png}; a finished stage is not run again (delete its folder to redo it).
# Uses the GPU when there is one (about 10 minutes per seed on one H200; one arm takes 25-30 minutes on two CPU
# cores); docs/Miniature.md has the numbers and how to run one process per arm.
set -euo pipefail
OUT_DIR=${1:-runs/miniature}
shift || true
SEEDS=("${@:-0 1 2}")
cd "$(dirname "$0")/../.."
# shellcheck disable=SC2068
python -m share4v.data.miniature --out "$OUT_DIR" --seeds ${SEEDS[@]}
