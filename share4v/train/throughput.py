"""train/throughput.py

Useful tokens and model FLOPs of a training step, for the tokens/s and MFU the trainer logs and the benchmark
reports. Useful tokens are the language model's positions that hold a sample (text + image patches), never padding;
FLOPs are those of the language model on those tokens (forward + backward: 6 per parameter per token, plus causal
attention), the frozen or trained vision tower not counted. That is the usual model-FLOPs convention: it counts the
weight gradients of every LLM layer and the output projection at every position, so it overstates the work of a
frozen or LoRA-tuned LLM (up to 1.5x) and slightly that of the loss computed only at target positions. MFU is taken
against the bf16 matmul rate measured on the device (not the datasheet's), so it reads higher than against a spec.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from share4v.constants import IMAGE_TOKEN_INDEX


def sample_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor, image_tokens_per_image: int) -> list[int]:
    """Each row's length in the language model: its text tokens with every `<image>` standing for its patches."""
    images = ((input_ids == IMAGE_TOKEN_INDEX) & attention_mask.bool()).sum(dim=1)
    lengths = attention_mask.sum(dim=1) + images * (image_tokens_per_image - 1)
    return lengths.tolist()


def llm_parameters(config: Any) -> int:
    """Parameters that multiply every token: the decoder layers and the output projection (not the embedding)."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)  # q, o; k, v
    mlp = 3 * hidden * config.intermediate_size
    return layers * (attention + mlp) + hidden * config.vocab_size


def training_flops(config: Any, lengths: Sequence[int]) -> float:
    """Forward + backward FLOPs of the language model over samples of `lengths` tokens each (causal attention)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    attention_width = heads * head_dim * config.num_hidden_layers
    return 6.0 * llm_parameters(config) * sum(lengths) + 6.0 * attention_width * sum(n * n for n in lengths)


def measure_matmul_peak(device: torch.device, size: int = 8192, repeats: int = 10) -> float:
    """bf16 matmul FLOP/s measured on `device` (CUDA): the ceiling MFU is reported against.

    Its random operands come from a generator of its own: the trainer measures at its first step, which on a resumed
    run comes after the checkpoint's RNG states are restored, and drawing from the device's default generator then
    would change every later dropout mask."""
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((size, size), device=device, dtype=torch.bfloat16, generator=generator)
    b = torch.randn((size, size), device=device, dtype=torch.bfloat16, generator=generator)
    for _ in range(3):
        a @ b
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2.0 * size**3 * repeats / (time.perf_counter() - start)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class ThroughputMeter:
    """Counts useful tokens and FLOPs between two log lines and turns them into per-GPU rates."""

    def __init__(self, config: Any, peak_flops: float | None = None):
        self.config, self.peak_flops = config, peak_flops
        self.tokens, self.flops = 0, 0.0
        self.since = time.perf_counter()

    def add(self, lengths: Sequence[int]) -> None:
        self.tokens += sum(lengths)
        self.flops += training_flops(self.config, lengths)

    def rates(self) -> dict[str, float]:
        """`tokens_per_second` (per process) and, when the peak is known, `mfu`; then starts a new interval."""
        elapsed = max(time.perf_counter() - self.since, 1e-9)
        rates = {"tokens_per_second": round(self.tokens / elapsed, 1)}
        if self.peak_flops:
            rates["mfu"] = round(self.flops / elapsed / self.peak_flops, 4)
        self.tokens, self.flops, self.since = 0, 0.0, time.perf_counter()
        return rates
