"""inference/fp8_cache.py

Keys and values kept in the engine's static cache as fp8 (e4m3, one byte a value) instead of the model's dtype, and
the decode step's attention over them: `Share4VEngine(kv_cache_dtype="fp8")`.

Why: a captioning batch's decode step is bound by reading its cache. At batch 128 with one image a row (about 750
positions) a 7B model's cache is 51.5 GB in bf16 against 13.2 GB of weights, so halving the cache's bytes cuts the
step's reads by 40 %. The values are rounded to e4m3 (3 mantissa bits; no scale, so magnitudes past 448 saturate),
so answers change slightly: this is an opt-in trade, not an exact path.

The cache stores the e4m3 bytes as `uint8` (transformers' static cache allocates its tensors in the dtype of what it
is first given, and copies bytes at any index), `to_bytes` makes them. `decode_attention` attends one new query a
row over them: on a CUDA device with Triton, a kernel that reads the bytes, converts them in registers and stops at
the last position written (`share4v::fp8_decode_attention`, a custom operator that compiled code calls as it is, so
the compiled step and its CUDA graph hold it and the launch configuration is chosen from the actual batch size, with
no guard or recompile per size range); on GPUs with fp8 conversions (compute capability 8.9 and up: Ada, Hopper).
Elsewhere it converts the cache to the query's dtype and runs SDPA (the reference the CPU tests hold the kernel
to). The prompt pass attends over its own keys and values before they are rounded, and writes them rounded; every
later step reads them rounded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the SDPA reference
    triton = None
if not hasattr(torch.library, "custom_op"):  # torch < 2.4
    triton = None

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # e4m3's largest finite value: larger magnitudes saturate to it
KV_CACHE_DTYPES = ("auto", "fp8")  # "auto": the model's own dtype


def to_bytes(x: torch.Tensor) -> torch.Tensor:
    """`x` rounded to e4m3 (saturating), as the bytes the cache stores (`uint8`, same shape)."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8).view(torch.uint8)


def from_bytes(stored: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The values of cache bytes `stored` in `dtype`."""
    return stored.view(FP8).to(dtype)


def decode_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    visible: torch.Tensor,
    cache_position: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """One new query a row `[B, H, 1, D]` over cache bytes `keys`/`values` `[B, kv heads, slots, D]` (`to_bytes`),
    `visible` `[B, 1, 1, slots]` marking the slots each row may see, all at or before `cache_position` `[1]` (the
    slot just written): `[B, H, 1, D]` in the query's dtype, as SDPA over the cache's values computes it."""
    if _kernel_applies(query, keys, values, visible, cache_position):
        rows, heads, _, dim = query.shape
        out = torch.ops.share4v.fp8_decode_attention(
            query.reshape(rows, heads, dim).contiguous(),
            keys,
            values,
            visible.reshape(rows, -1).contiguous(),
            cache_position,
            scale,
        )
        return out.view(rows, heads, 1, dim)
    key, value = from_bytes(keys, query.dtype), from_bytes(values, query.dtype)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(query, key, value, attn_mask=visible, scale=scale)


def has_fp8_kernel(device: torch.device) -> bool:
    """Whether `decode_attention` runs the kernel on `device`: a CUDA GPU whose Triton converts e4m3 (compute
    capability 8.9 and up), with Triton installed."""
    return triton is not None and device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def _kernel_applies(query, keys, values, visible, cache_position) -> bool:
    return (
        has_fp8_kernel(query.device)
        and all(t.device == query.device for t in (keys, values, visible, cache_position))
        and visible.dtype == torch.bool
        and query.dtype in (torch.bfloat16, torch.float16, torch.float32)
        and keys.dtype == values.dtype == torch.uint8
        and keys.is_contiguous()
        and values.is_contiguous()
        and query.shape[2] == 1
        and query.shape[3] == keys.shape[3]
        and query.shape[3] & (query.shape[3] - 1) == 0  # a power of two (the kernel's block of dimensions)
        and query.shape[1] % keys.shape[1] == 0
        and visible.numel() == keys.shape[0] * keys.shape[2]
    )


def launch_config(programs: int) -> tuple[int, int, int]:
    """(cache positions a loop step, warps, pipeline stages) for `programs` = rows x heads, from
    `benchmarks/decode_attention_options.py` on an H200 at 7B shape (benchmarks/results/2026-11-27-h200-fp8-kv/):
    with many programs in flight, small ones read fastest (batch 128: 195 µs a layer at 32 x 1 against 216 at
    64 x 2, and SDPA's 364 over bf16; batch 64: 113 µs at 64 x 2 against 175 at 64 x 4, and SDPA's 188 in another
    call); at batch 1 (32 programs) wide ones (16.5 µs at 256 x 4; SDPA 11.4). Pipeline stages made no difference.
    Batches between 2 and 63 were not measured: the thresholds between them are a guess. Chosen when the operator
    runs, from the actual sizes (compiled code sees the operator, not this choice)."""
    if programs >= 4096:
        return 32, 1, 2
    if programs >= 512:
        return 64, 2, 2
    return 256, 4, 2


if triton is not None:

    @triton.jit
    def _fp8_attention_kernel(
        query,  # [B, H, D] in the output's dtype
        keys,  # [B, kv heads, slots, D] e4m3 bytes
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
            k = tl.load(keys + where, mask=inside[:, None], other=0).to(tl.float8e4nv, bitcast=True).to(tl.float32)
            scores = tl.where(seen, tl.sum(k * q[None, :], axis=1), -1e30)
            new_best = tl.maximum(best, tl.max(scores, axis=0))
            weights = tl.where(seen, tl.exp(scores - new_best), 0.0)
            shrink = tl.exp(best - new_best)
            v = tl.load(values + where, mask=inside[:, None], other=0).to(tl.float8e4nv, bitcast=True).to(tl.float32)
            acc = acc * shrink + tl.sum(weights[:, None] * v, axis=0)
            total = total * shrink + tl.sum(weights, axis=0)
            best = new_best
        tl.store(out + (row * heads + head) * DIM + dims, (acc / total).to(out.dtype.element_ty))

    @torch.library.custom_op("share4v::fp8_decode_attention", mutates_args=())
    def _fp8_decode_attention(
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        visible: torch.Tensor,
        cache_position: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        return run_kernel(query, keys, values, visible, cache_position, scale)

    @_fp8_decode_attention.register_fake
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
    """The kernel on contiguous `query` `[B, H, D]`, cache bytes `[B, kv heads, slots, D]`, `visible` `[B, slots]`:
    `[B, H, D]`. `config`: (cache positions a loop step, warps, pipeline stages), default `launch_config`'s. `traced`:
    launched through `torch.library.wrap_triton`, as inside the custom op."""
    rows, heads, dim = query.shape
    block, warps, stages = config or launch_config(rows * heads)
    out = torch.empty_like(query)
    kernel = torch.library.wrap_triton(_fp8_attention_kernel) if traced else _fp8_attention_kernel
    kernel[(rows, heads)](query, keys, values, visible, cache_position, out, heads, heads // keys.shape[1],
                          keys.shape[2], scale, DIM=dim, BLOCK=block, num_warps=warps,
                          num_stages=stages)  # fmt: skip
    return out
