# shellcheck shell=bash
# scripts/sharegpt4v/eval/lib.sh: what the benchmark scripts share (sourced by each of them).
#
# Every script takes the original's positional arguments:
#   bash scripts/sharegpt4v/eval/<benchmark>.sh [CKPT_NAME] [CKPT_DIR]
# CKPT_NAME (default share4v-7b) names the answer and score files; the model is CKPT_DIR/CKPT_NAME (CKPT_DIR default
# checkpoints; `ShareGPT4V-7B Lin-Chen` loads the hub id Lin-Chen/ShareGPT4V-7B). Relative paths are taken from the
# repository root, where the original scripts were run.
#
# Environment:
#   CUDA_VISIBLE_DEVICES  GPUs to shard the questions over, one process per GPU (default 0)
#   EVAL_ROOT             the benchmarks' data (default playground/data/eval; layout in docs/Evaluation.md)
#   BATCH_SIZE            questions per generation batch (default 1, as the original; batches are left-padded)
#   CONV_MODE             conversation template (default vicuna_v1, as the original scripts; qbench: share4v_v1)
#   EVAL_ARGS             extra flags for the inference module, e.g. "--max_new_tokens 8 --num-workers 0"
#   PYTHON                the interpreter (default python)
#   SKIP_JUDGE=1          GPT-judged benchmarks (llavabench, mmvet) stop after inference and conversion
#
# Helpers:
#   eval_init BENCHMARK "$@"           read the positional arguments: CKPT, MODEL_PATH, SCORES_FILE
#   need PATH WHAT                     stop with one line (what to download where) when PATH is missing
#   first_existing PATH...             the first PATH that exists (else the first), for layouts the original named twice
#   run_chunks DIR MODULE ARGS...      `python -m MODULE ARGS` once per GPU with --num-chunks/--chunk-idx, answers in
#                                      DIR/<chunks>_<idx>.jsonl (a rerun resumes them); fails if any chunk fails
#   merge_chunks DIR [DEST]            the chunk files, in chunk order, into DEST (default DIR/merge.jsonl)
#   run_mmbench LANG SPLIT             MMBench (en) or MMBench-CN (cn) from $EVAL_ROOT/mmbench/SPLIT.tsv: answers,
#                                      the xlsx upload and the local circular score

cd "$(dirname "${BASH_SOURCE[0]}")/../../.." || exit 2  # the repository root
REPO_ROOT=$PWD

die() {
    echo "error: $*" >&2
    exit 2
}

abspath() {
    case $1 in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$REPO_ROOT/$1" ;;
    esac
}

