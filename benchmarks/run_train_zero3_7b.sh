#!/usr/bin/env bash
# The ZeRO-3 7B training-step measurement of docs/Training.md, as run on two H100s:
#   bash benchmarks/run_train_zero3_7b.sh OUT_DIR [NUM_GPUS]
# Writes OUT_DIR/train_zero3_7b.json and the logs. DeepSpeed must be importable (on the lent GPU machine: carried
# wheels, see docs/Training.md). NVLink multicast stays off (NCCL_NVLS_ENABLE=0).
set -uo pipefail
OUT_DIR=${1:?usage: run_train_zero3_7b.sh OUT_DIR [NUM_GPUS]}
GPUS=${2:-2}
WORLD=${WORLD:-/tmp/share4v-7b-world}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."

echo "== smoke: a tiny world, ZeRO-3 over $GPUS GPUs"
python3 benchmarks/train_zero3_7b.py make-world /tmp/share4v-tiny-world --tiny --rows 64 > "$OUT_DIR/smoke.log" 2>&1 &&
timeout 240 torchrun --nproc_per_node "$GPUS" benchmarks/train_zero3_7b.py run /tmp/share4v-tiny-world \
    --out "$OUT_DIR/smoke.json" --micro-batch 2 --warmup 1 --steps 3 >> "$OUT_DIR/smoke.log" 2>&1
echo "smoke exit $?"; tail -n 3 "$OUT_DIR/smoke.log"

echo "== the 7B world"
[ -f "$WORLD/data.json" ] || { time python3 benchmarks/train_zero3_7b.py make-world "$WORLD"; } > "$OUT_DIR/world.log" 2>&1
echo "world exit $?"; tail -n 3 "$OUT_DIR/world.log"; du -sh "$WORLD"

echo "== ZeRO-3, bf16, gradient checkpointing, micro-batch ${MICRO_BATCH:-4}, $GPUS GPUs"
torchrun --nproc_per_node "$GPUS" benchmarks/train_zero3_7b.py run "$WORLD" --out "$OUT_DIR/train_zero3_7b.json" \
    --micro-batch "${MICRO_BATCH:-4}" --warmup "${WARMUP:-2}" --steps "${STEPS:-6}" > "$OUT_DIR/train.log" 2>&1
echo "train exit $?"; grep -v Warning "$OUT_DIR/train.log" | tail -n 15
if [ -n "${PADDED_TOO:-}" ]; then  # the same step, padded with full logits (transformers' own), on the same machine
    torchrun --nproc_per_node "$GPUS" benchmarks/train_zero3_7b.py run "$WORLD" --padded \
        --out "$OUT_DIR/train_zero3_7b-padded.json" --micro-batch "${MICRO_BATCH:-4}" --warmup "${WARMUP:-2}" \
        --steps "${STEPS:-6}" > "$OUT_DIR/train-padded.log" 2>&1
    echo "padded exit $?"; tail -n 1 "$OUT_DIR/train-padded.log"
fi
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
