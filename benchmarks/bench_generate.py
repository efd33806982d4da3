"""benchmarks/bench_generate.py

Generation speed of share4v's engine against transformers' fastest `generate`, side by side in one process on one
GPU: random-init ShareGPT4V-7B shape (Vicuna-7B 4096/11008/32 layers/32 heads, vocabulary 32000; CLIP ViT-L/14-336;
mlp2x_gelu projector), bf16, SDPA attention, the same weights for both (one copy, shared).

- baseline: transformers' `LlavaForConditionalGeneration.generate(..., cache_implementation="static")`, which
  compiles its decode step (inductor, "reduce-overhead": CUDA graphs); each image is 576 `<image>` tokens. Its
  `max_cache_len` is the engine's cache length (prompt + new tokens rounded up to `CACHE_BUCKET`), so both sides
  attend over the same positions: the same work, and the same rounding in the prompt's attention.
- share4v: `Share4VEngine.run` with `compile_decode=True` (its default for a model on one GPU):
  a static cache of its own, reused across calls, and the same compiled decode step; prompts are engine requests
  (`collate` left-pads them).

Prompts: row i is one random 336x336 image + 36..44 random text tokens (the same at every batch size), left-padded;
128 new tokens, greedy, no end-of-sequence token (random weights), so every row writes exactly 128 tokens.

Timing, per side and batch size: `--warmup` untimed calls (the first one holds the compilation: `first_call_s`,
and `compile_s` = first call - timed call), then `--repeats` timed calls (median `seconds`), then `--repeats` calls
with one new token (median: time to first token, `ttft_s`). tok/s = rows x 128 / seconds; decode tok/s = rows x 127
/ (seconds - ttft_s); images/s = rows / seconds. Peak memory: the most allocated during the timed calls, weights
included. Batch sizes run in the order given (default 1, 64, 16: the results' keys first; 1 then 64 compiles each
side twice, 16 then reuses the graphs); a batch size starts only when a cautious guess of its time (from the last
one's) ends before `--deadline-s`, and the results file is rewritten after every measurement, so a run that is
stopped still leaves its numbers.

Equality: each row's greedy tokens on both sides; the common-prefix length is reported (bf16 on random weights may
part after some tokens), and the run fails only when a row's first token differs on a side whose prompt pass is the
model's own forward, the baseline's computation. The engine's default prompt pass (`fused_prompt`: fused layers,
compiled, attention over the prompt alone) rounds differently in bf16 and can flip a near-tied first token of the
random model; `check_decode_equality.py` compares it with fp32 instead.

Roofline: decoding one token at batch 1 reads every LLM weight once (not the embedding table): weight bytes over
the HBM bandwidth (a 1 GiB device-to-device copy, bytes read + written) is the fastest possible step.

    python benchmarks/bench_generate.py --out benchmarks/results/     # on the GPU: writes DATE-GPU-generate.json
    python benchmarks/bench_generate.py --smoke                       # tiny shapes on the CPU, in seconds

The results file holds `decode_bs1_speedup` (share4v's batch-1 decode tok/s over the baseline's),
`caption_speedup` (images/s for 128-token captions, each side at its best batch size among those it measured and
the other side tried: measured, or ran out of memory there, so a batch size one side cannot fit counts for the other),
`generate_bs1_speedup` (batch-1 tok/s with the first token's time), the roofline and the fraction of it each side
reaches, and the raw numbers.

`--sample` times sampled decoding instead (temperature 0.7, top-p 0.9 and `generate`'s default top-k, `SAMPLED`):
the baseline's `generate(do_sample=True)` against the engine with `fast_sampling` (its own loop, drawing as
`generate` draws). Tokens then differ by the draws; only their counts are compared. The results file ends in
`-generate-sampled.json`. `--unfused-projections` and `--model-prompt` add the engine with `fused_projections`
or `fused_prompt` off as sides of their own, whose keys carry the prefix `unfused_` or `model_prompt_`.
`--kv-cache-dtype fp8` times the engine with an fp8 KV cache (`share4v.inference.fp8_cache`) in place of the default
one (side `share4v_fp8_kv`, keys prefixed `fp8_kv_`, file `-generate-fp8-kv.json`): its tokens part from the
baseline's by design (keys and values rounded), so only the first token (from the unrounded prompt pass) is
expected to agree.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is made here; the GPU machine reaches no hub

import torch
from transformers import CompileConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import TINY, Shape, _module_names, save_tower
from results_file import device_name, results_path, write_results

from share4v.constants import IMAGE_TOKEN_INDEX
from share4v.convert.llava_format import to_llava_names
from share4v.inference.engine import CACHE_BUCKET, GenerationParams, Share4VEngine
from share4v.inference.fp8_cache import KV_CACHE_DTYPES
from share4v.inference.fused_llama import FusedLlama
from share4v.inference.requests import Request

SEVEN_B = Shape(layers=32)
PAD_ID = 0
SAMPLED = {"temperature": 0.7, "top_p": 0.9}  # --sample: both sides' settings
DRAW_SEED = 0  # --sample: the random state each timed call starts from, on both sides


class IdTokenizer:
    """What the engine needs of a tokenizer when prompts come as token ids and random weights write no text: a
    padding id, no end-of-sequence token (every row runs to max_new_tokens), ids "decoded" as numbers."""

    pad_token_id = unk_token_id = PAD_ID
    bos_token_id = 1
    eos_token_id = eos_token = None

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return " ".join(str(int(i)) for i in ids)

    def convert_ids_to_tokens(self, ids):
        return str(ids)


# ---- models -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_share4v(shape: Shape, tower_dir: Path, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A random share4v model (seed 0), tower from `tower_dir`, in `dtype` on `device`, SDPA attention."""
    from share4v.model import Share4VConfig, Share4VLlamaForCausalLM

    config = Share4VConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads, num_key_value_heads=shape.heads,
        max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=False, mm_vision_tower=str(tower_dir),
        mm_hidden_size=shape.vision_hidden, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
        mm_vision_select_feature="patch", image_aspect_ratio="pad",
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device), default_dtype(dtype):
        model = Share4VLlamaForCausalLM(config)
    model.get_vision_tower().load_model(str(tower_dir), dtype=dtype, device=device, attn_implementation="sdpa")
    model.generation_config.eos_token_id = None  # generate() fills an unset one from here: keep none
    return model.eval()


