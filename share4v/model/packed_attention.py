"""packed_attention.py

Attention for packed training rows: several samples concatenated into one row with no padding, each attending only
to itself. Registered with transformers' `AttentionInterface` under `PACKED_ATTENTION`; the language model reaches
it through the standard `attn_implementation` setting (no patching).

A call that carries the samples' boundaries (`cu_seq_lens_q`, cumulative lengths, as transformers' own
flash-attention path names them) runs causal attention per sample: PyTorch's variable-length kernel on CUDA
(`torch.nn.attention.varlen`), else one `scaled_dot_product_attention` per sample. Every other call (padded
batches, generation, the vision tower) is transformers' SDPA attention with its usual mask, so the implementation
can stay set outside packed training.
"""

from __future__ import annotations

import inspect
import itertools

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # an older PyTorch: the per-sample loop serves
    varlen_attn = None

PACKED_ATTENTION = "share4v_packed_sdpa"

# implementations that already keep packed samples apart given `cu_seq_lens_*` (their own varlen kernels)
PACKING_AWARE = (PACKED_ATTENTION, "flash_attention_2", "flash_attention_3")


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: `query/key/value` `[B, H, L, Dh]` → output `[B, L, H, Dh]`."""
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    if query.shape[0] != 1:
        raise ValueError(f"a packed batch is one row, got {query.shape[0]} rows")
    if dropout:
        raise ValueError("attention dropout is not supported for packed rows")
    query, key, value = _as_autocast_dtype(query, key, value)
    groups = query.shape[1] // key.shape[1]
    if groups > 1:  # grouped-query attention: one key/value head per group of query heads
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    max_length = kwargs.get("max_length_q")
    if max_length is None:
        max_length = int((cu_seq_lens[1:] - cu_seq_lens[:-1]).max())
    if _varlen_kernel_serves(query, scaling):
        output = _varlen_causal(query[0], key[0], value[0], cu_seq_lens, int(max_length), scaling)
    else:
        output = _causal_per_sample(query[0], key[0], value[0], cu_seq_lens, scaling)
    return output.unsqueeze(0), None


def _as_autocast_dtype(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What autocast does to SDPA's inputs: under autocast, one low-precision dtype for all three (rotary
    embeddings of fp32 hidden states leave query and key in fp32, and the flash kernel takes only fp16/bf16)."""
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(tensor.to(dtype) for tensor in tensors)


@torch.compiler.disable  # inside compiled decoder layers the kernel runs as is (a graph break, no tracing into it)
def _varlen_causal(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu: torch.Tensor, max_length: int, scale
) -> torch.Tensor:
    """`[H, T, Dh]` each → `[T, H, Dh]`, through PyTorch's variable-length flash kernel."""
    q, k, v = (t.transpose(0, 1) for t in (query, key, value))  # [T, H, Dh]
    cu = cu.to(device=q.device, dtype=torch.int32)
    options = {"is_causal": True} if "is_causal" in _VARLEN_PARAMETERS else {"window_size": (-1, 0)}
    if scale is not None and "scale" in _VARLEN_PARAMETERS:
        options["scale"] = scale  # else the default, which `_varlen_kernel_serves` checked it equals
    return varlen_attn(q, k, v, cu, cu, max_length, max_length, **options)


_VARLEN_PARAMETERS = inspect.signature(varlen_attn).parameters if varlen_attn is not None else {}


def _varlen_kernel_serves(query: torch.Tensor, scale: float | None = None) -> bool:
    """The CUDA kernel takes fp16/bf16 only; older releases of it take no `scale` (then only the default)."""
    if varlen_attn is None or not query.is_cuda or query.dtype not in (torch.float16, torch.bfloat16):
        return False
    return "scale" in _VARLEN_PARAMETERS or scale is None or abs(scale - query.shape[-1] ** -0.5) < 1e-12


def _causal_per_sample(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, cu: torch.Tensor, scale
) -> torch.Tensor:
    """`[H, T, Dh]` each → `[T, H, Dh]`, one causal SDPA call per sample (CPU, fp32, older PyTorch)."""
    bounds = cu.tolist()
    outputs = [
        F.scaled_dot_product_attention(
            query[:, start:end], key[:, start:end], value[:, start:end], is_causal=True, scale=scale
        )
        for start, end in itertools.pairwise(bounds)
    ]
    return torch.cat(outputs, dim=1).transpose(0, 1)


AttentionInterface.register(PACKED_ATTENTION, packed_attention_forward)
AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)  # unpacked calls get SDPA's masks
