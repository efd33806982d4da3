#!/usr/bin/env bash
# The multi-GPU training measurements of docs/Performance.md (ShareGPT4V-7B shape, random weights):
#   bash benchmarks/run_train_multigpu_7b.sh OUT_DIR [RUNS]
# RUNS: space-separated STAGE:ZERO:GPUS[:LAYERS] entries, run in order (default "2:3:2 2:3:4"), e.g.
#   "2:3:4 2:3:2 1:3:4 2:2:4"     stage 2 under ZeRO-3 on 4 and 2 GPUs, stage 1 under ZeRO-3 on 4, stage 2 under ZeRO-2
#   "2:3:1:8"                     stage 2 on one GPU at 8 decoder layers (its own world)
# Each run writes OUT_DIR/stage{S}-zero{Z}-{G}gpu[-{L}layers][-mb{M}][-padded].json and its log; the end writes
# OUT_DIR/scaling.md (+ scaling.json). The recipe's global batch (128 / 256) is kept by gradient accumulation.
# Environment: WORLD (where the random 7B world lives, made once), MICRO_BATCH (per GPU; default the recipe's 8 / 16),
# STEPS, WARMUP (optimizer steps), RUN_TIMEOUT (seconds per run), PADDED=1 (transformers' padded step instead of
# share4v's packed one), RUN_ARGS (more flags for every run), SMOKE=0 (skip the tiny-world check).
# RUN_ARGS="--checkpoint-layers 16" checkpoints only the first 16 decoder layers (the rest keep their activations);
# the result files' names do not say so (their JSON does), so give each such setting its own OUT_DIR.
# DeepSpeed must be importable (on the lent GPU machine: carried wheels, see docs/Training.md).
set -uo pipefail
OUT_DIR=$(realpath -m "${1:?usage: run_train_multigpu_7b.sh OUT_DIR [RUNS]}")  # before the cd below
RUNS=${2:-2:3:2 2:3:4}
WORLD=${WORLD:-/tmp/share4v-7b-world}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
mkdir -p "$OUT_DIR"
cd "$(dirname "$0")/.."
BENCH=benchmarks/train_multigpu_7b.py
failed=0

if [ "${SMOKE:-1}" = 1 ]; then
    echo "== smoke: a tiny world, stage 1 under ZeRO-3 on 2 GPUs with gradient accumulation"
    python3 $BENCH make-world /tmp/share4v-tiny-world --tiny --rows 64 > "$OUT_DIR/smoke.log" 2>&1 &&
    timeout 180 torchrun --nproc_per_node 2 $BENCH run /tmp/share4v-tiny-world --stage 1 --micro-batch 2 \
        --global-batch 8 --out "$OUT_DIR/smoke.json" >> "$OUT_DIR/smoke.log" 2>&1
    echo "smoke exit $?"; tail -n 2 "$OUT_DIR/smoke.log"; rm -f "$OUT_DIR/smoke.json"
fi

for run in $RUNS; do
    IFS=: read -r stage zero gpus layers <<< "$run"
    world=$WORLD name="stage$stage-zero$zero-${gpus}gpu"
    if [ -n "$layers" ]; then world=$WORLD-$layers name="$name-${layers}layers"; fi
    if [ -n "${MICRO_BATCH:-}" ]; then name="$name-mb$MICRO_BATCH"; fi
    if [ -n "${PADDED:-}" ]; then name="$name-padded"; fi
    if [ ! -f "$world/data-pretrain.json" ]; then
        echo "== making $world"
        { time python3 $BENCH make-world "$world" --layers "${layers:-32}"; } > "$OUT_DIR/world-${layers:-32}.log" 2>&1
        echo "world exit $?"; tail -n 3 "$OUT_DIR/world-${layers:-32}.log"
    fi
    echo "== $name: stage $stage, ZeRO-$zero, $gpus GPUs, world $world, $(date +%T)"
    rm -f "$OUT_DIR/$name.json"  # a failed rerun must not leave an older result behind
    timeout "${RUN_TIMEOUT:-420}" torchrun --nproc_per_node "$gpus" $BENCH run "$world" --stage "$stage" --zero "$zero" \
        --warmup "${WARMUP:-1}" --steps "${STEPS:-3}" ${PADDED:+--padded} ${MICRO_BATCH:+--micro-batch $MICRO_BATCH} ${RUN_ARGS:-} --out "$OUT_DIR/$name.json" \
        > "$OUT_DIR/$name.log" 2>&1
    status=$?
    echo "exit $status at $(date +%T)"; grep -v Warning "$OUT_DIR/$name.log" | tail -n 2 | cut -c1-600
    [ "$status" -eq 0 ] || failed=$((failed + 1))
done
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
ls "$OUT_DIR"/stage*.json > /dev/null 2>&1 &&
    python3 $BENCH summarize "$OUT_DIR"/stage*.json --markdown "$OUT_DIR/scaling.md"
[ "$failed" -eq 0 ] || { echo "$failed run(s) failed" >&2; exit 1; }
