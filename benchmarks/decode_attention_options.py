"""benchmarks/decode_attention_options.py

The attention of one decode step alone, as the engine's fused greedy step runs it (`share4v.inference.fused_llama`:
one new query per row over a static cache, a padding and causality mask), at Vicuna-7B shape (32 layers of 32 heads
of 128, bf16; a 768-slot cache with 680 slots written unless `--slots`/`--written` say otherwise: the engine's
captioning batches run 1,024-slot caches with about 720 written), under several formulations:

- `sdpa`: `F.scaled_dot_product_attention` with the mask, as the step calls it (PyTorch picks the kernel);
- `sdpa_efficient`, `sdpa_cudnn`, `sdpa_math`: the same call limited to one backend;
- `matmul_softmax`: two batched products and a softmax;
- `reduction`: scores and output as element-wise products summed in fp32, which inductor writes as its own
  reduction kernels, parallel over every cached position rather than over rows x heads;
- `flex`: flex attention with a block mask of the written slots;
- `kernel` (and `kernel_BxWxS`: B cache positions a loop step, W warps, S stages): `share4v.inference.
  cache_attention`'s Triton kernel over the bf16 cache, reading up to the last written slot (the engine's step at
  batch 2 and up);
- `fp8_kernel`, `fp8_kernel_BxWxS`: the same kernel over keys and values stored as e4m3 bytes (the engine's
  `kv_cache_dtype="fp8"`); `fp8_sdpa`: the same bytes converted to bf16, then SDPA (its CPU path).

Why: a batch-1 step reads 13 GB of weights and only 0.4 GB of keys and values, yet its time is about 1.3 ms over
what reading the weights costs, and an attention kernel that runs one query of one row over 32 heads keeps only 32
of the GPU's blocks busy. This measures whether another formulation reads the cache faster.

Each formulation runs 32 layers' attention (each layer's output is the next layer's query) in one compiled CUDA
graph. The caches are marked static, as the engine's cache is, so that the graph does not copy them in at every
replay. It writes one JSON line per formulation and batch size: microseconds per layer, the key/value bandwidth
that implies, and the largest difference from fp32 attention over the same inputs (after all 32 layers).

    PYTHONPATH=$PWD python benchmarks/decode_attention_options.py --out $OUT/decode-attention.json   # GPU, ~2 min
    PYTHONPATH=$PWD python benchmarks/decode_attention_options.py --smoke                            # CPU, seconds
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import results_path, write_results

from share4v.inference import cache_attention, fp8_cache

# (query, keys, values, visible, cache_position, scale), as the step calls `cache_attention.decode_attention`;
# only the kernel reads `cache_position` (the last written slot)
Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float], torch.Tensor]


def _sdpa(query, key, value, visible, cache_position, scale):
    return F.scaled_dot_product_attention(query, key, value, attn_mask=visible, scale=scale)


def _sdpa_with(backend: SDPBackend) -> Attention:
    def attention(query, key, value, visible, cache_position, scale):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(query, key, value, attn_mask=visible, scale=scale)

    return attention


def _matmul_softmax(query, key, value, visible, cache_position, scale):
    scores = torch.matmul(query, key.transpose(-1, -2)).float() * scale
    return torch.matmul(scores.masked_fill(~visible, float("-inf")).softmax(-1).to(query.dtype), value)


def _reduction(query, key, value, visible, cache_position, scale):
    scores = (query.float() * key.float()).sum(-1).unsqueeze(-2) * scale  # [B, H, 1, L]
    weights = scores.masked_fill(~visible, float("-inf")).softmax(-1)
    return (weights.transpose(-1, -2) * value.float()).sum(-2, keepdim=True).to(query.dtype)  # [B, H, 1, D]


def _flex(query, key, value, visible, cache_position, scale):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    written = visible[:, 0, 0, :]

    def mask_mod(row, head, query_index, key_index):
        return written[row, key_index]

    block_mask = create_block_mask(mask_mod, query.shape[0], None, 1, key.shape[2], device=query.device)
    return flex_attention(query, key, value, block_mask=block_mask, scale=scale)


_STEP_ATTENTION = cache_attention.decode_attention  # bound here: profile_decode_step puts formulations in its place


def _kernel(config: tuple[int, int, int] | None) -> Attention:
    """The cache kernel (bf16 values or e4m3 bytes, whichever it is given) at `config`, or as the step calls it."""

    def attention(query, keys, values, visible, cache_position, scale):
        rows, heads, _, dim = query.shape
        if config is None:
            return _STEP_ATTENTION(query, keys, values, visible, cache_position, scale)
        out = cache_attention.run_kernel(query.reshape(rows, heads, dim), keys, values, visible.reshape(rows, -1),
                                         cache_position, scale, config, traced=True)  # fmt: skip
        return out.view(rows, heads, 1, dim)

    return attention


def _fp8_sdpa(query, keys, values, visible, cache_position, scale):
    keys, values = fp8_cache.from_bytes(keys, query.dtype), fp8_cache.from_bytes(values, query.dtype)
    return _sdpa(query, keys, values, visible, cache_position, scale)


KERNEL_CONFIGS = [(block, warps, 2) for block in (32, 64, 128, 256) for warps in (1, 2, 4, 8)]  # stages: no effect
FORMULATIONS: dict[str, Attention] = {
    "sdpa": _sdpa,
    "sdpa_efficient": _sdpa_with(SDPBackend.EFFICIENT_ATTENTION),
    "sdpa_cudnn": _sdpa_with(SDPBackend.CUDNN_ATTENTION),
    "sdpa_math": _sdpa_with(SDPBackend.MATH),
    "matmul_softmax": _matmul_softmax,
    "reduction": _reduction,
    "flex": _flex,
    "kernel": _kernel(None),
    **{f"kernel_{'x'.join(map(str, config))}": _kernel(config) for config in KERNEL_CONFIGS},
    "fp8_kernel": _kernel(None),
    **{f"fp8_kernel_{'x'.join(map(str, config))}": _kernel(config) for config in KERNEL_CONFIGS},
    "fp8_sdpa": _fp8_sdpa,
}
DEFAULT = ["sdpa", "sdpa_efficient", "sdpa_cudnn", "sdpa_math", "matmul_softmax", "reduction", "flex"]


def written_slots(slots: int) -> int:
    """How many of a cache's first slots `inputs` marks written by default: 680 of 768, scaled."""
    return slots * 680 // 768


