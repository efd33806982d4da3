"""causal_lm_loss.py

The next-token loss of a causal LM, computed from the last hidden states without the full-vocabulary logits.

`causal_lm_loss` is transformers' causal-LM loss (labels shifted by one, `IGNORE_INDEX` skipped, the mean over the
target tokens — or the sum over `num_items_in_batch` when the Trainer accumulates gradients) with two differences
that change no value:
- the logits are formed only at positions that have a target (in LLaVA-style data most positions are image tokens
  or instructions), and
- `linear_cross_entropy` forms them a chunk of rows at a time and computes the gradients of the hidden states and of
  the output projection in the same pass, so no `[tokens, vocabulary]` tensor is kept for the backward pass.
A packed row (several samples in one) gets no target across a sample boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from share4v.constants import IGNORE_INDEX

LOGITS_PER_CHUNK = 2**26  # elements of one fp32 logits chunk (256 MiB): rows per chunk = this // vocabulary size


def shift_targets(labels: torch.Tensor, sequence_lengths: Sequence[int] | None = None) -> torch.Tensor:
    """`[B, L]` labels → the target of every position (the next label), `IGNORE_INDEX` where none follows.

    For a packed row, the last position of each sample gets no target (the next token belongs to another sample).
    """
    targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
    if sequence_lengths is not None:
        ends = torch.tensor(sequence_lengths, device=labels.device).cumsum(0) - 1
        targets[:, ends] = IGNORE_INDEX
    return targets


def causal_lm_loss(
    hidden_states: torch.Tensor,
    lm_head: torch.nn.Linear,
    labels: torch.Tensor,
    sequence_lengths: Sequence[int] | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    fused: bool = True,
) -> torch.Tensor:
    """Next-token cross-entropy of `hidden_states` `[B, L, D]` against `labels` `[B, L]`.

    `fused=False` calls `lm_head` on the target positions and takes the cross-entropy of those logits; so do an
    output projection whose weight exists whole only inside its own forward (DeepSpeed ZeRO-3, offload hooks) and
    fp16 autocast (whose gradients, formed before the loss scale applies, would underflow).
    """
    targets = shift_targets(labels, sequence_lengths).flatten()
    rows = torch.nonzero(targets != IGNORE_INDEX).flatten()
    hidden, targets = hidden_states.flatten(0, 1)[rows], targets[rows]
    denominator = num_items_in_batch if num_items_in_batch is not None else max(rows.numel(), 1)
    if isinstance(denominator, torch.Tensor):
        denominator = denominator.to(hidden.device)
    if not (fused and _reads_weight_directly(lm_head) and _compute_dtype(hidden) != torch.float16):
        logits = lm_head(hidden).float()
        return F.cross_entropy(logits, targets, reduction="sum") / denominator
    return linear_cross_entropy(hidden, lm_head.weight, targets) * (rows.numel() / denominator)


def _reads_weight_directly(lm_head: torch.nn.Module) -> bool:
    """Whether `lm_head.weight` is the whole weight outside `lm_head`'s own forward: a plain `nn.Linear` without
    bias or hooks (DeepSpeed ZeRO-3 partitions it and gathers it in hooks; accelerate offload and LoRA wrap it)."""
    return (
        type(lm_head) is torch.nn.Linear
        and lm_head.bias is None
        and not hasattr(lm_head.weight, "ds_id")
        and not hasattr(lm_head, "_hf_hook")
        and not (lm_head._forward_hooks or lm_head._forward_pre_hooks)
    )


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the logits `hidden @ weight.T` (`[N, D]`, `[V, D]`) against `targets` `[N]`.

    Equals `F.cross_entropy(F.linear(hidden, weight).float(), targets)` (every target valid) in value and
    gradients; the matmuls run in the autocast dtype when autocast is on, as `F.linear` would.
    """
    if hidden.shape[0] == 0:  # no target in the batch: a zero that keeps the graph
        return hidden.sum() * 0.0 + weight.sum() * 0.0
    if not torch.is_grad_enabled():  # the value alone, without the gradient work
        dtype = _compute_dtype(hidden)
        loss, _, _ = _chunked_loss(hidden.to(dtype), weight.to(dtype), targets, False, False)
        return loss / hidden.shape[0]
    return _LinearCrossEntropy.apply(hidden, weight, targets)


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    device_type = tensor.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


def _chunked_loss(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, want_hidden: bool, want_weight: bool):
    """Summed cross-entropy of `h @ w.T` a chunk of rows at a time, with the gradients of the mean loss."""
    rows, vocabulary = h.shape[0], w.shape[0]
    chunk = max(1, LOGITS_PER_CHUNK // vocabulary)
    grad_hidden = torch.empty_like(h) if want_hidden else None
    grad_weight = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if want_weight else None
    loss = torch.zeros((), dtype=torch.float32, device=h.device)
    for start in range(0, rows, chunk):
        h_chunk, t_chunk = h[start : start + chunk], targets[start : start + chunk]
        logits = (h_chunk @ w.T).float()  # [c, V]
        log_norm = torch.logsumexp(logits, dim=-1)
        loss += (log_norm - logits.gather(1, t_chunk[:, None]).squeeze(1)).sum()
        if not (want_hidden or want_weight):
            continue
        grad_logits = logits.sub_(log_norm[:, None]).exp_()  # softmax, in place of the logits
        grad_logits[torch.arange(len(t_chunk), device=h.device), t_chunk] -= 1.0
        grad_logits = grad_logits.div_(rows).to(h.dtype)  # d(mean loss)/d(logits)
        if want_hidden:
            grad_hidden[start : start + chunk] = grad_logits @ w
        if want_weight:
            grad_weight += (grad_logits.T @ h_chunk).float()
    return loss, grad_hidden, grad_weight


class _LinearCrossEntropy(torch.autograd.Function):
    """Forward computes the loss and both gradients chunk by chunk; backward only scales them."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        dtype = _compute_dtype(hidden)
        loss, grad_hidden, grad_weight = _chunked_loss(
            hidden.to(dtype), weight.to(dtype), targets, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        )
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss / hidden.shape[0]

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        grad_hidden, grad_weight = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        if grad_hidden is not None:
            grad_hidden = (grad_hidden * grad_output).to(hidden_dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_output).to(weight_dtype)
        return grad_hidden, grad_weight, None