def build_llava(share4v_model, shape: Shape, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """transformers' Llava over the share4v model's own tensors (`share4v.convert` names; nothing copied)."""
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tower = share4v_model.get_vision_tower().vision_tower
    llm_state = {k: v for k, v in share4v_model.state_dict().items() if not k.startswith("model.vision_tower.")}
    text = {k: v for k, v in share4v_model.config.to_dict().items()
            if not k.startswith("mm_") and k not in ("model_type", "architectures")}  # fmt: skip
    config = LlavaConfig(
        vision_config=tower.config.to_dict(), text_config=LlamaConfig(**text).to_dict(),
        image_token_id=shape.image_token_id, vision_feature_layer=-2, vision_feature_select_strategy="default",
        projector_hidden_act="gelu", image_seq_length=shape.patches, multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    with torch.device(device), default_dtype(dtype):
        model = LlavaForConditionalGeneration(config)
    state = _module_names(to_llava_names(llm_state, tower.state_dict()), set(model.state_dict()))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected or [key for key in missing if "rotary" not in key]:
        raise RuntimeError(f"weights do not map: missing {missing[:5]}, unexpected {unexpected[:5]}")
    shared = {p.data_ptr() for p in share4v_model.parameters()}
    if any(p.data_ptr() not in shared for p in model.parameters()):
        raise RuntimeError("the Llava twin holds tensors of its own")
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = PAD_ID
    return model.eval()


def llm_weight_bytes(model) -> int:
    """Bytes one batch-1 decoding step must read: every LLM weight but the embedding table (one row is read)."""
    skip = ("model.vision_tower.", "model.mm_projector.", "model.embed_tokens.")
    return sum(p.numel() * p.element_size() for name, p in model.named_parameters() if not name.startswith(skip))


# ---- prompts ----------------------------------------------------------------------------------------------------


def prompt_ids(row: int, shape: Shape, text_tokens: int) -> list[int]:
    """Row `row`'s prompt: BOS, 4 text tokens, the image, the rest of `text_tokens` + (row * 7) % 9 text tokens."""
    rng = random.Random(row)
    length = text_tokens + (row * 7) % 9
    words = [rng.randrange(3, shape.vocab - 1) for _ in range(length - 1)]  # never the baseline's <image> id
    return [1, *words[:4], IMAGE_TOKEN_INDEX, *words[4:]]


def row_pixels(row: int, shape: Shape) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + row)
    return torch.randn((3, shape.image_size, shape.image_size), generator=generator)  # [3, H, W], float32


def share4v_requests(rows: int, shape: Shape, text_tokens: int) -> list[Request]:
    requests = []
    for row in range(rows):
        ids = prompt_ids(row, shape, text_tokens)
        requests.append(Request(ids, row_pixels(row, shape)[None], 1, "", len(ids) - 1 + shape.patches))
    return requests


def llava_inputs(rows: int, shape: Shape, text_tokens: int, device, dtype) -> dict:
    """The same prompts as transformers' Llava takes them: each image as `shape.patches` <image> ids, left-padded."""
    expanded = []
    for row in range(rows):
        ids = []
        for token in prompt_ids(row, shape, text_tokens):
            ids += [shape.image_token_id] * shape.patches if token == IMAGE_TOKEN_INDEX else [token]
        expanded.append(ids)
    width = max(len(ids) for ids in expanded)
    input_ids = torch.full((rows, width), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((rows, width), dtype=torch.long)
    for row, ids in enumerate(expanded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    pixels = torch.stack([row_pixels(row, shape) for row in range(rows)])
    return {"input_ids": input_ids.to(device), "attention_mask": attention_mask.to(device),
            "pixel_values": pixels.to(device=device, dtype=dtype)}  # fmt: skip


# ---- measurements -----------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(call: Callable[[], list[list[int]]], device: torch.device) -> tuple[float, list[list[int]]]:
    synchronize(device)
    start = time.perf_counter()
    tokens = call()
    synchronize(device)
    return time.perf_counter() - start, tokens


def measure(name: str, generate: Callable[[int], list[list[int]]], rows: int, args, device) -> dict:
    """Warm-up calls, timed calls and first-token calls of `generate(max_new_tokens) -> tokens per row`."""
    first_call_s, _ = timed(lambda: generate(args.new_tokens), device)
    for _ in range(args.warmup - 1):
        timed(lambda: generate(args.new_tokens), device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, tokens = [], []
    for _ in range(args.repeats):
        torch.manual_seed(DRAW_SEED)  # --sample: each side's kept tokens are drawn from the same random state
        seconds, tokens = timed(lambda: generate(args.new_tokens), device)
        times.append(seconds)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    ttft = statistics.median(timed(lambda: generate(1), device)[0] for _ in range(args.repeats))
    seconds = statistics.median(times)
    result = {
        "seconds": round(seconds, 4), "seconds_per_call": [round(t, 4) for t in times], "ttft_s": round(ttft, 4),
        "tokens_per_s": round(rows * args.new_tokens / seconds, 2),
        "decode_tokens_per_s": round(rows * (args.new_tokens - 1) / max(seconds - ttft, 1e-9), 2),
        "images_per_s": round(rows / seconds, 3), "first_call_s": round(first_call_s, 2),
        "compile_s": round(first_call_s - seconds, 2), "peak_gib": peak and round(peak, 2),
        "tokens_per_row": min(len(row) for row in tokens),
    }  # fmt: skip
    emit({"measurement": "generate", "side": name, "batch": rows, **result})
    return {**result, "tokens": tokens}


def compare(ours: list[list[int]], theirs: list[list[int]]) -> dict:
    """Row by row: whether the first tokens agree and how many leading tokens agree."""
    prefixes = []
    for a, b in zip(ours, theirs, strict=True):
        common = 0
        while common < min(len(a), len(b)) and a[common] == b[common]:
            common += 1
        prefixes.append(common)
    return {
        "rows": len(prefixes), "first_token_equal_rows": sum(p > 0 for p in prefixes),
        "rows_fully_equal": sum(p == len(a) == len(b) for p, a, b in zip(prefixes, ours, theirs, strict=True)),
        "common_prefix_min": min(prefixes), "common_prefix_mean": round(sum(prefixes) / len(prefixes), 2),
    }  # fmt: skip


def hbm_bandwidth(device: torch.device) -> float:
    """Bytes per second of a large device-to-device copy, counting bytes read + written (median of 20)."""
    size = (1 << 30) if device.type == "cuda" else (1 << 26)
    source = torch.randint(0, 256, (size,), dtype=torch.uint8, device=device)  # random, not zeros
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    times = [timed(lambda: target.copy_(source), device)[0] for _ in range(20)]
    return 2 * size / statistics.median(times)  # the buffers go with this frame


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---- the run ----------------------------------------------------------------------------------------------------


def shape_and_device(smoke: bool) -> tuple[Shape, torch.device]:
    """The tiny shape on the CPU for a smoke run, else the 7B shape on CUDA (which must be there)."""
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    if not smoke and device.type != "cuda":
        raise SystemExit("error: no CUDA device (use --smoke on the CPU)")
    return (TINY if smoke else SEVEN_B), device


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--batch-sizes", default=None, help="comma-separated, in run order (default: 1,64,16)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per caption (default: 128)")
    parser.add_argument("--text-tokens", type=int, default=None, help="shortest prompt's text tokens (default: 36)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls (default: %(default)s)")
    parser.add_argument("--deadline-s", type=float, default=510.0, help="start no batch size expected to end later")
    parser.add_argument("--eager", action="store_true", help="also time the engine without compile_decode")
    parser.add_argument(
        "--unfused-projections",
        action="store_true",
        help="also time the engine with fused_projections=False, the model's own forward (side share4v_unfused)",
    )
    parser.add_argument(
        "--model-prompt",
        action="store_true",
        help="also time the engine with fused_prompt=False, the model's own prompt pass (side share4v_model_prompt)",
    )
    parser.add_argument("--sample", action="store_true", help=f"sampled decoding ({SAMPLED}), the engine with "
                        "fast_sampling, instead of greedy")  # fmt: skip
    parser.add_argument("--kv-cache-dtype", default="auto", choices=KV_CACHE_DTYPES,
                        help="the engine's KV cache (fp8: side share4v_fp8_kv in place of share4v)")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, fp32, on the CPU: checks the script")
    parser.add_argument("--out", type=Path, help="results JSON, or a folder for DATE-GPU-generate.json")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    shape, device = shape_and_device(args.smoke)
    dtype = torch.float32 if args.smoke else torch.bfloat16
    batch_sizes = [int(b) for b in (args.batch_sizes or ("1,3" if args.smoke else "1,64,16")).split(",")]
    args.new_tokens = args.new_tokens or (8 if args.smoke else 128)
    args.text_tokens = args.text_tokens or (10 if args.smoke else 36)
    # torch before 2.13 gives CUDA-graph state only to the thread that imports it first: here, the baseline's thread
    # (the engine sets up its own decoding thread)
    importlib.import_module("torch._inductor.cudagraph_trees")
    for limit in ("recompile_limit", "cache_size_limit"):  # both models' compiled calls are nn.Module.__call__:
        if hasattr(torch._dynamo.config, limit):  # one cache of compiled code, whose default limit is 8 entries
            setattr(torch._dynamo.config, limit, 64)
            break
    kind = "generate-sampled" if args.sample else "generate"
    out = results_path(args.out, device, kind + ("-fp8-kv" if args.kv_cache_dtype == "fp8" else ""))
    main_side = "share4v_fp8_kv" if args.kv_cache_dtype == "fp8" else "share4v"

    bandwidth = hbm_bandwidth(device)
    results = {"shape": shape.__dict__, "dtype": str(dtype).removeprefix("torch."), "new_tokens": args.new_tokens,
               "text_tokens": args.text_tokens, "batch_sizes": batch_sizes, "warmup": args.warmup,
               "repeats": args.repeats, "hbm_bandwidth_tb_s": round(bandwidth / 1e12, 3),
               "sampling": SAMPLED if args.sample else None,
               "runs": {"baseline": {}, main_side: {}}, "equality": {}, "skipped": [], "errors": [],
               "environment": _environment(device)}  # fmt: skip
    emit(
        {"measurement": "setup", "device": results["environment"]["device"], "hbm_tb_s": results["hbm_bandwidth_tb_s"]}
    )

    with tempfile.TemporaryDirectory() as tmp:
        tower_dir = Path(tmp) / "clip"
        save_tower(shape, tower_dir, device)
        model = build_share4v(shape, tower_dir, device, dtype)
        # the engine's default greedy step re-lays the weights (q/k/v, gate/up): before the Llava twin takes them,
        # so that it shares the re-laid ones rather than keeping the old
        FusedLlama.of(model)
        llava = build_llava(model, shape, device, dtype)
    free_memory(device)  # the Llava's own initial weights, replaced by the shared ones
    weight_bytes = llm_weight_bytes(model)
    results["llm_weight_gb"] = round(weight_bytes / 1e9, 3)
    results["roofline_bs1_tokens_per_s"] = round(bandwidth / weight_bytes, 1)
    # on the CPU (--smoke): dynamo's graph capture without inductor's code generation, seconds rather than minutes
    compile_config = CompileConfig(backend="eager") if args.smoke else True
    sides = {main_side: Share4VEngine(IdTokenizer(), model, None, context_len=4096, compile_decode=compile_config,
                                      fast_sampling=args.sample, kv_cache_dtype=args.kv_cache_dtype)}  # fmt: skip
    results["fused_projections"] = sides[main_side].fused_projections
    results["kv_cache_dtype"] = args.kv_cache_dtype
    if args.unfused_projections:  # the same weights: the views of the fused tensors serve the model's own forward
        sides["share4v_unfused"] = Share4VEngine(IdTokenizer(), model, None, context_len=4096,
                                                 compile_decode=compile_config, fused_projections=False)  # fmt: skip
        results["runs"]["share4v_unfused"] = {}
    if args.model_prompt:
        sides["share4v_model_prompt"] = Share4VEngine(IdTokenizer(), model, None, context_len=4096,
                                                      compile_decode=compile_config, fused_prompt=False)  # fmt: skip
        results["runs"]["share4v_model_prompt"] = {}
    if args.eager:
        sides["share4v_eager"] = Share4VEngine(IdTokenizer(), model, None, context_len=4096, compile_decode=False)
        results["runs"]["share4v_eager"] = {}

    for rows in batch_sizes:
        expected = sum(_expected_seconds(by_batch, rows, args) for by_batch in results["runs"].values())
        if time.perf_counter() - started + expected > args.deadline_s:
            reason = f"expected to end past the {args.deadline_s:.0f} s deadline"
            results["skipped"].append({"batch": rows, "reason": reason})
            emit({"measurement": "skipped", "batch": rows, "reason": reason, "expected_s": round(expected)})
            continue
        tokens = {}
        inputs = llava_inputs(rows, shape, args.text_tokens, device, dtype)
        cache_len = -(-(inputs["input_ids"].shape[1] + args.new_tokens) // CACHE_BUCKET) * CACHE_BUCKET

        def baseline(new_tokens: int, inputs=inputs, cache_len=cache_len) -> list[list[int]]:
            output = llava.generate(**inputs, max_new_tokens=new_tokens, do_sample=args.sample, pad_token_id=PAD_ID,
                                    cache_implementation="static", max_cache_len=cache_len,
                                    **(SAMPLED if args.sample else {}))  # fmt: skip
            return output[:, inputs["input_ids"].shape[1] :].tolist()

        calls = {"baseline": baseline}
        for name, engine in sides.items():
            batch = engine.collate(share4v_requests(rows, shape, args.text_tokens))

            def ours(new_tokens: int, engine=engine, batch=batch) -> list[list[int]]:
                settings = SAMPLED if args.sample else {"temperature": 0}
                params = GenerationParams(**settings, max_new_tokens=new_tokens)
                return [completion.token_ids for completion in engine.run(batch, params)]

            calls[name] = ours
        for name, call in calls.items():
            try:
                run = measure(name, call, rows, args, device)
            except torch.cuda.OutOfMemoryError:
                results["skipped"].append({"batch": rows, "side": name, "reason": "out of memory"})
                emit({"measurement": "skipped", "side": name, "batch": rows, "reason": "out of memory"})
            except Exception as err:  # a failure is a finding: record it, go on with the rest
                error = {"batch": rows, "side": name, "error": f"{type(err).__name__}: {err}"[:800]}
                results["errors"].append(error)
                emit({"measurement": "error", **error})
            else:
                tokens[name] = run.pop("tokens")
                run["cache_len"] = cache_len
                if name in sides:  # [rows, positions] of the engine's static cache; None: the dynamic cache served
                    run["static_cache"] = sides[name]._cache_shape
                results["runs"][name][str(rows)] = run
            if name in sides:  # room for the next side and size (a cache kept for 256 rows left none at 128)
                sides[name].release_cache()
            free_memory(device)
            _summarize(results)
            write_results(out, results)
        for name in tokens.keys() - {"baseline"}:
            if "baseline" in tokens:
                equality = compare(tokens[name], tokens["baseline"])
                results["equality"].setdefault(name, {})[str(rows)] = equality
                emit({"measurement": "equality", "side": name, "batch": rows, **equality})
        del inputs, calls, tokens
        free_memory(device)
        _summarize(results)
        write_results(out, results)

    results["compile_counters"] = {key: dict(value) for key, value in torch._dynamo.utils.counters.items()
                                   if key in ("stats", "graph_break", "recompiles")}  # fmt: skip
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    _summarize(results)
    write_results(out, results)
    summary = ("decode_bs1_speedup", "generate_bs1_speedup", "caption_speedup", "unfused_decode_bs1_speedup",
               "unfused_caption_speedup", "model_prompt_caption_speedup", "fp8_kv_decode_bs1_speedup",
               "fp8_kv_caption_speedup", "roofline_fraction_bs1")  # fmt: skip
    emit({"measurement": "summary", **{key: results.get(key) for key in summary}, "out": out and str(out)})
    own_prompt = {name for name, engine in sides.items()  # the eager side runs generate: the model's own pass
                  if not (engine.compile_decode and engine.fused_projections and engine.fused_prompt)}  # fmt: skip
    differing = [(name, rows) for name, by_batch in results["equality"].items() for rows, e in by_batch.items()
                 if name in own_prompt and e["first_token_equal_rows"] < e["rows"]]  # fmt: skip
    if differing and not args.sample:  # sampled: the same draws, but in bf16 a near-tie can draw another token
        raise SystemExit(f"first tokens differ from the baseline's at (side, batch) {differing}")
    if results["errors"]:
        raise SystemExit(f"{len(results['errors'])} measurement(s) failed: {results['errors'][0]['error'][:300]}")
    return results


def _expected_seconds(runs: dict, rows: int, args) -> float:
    """A cautious guess at one side's measurement at `rows` from its last one: a compilation as long as that whole
    first call when no graph serves `rows` yet (batch 1 has its own; larger ones share one), each generation
    (rows / last rows)^(1/3) and each first-token call rows / last rows times as long when the batch grows."""
    if not runs:
        return 0.0
    last_rows, last = list(runs.items())[-1]
    growth = max(1.0, rows / int(last_rows))
    call = last["seconds"] * growth ** (1 / 3)
    compiles = not any((int(measured) == 1) == (rows == 1) for measured in runs)
    first_call = last["first_call_s"] if compiles else call
    return first_call + (args.warmup - 1 + args.repeats) * call + args.repeats * last["ttft_s"] * growth


def _summarize(results: dict) -> None:
    """The headline keys from whatever has been measured so far."""
    runs = results["runs"]
    sides = (("share4v", ""), ("share4v_unfused", "unfused_"), ("share4v_model_prompt", "model_prompt_"),
             ("share4v_fp8_kv", "fp8_kv_"))  # fmt: skip
    for side, prefix in sides:
        ours, theirs = runs.get(side, {}).get("1"), runs["baseline"].get("1")
        if ours and theirs:
            results[f"{prefix}decode_bs1_speedup"] = round(
                ours["decode_tokens_per_s"] / theirs["decode_tokens_per_s"], 3
            )
            results[f"{prefix}generate_bs1_speedup"] = round(ours["tokens_per_s"] / theirs["tokens_per_s"], 3)
    roofline = results.get("roofline_bs1_tokens_per_s")
    if roofline:
        results["roofline_fraction_bs1"] = {
            name: round(by_batch["1"]["decode_tokens_per_s"] / roofline, 3)
            for name, by_batch in runs.items()
            if "1" in by_batch
        }

    def tried(name: str) -> set[str]:  # measured, or out of memory: a batch size that does not fit is not a best
        unfit = {str(skip["batch"]) for skip in results.get("skipped", [])
                 if skip.get("side") == name and skip["reason"] == "out of memory"}  # fmt: skip
        return runs.get(name, {}).keys() | unfit

    for side, prefix in sides:
        # each side's best among the batch sizes it measured that the other tried too (not one it never reached)
        ours, theirs = runs.get(side, {}).keys() & tried("baseline"), runs["baseline"].keys() & tried(side)
        if ours and theirs:
            best = {}
            for name, sizes in ((side, ours), ("baseline", theirs)):
                rows = max(sizes, key=lambda r, name=name: runs[name][r]["images_per_s"])
                best[name] = {"batch": int(rows), "images_per_s": runs[name][rows]["images_per_s"]}
            results[f"{prefix}caption_best"] = best
            results[f"{prefix}caption_speedup"] = round(
                best[side]["images_per_s"] / best["baseline"]["images_per_s"], 3
            )


def _environment(device: torch.device) -> dict:
    import transformers

    from share4v.inference import matvec

    kernel = {name: "x".join(map(str, matvec.launch_config(*shape))) for name, shape in MATVEC_SHAPES.items()}
    return {"device": device_name(device), "torch": torch.__version__, "transformers": transformers.__version__,
            "date": time.strftime("%Y-%m-%d"),
            # the batch-1 projections' kernel (`share4v.inference.matvec`), its launch configuration at 7B shapes
            "matvec_kernel": kernel if matvec.triton is not None and device.type == "cuda" else None}  # fmt: skip


# the projections of a 7B decode step, [rows, columns] of their weights
MATVEC_SHAPES = {"qkv": (12288, 4096), "o_proj": (4096, 4096), "gate_up": (22016, 4096), "down_proj": (4096, 11008),
                 "lm_head": (32000, 4096)}  # fmt: skip


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
