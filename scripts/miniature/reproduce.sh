#!/usr/bin/env bash
# The paper's claim at miniature scale: the synthetic world, a pre-trained tiny ViT and LLM, projector alignment,
# stage 1 on detailed captions / brief captions / none, stage 2, and the held-out benchmark, per seed.
#   bash scripts/miniature/reproduce.sh [OUT_DIR] [SEEDS...]      (default: runs/miniature, seeds 0 1 2)
# Writes OUT_DIR/score_card.{json,md,png}, a score file per seed and arm (OUT_DIR/scores/) and share4v.eval.report's
# card of them (OUT_DIR/report/); a finished stage is not run again (one made with other settings is refused: delete
# its folder to redo it).
# SIZE=full (the default with a GPU: about 15 minutes per arm on two idle CPU cores; 5 seeds with JOBS=15 on 4 x H200
# in about 20 minutes, measured with 10 more arms beside them) or SIZE=quick (the default
# on a CPU: the CI-sized recipe, about 10 minutes for 3 seeds on two cores; it learns colours and ranks the arms, not
# positions); docs/Miniature.md has the numbers.
# JOBS=N runs N processes at once, one per seed's shared parts and then one per arm, spread over the visible GPUs
# (logs in OUT_DIR/logs/), each with its share of the CPU cores as torch threads (OMP_NUM_THREADS, unless set); the
# last step then only collects the score card. Environment: RECIPE (more flags for
# share4v.data.miniature, e.g. "--set stage1_steps=800"); DOCS_DIR (e.g. docs/miniature: the cards are copied there
# at the end, as DOCS_DIR/<DOCS_NAME>-score_card.{json,md,png} and <DOCS_NAME>-report-score_card.md; DOCS_NAME
# defaults to SIZE).
set -euo pipefail
if [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then  # the comment above, as help
    sed -n '2,/^set /p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit 0
fi
OUT_DIR=${1:-runs/miniature}
shift || true
SEEDS=("${@:-0 1 2}")
JOBS=${JOBS:-1}
cd "$(dirname "$0")/../.."
# shellcheck disable=SC2206
SEEDS=(${SEEDS[@]})
# shellcheck disable=SC2206
RECIPE=(${RECIPE:-})

gpus=$(python -c "import torch; print(torch.cuda.device_count())")
SIZE=${SIZE:-$(if [ "$gpus" -gt 0 ]; then echo full; else echo quick; fi)}
case $SIZE in
    quick) RECIPE=(--quick ${RECIPE[@]+"${RECIPE[@]}"}) ;;
    full) ;;
    *) echo "error: SIZE must be quick or full, not '$SIZE'" >&2; exit 2 ;;
esac
echo "recipe: $SIZE ${RECIPE[*]:-}"
IFS=, read -ra visible_gpus <<< "${CUDA_VISIBLE_DEVICES:-}"
if [ "$JOBS" -gt 1 ]; then
    mkdir -p "$OUT_DIR/logs"
    rm -f "$OUT_DIR"/logs/*.status
    started=0
    # without this each process would start a thread per core, and JOBS of them would fight over the cores
    threads=${OMP_NUM_THREADS:-$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 ))}
    launch() {  # NAME ARGS...: one background process, at most JOBS at once, round-robin over the GPUs
        local name=$1
        shift
        # one GPU visible per process (with several, the Trainer would spread one process over all of them)
        local device=cpu visible=${CUDA_VISIBLE_DEVICES:-}
        if [ "$gpus" -gt 0 ]; then
            device=cuda visible=$((started % gpus))
            visible=${visible_gpus[$visible]:-$visible}
        fi
        while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
        echo "$(date +%T) $name on $device $visible"
        (
            status=0
            OMP_NUM_THREADS=$threads CUDA_VISIBLE_DEVICES=$visible python -m share4v.data.miniature --out "$OUT_DIR" \
                ${RECIPE[@]+"${RECIPE[@]}"} \
                --device "$device" "$@" > "$OUT_DIR/logs/$name.log" 2>&1 || status=$?
            echo "$status" > "$OUT_DIR/logs/$name.status"
        ) &
        started=$((started + 1))
    }
    for seed in "${SEEDS[@]}"; do launch "seed$seed-shared" --seeds "$seed" --arms; done
    wait
    for seed in "${SEEDS[@]}"; do
        for arm in detailed brief none; do launch "seed$seed-$arm" --seeds "$seed" --arms "$arm"; done
    done
    wait
    # a process that failed leaves its stages unfinished: the run below does them, one at a time
    failed=$( (grep -Lx 0 "$OUT_DIR"/logs/*.status || true) | wc -l)
    if [ "$failed" -gt 0 ]; then echo "$failed process(es) failed: see $OUT_DIR/logs/" >&2; fi
fi
# one process on one GPU (the Trainer would spread it over every visible GPU)
if [ "$gpus" -gt 1 ]; then export CUDA_VISIBLE_DEVICES=${visible_gpus[0]:-0}; fi
python -m share4v.data.miniature --out "$OUT_DIR" ${RECIPE[@]+"${RECIPE[@]}"} --seeds "${SEEDS[@]}"
if [ -n "${DOCS_DIR:-}" ]; then
    mkdir -p "$DOCS_DIR"
    name=${DOCS_NAME:-$SIZE}
    for ext in json md png; do  # no PNG without matplotlib
        if [ -f "$OUT_DIR/score_card.$ext" ]; then cp "$OUT_DIR/score_card.$ext" "$DOCS_DIR/$name-score_card.$ext"; fi
    done
    cp "$OUT_DIR/report/score_card.md" "$DOCS_DIR/$name-report-score_card.md"
    echo "score cards copied to $DOCS_DIR/$name-*"
fi
