"""inference/fp8_cache.py

Keys and values kept in the engine's static cache as fp8 (e4m3, one byte a value) instead of the model's dtype:
`Share4VEngine(kv_cache_dtype="fp8")`.

Why: a captioning batch's decode step is bound by reading its cache. At batch 128 with one image a row (about 750
positions) a 7B model's cache is 51.5 GB in bf16 against 13.2 GB of weights, so halving the cache's bytes cuts the
step's reads by 40 %. The values are rounded to e4m3 (3 mantissa bits; no scale, so magnitudes past 448 saturate),
so answers change slightly: this is an opt-in trade, not an exact path.

The cache stores the e4m3 bytes as `uint8` (transformers' static cache allocates its tensors in the dtype of what it
is first given, and copies bytes at any index), `to_bytes` makes them. The decode step's attention reads them with
`share4v.inference.cache_attention.decode_attention` (on GPUs with fp8 conversions, compute capability 8.9 and up:
Ada, Hopper, a Triton kernel that converts them in registers). The prompt pass attends over its own keys and values
before they are rounded, and writes them rounded; every later step reads them rounded.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # e4m3's largest finite value: larger magnitudes saturate to it
DEFAULT_KV_CACHE_DTYPE = "auto"  # the model's own dtype
KV_CACHE_DTYPES = (DEFAULT_KV_CACHE_DTYPE, "fp8")


def to_bytes(x: torch.Tensor) -> torch.Tensor:
    """`x` rounded to e4m3 (saturating), as the bytes the cache stores (`uint8`, same shape)."""
    return x.clamp(-FP8_MAX, FP8_MAX).to(FP8).view(torch.uint8)


def from_bytes(stored: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The values of cache bytes `stored` in `dtype`."""
    return stored.view(FP8).to(dtype)