def inputs(rows: int, layers: int, heads: int, slots: int, written: int, head_dim: int, device, dtype):
    """A query `[B, H, 1, D]`, each layer's keys and values `[B, H, slots, D]` and the mask `[B, 1, 1, slots]`:
    the first `written` slots written, row 0 without padding, the others with `slots // 96` slots of left
    padding."""
    generator = torch.Generator(device).manual_seed(0)
    query = torch.randn(rows, heads, 1, head_dim, device=device, dtype=dtype, generator=generator)
    caches = [torch.randn(rows, heads, slots, head_dim, device=device, dtype=dtype, generator=generator)
              for _ in range(2 * layers)]  # fmt: skip
    for cache in caches:
        torch._dynamo.mark_static_address(cache)  # as the engine's static cache: no copy at each replay
    visible = torch.zeros(rows, 1, 1, slots, dtype=torch.bool, device=device)
    visible[..., :written] = True
    visible[1:, ..., : max(1, slots // 96)] = False
    return query, caches, visible


def run_layers(attention: Attention, query, caches, visible, cache_position, scale) -> torch.Tensor:
    out = query
    for key, value in zip(caches[0::2], caches[1::2], strict=True):
        out = attention(out, key, value, visible, cache_position, scale)
    return out


def measure(
    name: str, rows: int, shape: dict, device: torch.device, dtype, repeats: int, compile_layers: bool = True
) -> dict:
    query, caches, visible = inputs(rows, **shape, device=device, dtype=dtype)
    if name.startswith("fp8"):  # the cache as e4m3 bytes; the reference below still reads the bf16 values
        stored = [fp8_cache.to_bytes(cache) for cache in caches]
        for cache in stored:
            torch._dynamo.mark_static_address(cache)
    scale = shape["head_dim"] ** -0.5
    at = torch.tensor([shape["written"] - 1], device=device)  # the last written slot
    reference = query.float()
    with sdpa_kernel([SDPBackend.MATH]):  # fp32, one layer's keys and values upcast at a time
        for key, value in zip(caches[0::2], caches[1::2], strict=True):
            reference = _sdpa(reference, key.float(), value.float(), visible, at, scale)
    mode = "reduce-overhead" if device.type == "cuda" else None
    compiled = torch.compile(run_layers, mode=mode) if compile_layers else run_layers

    def call() -> torch.Tensor:
        if device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        return compiled(FORMULATIONS[name], query, stored if name.startswith("fp8") else caches, visible, at, scale)

    for _ in range(3):  # compiles, records, replays
        out = call().clone()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            call()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / 20)
    per_layer = statistics.median(times) / shape["layers"]
    # SDPA and the others read every slot; the kernel stops at the last written one (e4m3: one byte a value)
    kernel = name.startswith(("kernel", "fp8_kernel"))
    read = shape["written"] if kernel else shape["slots"]
    value_bytes = 1 if name.startswith("fp8") else caches[0].element_size()
    cache_bytes = 2 * rows * shape["heads"] * read * shape["head_dim"] * value_bytes
    return {
        "formulation": name, "rows": rows, "us_per_layer": round(per_layer * 1e6, 2),
        "kv_tb_per_s": round(cache_bytes / per_layer / 1e12, 3),
        "max_abs_difference_from_fp32": float(f"{(out.float() - reference).abs().max().item():.3g}"),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--formulations", nargs="+", default=DEFAULT, choices=list(FORMULATIONS),
                        help="default: all but the fp8 ones")  # fmt: skip
    parser.add_argument("--batch-sizes", default="1,16,64", help="comma-separated (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds of 20 calls (default: %(default)s)")
    parser.add_argument("--slots", type=int, default=768, help="cache slots (default: %(default)s)")
    parser.add_argument("--written", type=int, help="slots written (default: 680 of 768, scaled to --slots)")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny shapes, fp32, on the CPU, uncompiled: checks what each one computes"
    )
    parser.add_argument("--out", type=Path, help="results JSON, or a folder for DATE-GPU-decode-attention.json")
    args = parser.parse_args(argv)
    if args.smoke:
        device, dtype, shape = (
            torch.device("cpu"),
            torch.float32,
            {"layers": 3, "heads": 4, "slots": 96, "written": written_slots(96), "head_dim": 16},
        )
    else:
        device, dtype, shape = (
            torch.device("cuda"),
            torch.bfloat16,
            {
                "layers": 32,
                "heads": 32,
                "slots": args.slots,
                "written": args.written or written_slots(args.slots),
                "head_dim": 128,
            },
        )
    results = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               "dtype": str(dtype).removeprefix("torch."), "shape": shape, "runs": [], "errors": []}  # fmt: skip
    for rows in (int(size) for size in args.batch_sizes.split(",")):
        for name in args.formulations:
            try:
                # the smoke run checks what each formulation computes; compiling them on the CPU took a minute
                record = measure(name, rows, shape, device, dtype, 2 if args.smoke else args.repeats, not args.smoke)
            except Exception as err:  # a backend this device lacks: recorded, the others go on
                error = {"formulation": name, "rows": rows, "error": f"{type(err).__name__}: {err}"[:300]}
                results["errors"].append(error)
                print(json.dumps(error), flush=True)
            else:
                results["runs"].append(record)
                print(json.dumps(record), flush=True)
            torch._dynamo.reset()  # each formulation compiles afresh
    write_results(results_path(args.out, device, "decode-attention"), results)
    return results


if __name__ == "__main__":
    main()