EVAL_ROOT=$(abspath "${EVAL_ROOT:-playground/data/eval}")
BATCH_SIZE=${BATCH_SIZE:-1}
CONV_MODE=${CONV_MODE:-vicuna_v1}
PYTHON=${PYTHON:-python}
read -r -a EVAL_ARGS_ARRAY <<< "${EVAL_ARGS:-}"
IFS=',' read -r -a GPUS <<< "${CUDA_VISIBLE_DEVICES:-0}"
(( ${#GPUS[@]} > 0 )) || GPUS=(0)
CHUNKS=${#GPUS[@]}
[[ $BATCH_SIZE =~ ^[1-9][0-9]*$ ]] || die "BATCH_SIZE must be a positive integer, got '$BATCH_SIZE'"

eval_init() {
    BENCHMARK=$1
    shift
    (( $# <= 2 )) || die "usage: bash scripts/sharegpt4v/eval/$BENCHMARK.sh [CKPT_NAME] [CKPT_DIR]"
    CKPT=${1:-share4v-7b}
    CKPT_DIR=${2:-checkpoints}
    MODEL_PATH=$CKPT_DIR/$CKPT
    # A local checkpoint folder must exist; CKPT_DIR that is not a folder here is a hub organisation.
    if [[ -d $CKPT_DIR && ! -d $MODEL_PATH ]]; then
        die "no checkpoint at $MODEL_PATH: train one (docs/Training.md) or download it there"
    fi
    # shellcheck disable=SC2034  # read by the benchmark scripts
    SCORES_FILE=$EVAL_ROOT/scores/$CKPT/$BENCHMARK.json
    echo "$BENCHMARK: model $MODEL_PATH, data $EVAL_ROOT, GPUs ${GPUS[*]}, batch $BATCH_SIZE, template $CONV_MODE" >&2
}

need() {
    [[ -e $1 ]] || die "$1 not found: $2 (see docs/Evaluation.md)"
}

first_existing() {
    local path
    for path in "$@"; do
        if [[ -e $path ]]; then
            printf '%s\n' "$path"
            return
        fi
    done
    printf '%s\n' "$1"
}

CHUNK_PIDS=()

stop_chunks() {
    local pid
    for pid in "${CHUNK_PIDS[@]}"; do
        kill "$pid" 2> /dev/null || true
    done
    exit 130
}

run_chunks() {
    local dir=$1 module=$2 idx
    shift 2
    mkdir -p "$dir"
    if (( CHUNKS == 1 )); then
        CUDA_VISIBLE_DEVICES=${GPUS[0]} "$PYTHON" -m "$module" "$@" --answers-file "$dir/1_0.jsonl" \
            --num-chunks 1 --chunk-idx 0 "${EVAL_ARGS_ARRAY[@]}"
        return
    fi
    echo "answering in $CHUNKS chunks on GPUs ${GPUS[*]}; progress in $dir/${CHUNKS}_*.log" >&2
    CHUNK_PIDS=()
    trap stop_chunks INT TERM
    for idx in "${!GPUS[@]}"; do
        CUDA_VISIBLE_DEVICES=${GPUS[$idx]} "$PYTHON" -m "$module" "$@" --answers-file "$dir/${CHUNKS}_${idx}.jsonl" \
            --num-chunks "$CHUNKS" --chunk-idx "$idx" "${EVAL_ARGS_ARRAY[@]}" > "$dir/${CHUNKS}_${idx}.log" 2>&1 &
        CHUNK_PIDS+=("$!")
    done
    local failed=()
    for idx in "${!CHUNK_PIDS[@]}"; do
        wait "${CHUNK_PIDS[$idx]}" || failed+=("$idx")
    done
    trap - INT TERM
    for idx in "${failed[@]}"; do
        echo "error: chunk $idx (GPU ${GPUS[$idx]}) failed; the end of $dir/${CHUNKS}_${idx}.log:" >&2
        tail -n 5 "$dir/${CHUNKS}_${idx}.log" >&2
    done
    (( ${#failed[@]} == 0 )) || exit 1
}

merge_chunks() {
    local dir=$1 dest=${2:-$1/merge.jsonl} idx part errors=()
    local partial="$dest.partial"
    : > "$partial"
    for idx in $(seq 0 $((CHUNKS - 1))); do
        part=$dir/${CHUNKS}_${idx}.jsonl
        [[ -f $part ]] || die "$part is missing: rerun the script to answer that chunk"
        cat "$part" >> "$partial"
        if [[ -s $part.errors.jsonl ]]; then
            errors+=("$part.errors.jsonl")
        fi
    done
    mv -f "$partial" "$dest"
    echo "merged $CHUNKS chunk(s) into $dest ($(wc -l < "$dest") answers)" >&2
    if (( ${#errors[@]} > 0 )); then
        echo "note: some questions could not be answered (bad line or missing image): see ${errors[*]}" >&2
    fi
}

run_mmbench() {
    local lang=$1 split=$2 data=$EVAL_ROOT/mmbench
    need "$data/$split.tsv" "download $split.tsv from OpenMMLab's MMBench downloads there"
    local answers=$data/answers/$split/$CKPT
    run_chunks "$answers" share4v.eval.model_vqa_mmbench --model-path "$MODEL_PATH" --question-file "$data/$split.tsv" \
        --lang "$lang" --single-pred-prompt --temperature 0 --conv-mode "$CONV_MODE" --batch-size "$BATCH_SIZE"
    merge_chunks "$answers"
    "$PYTHON" scripts/convert_mmbench_for_submission.py --annotation-file "$data/$split.tsv" --result-dir "$answers" \
        --upload-dir "$data/answers_upload/$split/$CKPT" --experiment merge
    "$PYTHON" -m share4v.eval.eval_mmbench --annotation-file "$data/$split.tsv" --result-file "$answers/merge.jsonl" \
        --lang "$lang" --scores-file "$SCORES_FILE"
    echo "for the official number, submit $data/answers_upload/$split/$CKPT/merge.xlsx to the OpenCompass server" >&2
}
