"""inference/cache_attention.py

The attention of one decode step: one new query a row over the engine's static KV cache (`decode_attention`).

Why a kernel: the static cache holds a slot for every position up to its length, which the engine rounds up to a
multiple of `CACHE_BUCKET` (256) so that prompts of different lengths share one compiled step. SDPA over the cache
reads every slot and masks the unwritten ones. The benchmark's captioning batch (one image and 36-44 text tokens a
row, about 620 prompt positions, 128 new tokens) gets a 768-slot cache whose steps have written 684 slots on
average: SDPA reads 12 % more than that. A prompt of 660 positions gets 1,024 slots, 720 written on average: 42 %
more, 15 GB a step at batch 96 at 7B shape. The Triton kernel here stops at the last slot written,
`cache_position`, which it reads from the device, so one CUDA graph serves every step.

What it computes: SDPA's masked attention (`visible` `[B, 1, 1, slots]`, padding and causality), in fp32
arithmetic with an online softmax, over keys and values in the query's dtype or stored as e4m3 bytes
(`share4v.inference.fp8_cache`, converted in registers). Heads may be grouped (several query heads a key head).
Against SDPA over the same cache it differs by the rounding of the summation order: not bit for bit.

Where it runs: on a CUDA GPU with Triton (fp8 bytes: compute capability 8.9 and up, for the conversion), as the
custom operator `share4v::cache_decode_attention`, which compiled code calls as it is. The compiled step and its
CUDA graph hold the operator, and the launch configuration is chosen from the actual batch size, with no guard or
recompile per size range. Elsewhere, and at batch 1 over a cache in the model's dtype, SDPA runs: at batch 1 a
program per head keeps only 32 of the GPU's blocks busy, and SDPA was faster even than the kernel reading e4m3
bytes, half the bytes, and over bf16 (see `launch_config`). The CPU tests run the kernel in Triton's interpreter
and hold it to the SDPA path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from share4v.inference.fp8_cache import from_bytes

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: SDPA
    triton = None
if not hasattr(torch.library, "custom_op"):  # torch < 2.4
    triton = None

_FLOATS = (torch.bfloat16, torch.float16, torch.float32)


def decode_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    visible: torch.Tensor,
    cache_position: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One new query a row `[B, H, 1, D]` over the cache's `keys`/`values` `[B, kv heads, slots, D]` (the query's
    dtype, or e4m3 bytes from `fp8_cache.to_bytes`), `visible` `[B, 1, 1, slots]` marking the slots each row may
    see, all at or before `cache_position` `[1]` (the slot just written): `[B, H, 1, D]` in the query's dtype, as
    SDPA over the cache's values computes it."""
    if _kernel_applies(query, keys, values, visible, cache_position):
        rows, heads, _, dim = query.shape
        out = torch.ops.share4v.cache_decode_attention(
            query.reshape(rows, heads, dim).contiguous(),
            keys,
            values,
            visible.reshape(rows, -1).contiguous(),
            cache_position,
            scale,
        )
        return out.view(rows, heads, 1, dim)
    if keys.dtype == torch.uint8:
        keys, values = from_bytes(keys, query.dtype), from_bytes(values, query.dtype)
    groups = query.shape[1] // keys.shape[1]
    if groups > 1:  # as transformers' SDPA path: PyTorch's fused kernels take no grouped heads with a mask
        keys, values = keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(query, keys, values, attn_mask=visible, scale=scale)


def has_kernel(device: torch.device, fp8: bool = False) -> bool:
    """Whether `decode_attention` can run the kernel on `device`: a CUDA GPU with Triton installed, of compute
    capability 8.0 and up (8.9 and up for e4m3 bytes, which Triton converts there only)."""
    if triton is None or device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= ((8, 9) if fp8 else (8, 0))


def _kernel_applies(query, keys, values, visible, cache_position) -> bool:
    fp8 = keys.dtype == torch.uint8
    return (
        has_kernel(query.device, fp8)
        and all(t.device == query.device for t in (keys, values, visible, cache_position))
        and visible.dtype == torch.bool
        and query.dtype in _FLOATS
        and keys.dtype == values.dtype
        and (fp8 or (keys.dtype == query.dtype and query.shape[0] > 1))  # batch 1 in the model's dtype: SDPA
        and keys.is_contiguous()
        and values.is_contiguous()
        and query.shape[2] == 1
        and query.shape[3] == keys.shape[3]
        and query.shape[3] & (query.shape[3] - 1) == 0  # a power of two (the kernel's block of dimensions)
        and query.shape[1] % keys.shape[1] == 0
        and visible.numel() == keys.shape[0] * keys.shape[2]
    )


