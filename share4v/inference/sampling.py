"""inference/sampling.py

The draw of a sampled token, as transformers' `generate` makes it (`do_sample=True`, one beam): the last logits in
fp32, warped by temperature, then top-k, then top-p (transformers' own warpers, each only where `generate` adds it),
then one `torch.multinomial` draw from their softmax. The engine's own decoding loop (`fast_greedy`) draws its
sampled tokens here, so that, from the same random state and the same logits, it writes the tokens `generate`
writes (the tests compare them on the CPU).

`RowSampling` draws each row of a batch with its own settings (or takes its arg-max): the engine's continuous
batches seat greedy and sampled requests of any settings together. Rows with equal settings are drawn together,
one `torch.multinomial` call per group; a batch whose rows all share one setting is drawn as `generate` draws it.

`Sampling.of` gives None where the model's generation config asks `generate` for more than these warpers (min-p,
typical, epsilon or eta sampling, top-h, renormalized logits) or for another mode (assisted or DoLa decoding,
several sequences a prompt, a time limit): `generate` runs such batches.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import GenerationConfig
from transformers.generation import GenerationMode
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

# `generate`'s top-k where neither the call nor the checkpoint's generation config sets one
GENERATE_DEFAULT_TOP_K = 50
# the settings of a generation config, beyond those that change no arg-max (the engine checks those), that make
# `generate` warp or renormalize the sampled logits unless they hold one of these values
_NEUTRAL_WARPERS = {
    "min_p": (None,), "typical_p": (None, 1.0), "epsilon_cutoff": (None, 0.0), "eta_cutoff": (None, 0.0),
    "top_h": (None,), "renormalize_logits": (None, False), "remove_invalid_values": (None, False),
}  # fmt: skip


@dataclass(frozen=True)
class Sampling:
    """One batch's sampling settings: `temperature` > 0, `top_k` (0: none), `top_p` in (0, 1]."""

    temperature: float
    top_k: int
    top_p: float

    @classmethod
    def of(cls, config: GenerationConfig, temperature: float, top_p: float | None) -> Sampling | None:
        """The settings `generate` samples with for `temperature` and `top_p` (None: 1.0) over the generation
        `config` (its top-k, else `generate`'s default); None where `config` sets another warper or makes
        `generate` do more than sample one sequence a prompt."""
        if any(getattr(config, name, None) not in neutral for name, neutral in _NEUTRAL_WARPERS.items()):
            return None
        sampled = copy.deepcopy(config)
        sampled.update(do_sample=True, num_beams=1, temperature=temperature)
        if (
            sampled.get_generation_mode() != GenerationMode.SAMPLE
            or getattr(config, "num_return_sequences", None) not in (None, 1)
            or getattr(config, "max_time", None) is not None
        ):
            return None
        top_k = getattr(config, "top_k", None)
        return cls(temperature, GENERATE_DEFAULT_TOP_K if top_k is None else top_k, 1.0 if top_p is None else top_p)

    @functools.cached_property
    def warpers(self) -> LogitsProcessorList:
        """transformers' warpers for these settings, in `generate`'s order, each only where `generate` adds it."""
        warpers = LogitsProcessorList()
        if self.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(self.temperature))
        if self.top_k:
            warpers.append(TopKLogitsWarper(top_k=self.top_k, min_tokens_to_keep=1))
        if self.top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p=self.top_p, min_tokens_to_keep=1))
        return warpers

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """Next tokens `[B, 1]` drawn from last logits `[B, vocabulary]`."""
        # a copy in fp32, as generate takes the logits (the step's output is the CUDA graph's, reused by its next run)
        scores = self.warpers(None, logits.to(torch.float32, copy=True))  # these warpers read no tokens so far
        return torch.multinomial(scores.softmax(dim=-1), num_samples=1)


@dataclass(frozen=True)
class RowSampling:
    """Each row's own settings (None: the arg-max) for one step of a batch; get it with `of`."""

    rows: tuple[Sampling | None, ...]

    @classmethod
    def of(cls, rows: Sequence[Sampling | None]) -> Sampling | RowSampling | None:
        """The draw for rows with these settings: None where every row takes its arg-max (the greedy step), the
        one `Sampling` where every row has it (drawn as `generate` draws a batch), else a `RowSampling`."""
        settings = set(rows)
        if settings == {None}:
            return None
        if len(settings) == 1:
            return rows[0]
        return cls(tuple(rows))

    def draw(self, logits: torch.Tensor) -> torch.Tensor:
        """Next tokens `[B, 1]` from last logits `[B, vocabulary]`: each sampled row drawn with its settings (the
        rows of one setting in one draw, settings in the order of their first row), the others' arg-max."""
        tokens = logits.argmax(-1, keepdim=True)
        groups: dict[Sampling, list[int]] = {}
        for row, sampling in enumerate(self.rows):
            if sampling is not None:
                groups.setdefault(sampling, []).append(row)
        for sampling, rows in groups.items():
            index = _on_device(rows, logits.device)
            tokens[index] = sampling.draw(logits[index])
        return tokens


def _on_device(rows: list[int], device: torch.device) -> torch.Tensor:
    """`rows` as an index tensor on `device`, copied from pinned memory without waiting on a GPU (a plain copy
    would make the host wait for the step it has just queued)."""
    index = torch.tensor(rows, dtype=torch.long)
    if device.type != "cuda":
        return index.to(device)
    return index.pin_memory().to(device, non_blocking=True)
