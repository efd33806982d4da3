"""train/activation_checkpointing.py

What a checkpointed decoder layer recomputes in the backward pass (`--gradient_checkpointing_policy`):

- `full` (transformers' own): the whole layer runs its forward again; only its input is kept.
- `selective`: the layer keeps the outputs of its matrix multiplications and of attention, and recomputes only the
  element-wise work between them (norms, rotary embedding, SiLU and the gate product, residual additions). The
  backward pass then does the matmul FLOPs of a step without checkpointing; the memory kept is about half of what
  no checkpointing keeps (the matmul outputs, not the element-wise intermediates and fp32 norm inputs).

Both compute the same values as no checkpointing: the recomputed operations are the same deterministic operations on
the same inputs. `selective` is PyTorch's selective activation checkpointing (`torch.utils.checkpoint` with a
`context_fn`); it needs the non-reentrant checkpoint, which is what transformers 5 uses unless told otherwise.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts
from transformers.modeling_layers import GradientCheckpointingLayer

POLICIES = ("full", "selective")


def _saved_operators() -> frozenset:
    """The operators whose outputs a `selective` layer keeps: matrix multiplications and the attention kernels (each
    SDPA backend, the CPU one, and the variable-length kernel of packed micro-batches where this torch has it)."""
    names = [
        ("aten", "mm"), ("aten", "addmm"), ("aten", "bmm"),
        ("aten", "_scaled_dot_product_flash_attention"), ("aten", "_scaled_dot_product_efficient_attention"),
        ("aten", "_scaled_dot_product_cudnn_attention"), ("aten", "_scaled_dot_product_flash_attention_for_cpu"),
        ("aten", "_flash_attention_forward"), ("aten", "_efficient_attention_forward"),
        ("torch_attn", "_varlen_attn"),
    ]  # fmt: skip
    found = []
    for namespace, name in names:
        packet = getattr(getattr(torch.ops, namespace), name, None) if hasattr(torch.ops, namespace) else None
        if packet is not None and hasattr(packet, "default"):
            found.append(packet.default)
    return frozenset(found)


SAVED_OPERATORS = _saved_operators()


def _keep_matmuls_and_attention(ctx, operator, *args, **kwargs) -> CheckpointPolicy:
    return CheckpointPolicy.MUST_SAVE if operator in SAVED_OPERATORS else CheckpointPolicy.PREFER_RECOMPUTE


def selective_checkpoint(function: Callable, *args: Any, **kwargs: Any) -> Any:
    """`torch.utils.checkpoint.checkpoint` that keeps matmul and attention outputs and recomputes the rest."""
    contexts = functools.partial(create_selective_checkpoint_contexts, _keep_matmuls_and_attention)
    return checkpoint(function, *args, use_reentrant=False, context_fn=contexts, **kwargs)


def check_policy(policy: str, checkpointing_kwargs: dict | None) -> None:
    """One-line errors for a policy this run cannot use."""
    if policy not in POLICIES:
        raise ValueError(f"--gradient_checkpointing_policy {policy}: choose one of {', '.join(POLICIES)}")
    if policy == "selective" and (checkpointing_kwargs or {}).get("use_reentrant"):
        raise ValueError(
            "--gradient_checkpointing_policy selective needs the non-reentrant checkpoint: drop use_reentrant from "
            "--gradient_checkpointing_kwargs"
        )


def apply_policy(model: torch.nn.Module, policy: str) -> None:
    """Make every checkpointed layer of `model` (transformers' `GradientCheckpointingLayer`s: the LLM's decoder
    layers, and the vision tower's encoder layers where they train) recompute as `policy` says. Call it after the
    Trainer has turned checkpointing on: each layer calls its `_gradient_checkpointing_func` (what
    `gradient_checkpointing_enable` sets, transformers 5.17 to 5.24) at every checkpointed call."""
    if policy == "full":
        return
    for module in model.modules():
        if isinstance(module, GradientCheckpointingLayer) and module.gradient_checkpointing:
            module._gradient_checkpointing_func = selective_checkpoint