def launch_config(programs: int, fp8: bool = False) -> tuple[int, int, int]:
    """(cache positions a loop step, warps, pipeline stages) for `programs` = rows x heads, from
    `benchmarks/decode_attention_options.py` at 7B shape. Chosen when the operator runs, from the actual sizes
    (compiled code sees the operator, not this choice). Pipeline stages made no difference.

    - e4m3 bytes, on an H200 (benchmarks/results/2026-11-27-h200-fp8-kv/): with many programs in flight, small ones
      read fastest (batch 128: 195 µs a layer at 32 x 1 against 216 at 64 x 2, and SDPA's 364 over bf16; batch 64:
      113 µs at 64 x 2 against 175 at 64 x 4, and SDPA's 188 in another call); at batch 1 (32 programs) wide ones
      (16.5 µs at 256 x 4; SDPA 11.4).
    - bf16, on an H100, 1,024 slots, 720 written (benchmarks/results/2026-11-27-h100-cache-kernel/): batch 96,
      379 µs at 64 x 2, 384 at 128 x 4, 435 at 32 x 1 (SDPA 523); batch 8, 40 µs at 256 x 4, 44 at 128 x 4, 133 at
      32 x 1 (SDPA 49).
    - bf16, on an H100, 768 slots, 684 written, the captioning benchmark's cache
      (benchmarks/results/2026-11-28-h100-decode-attention/): batch 128, 497 µs at 64 x 2, 491 at 256 x 4, 507 at
      128 x 4, 535 at 32 x 1 (SDPA 524, reading every slot); batch 1, 19.7 µs at 256 x 4, 25.4 at 128 x 4 (SDPA
      12.0): batch 1 keeps SDPA (`_kernel_applies`).

    The other batch sizes were not measured: the thresholds between them are a guess."""
    if programs >= 4096 and fp8:
        return 32, 1, 2
    if programs >= 512:
        return 64, 2, 2
    return 256, 4, 2


if triton is not None:

    @triton.jit
    def _decode_attention_kernel(
        query,  # [B, H, D] in the output's dtype
        keys,  # [B, kv heads, slots, D]: the query's dtype, or e4m3 bytes (FP8)
        values,
        visible,  # [B, slots] bool
        cache_position,  # [1]: the last slot any row may see
        out,  # [B, H, D]
        heads,
        groups,
        slots,
        scale,
        DIM: tl.constexpr,
        BLOCK: tl.constexpr,
        FP8: tl.constexpr,
    ):
        row, head = tl.program_id(0), tl.program_id(1)
        dims = tl.arange(0, DIM)
        # fp32 throughout (inductor passes `scale` as fp64, which would make the scores and the loop's state fp64)
        q = (tl.load(query + (row * heads + head) * DIM + dims).to(tl.float32) * scale).to(tl.float32)
        cache = ((row * (heads // groups) + head // groups) * slots).to(tl.int64) * DIM
        end = tl.load(cache_position) + 1
        best = tl.full((), -1e30, tl.float32)  # the running maximum score (finite: a fully hidden block stays 0)
        total = tl.zeros((), tl.float32)  # sum of exp(score - best)
        acc = tl.zeros((DIM,), tl.float32)
        for start in range(0, end, BLOCK):
            slot = start + tl.arange(0, BLOCK)
            inside = slot < end
            seen = tl.load(visible + row * slots + slot, mask=inside, other=0) != 0
            where = cache + slot[:, None] * DIM + dims[None, :]
            k = tl.load(keys + where, mask=inside[:, None], other=0)
            if FP8:
                k = k.to(tl.float8e4nv, bitcast=True)
            k = k.to(tl.float32)
            scores = tl.where(seen, tl.sum(k * q[None, :], axis=1), -1e30)
            new_best = tl.maximum(best, tl.max(scores, axis=0))
            weights = tl.where(seen, tl.exp(scores - new_best), 0.0)
            shrink = tl.exp(best - new_best)
            v = tl.load(values + where, mask=inside[:, None], other=0)
            if FP8:
                v = v.to(tl.float8e4nv, bitcast=True)
            v = v.to(tl.float32)
            acc = acc * shrink + tl.sum(weights[:, None] * v, axis=0)
            total = total * shrink + tl.sum(weights, axis=0)
            best = new_best
        tl.store(out + (row * heads + head) * DIM + dims, (acc / total).to(out.dtype.element_ty))

    @torch.library.custom_op("share4v::cache_decode_attention", mutates_args=())
    def _cache_decode_attention(
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        visible: torch.Tensor,
        cache_position: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        return run_kernel(query, keys, values, visible, cache_position, scale)

    @_cache_decode_attention.register_fake
    def _(query, keys, values, visible, cache_position, scale):
        return torch.empty_like(query)


def run_kernel(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    visible: torch.Tensor,
    cache_position: torch.Tensor,
    scale: float,
    config: tuple[int, int, int] | None = None,
    traced: bool = False,
) -> torch.Tensor:
    """The kernel on contiguous `query` `[B, H, D]`, keys and values `[B, kv heads, slots, D]` (the query's dtype
    or e4m3 bytes), `visible` `[B, slots]`: `[B, H, D]`. `config`: (cache positions a loop step, warps, pipeline
    stages), default `launch_config`'s. `traced`: launched through `torch.library.wrap_triton`, as inside the
    custom op."""
    rows, heads, dim = query.shape
    fp8 = keys.dtype == torch.uint8
    block, warps, stages = config or launch_config(rows * heads, fp8=fp8)
    out = torch.empty_like(query)
    kernel = torch.library.wrap_triton(_decode_attention_kernel) if traced else _decode_attention_kernel
    kernel[(rows, heads)](query, keys, values, visible, cache_position, out, heads, heads // keys.shape[1],
                          keys.shape[2], scale, DIM=dim, BLOCK=block, FP8=fp8, num_warps=warps,
                          num_stages=stages)  # fmt: skip
    return out
