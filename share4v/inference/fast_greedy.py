"""inference/fast_greedy.py

Greedy decoding for the engine's batches: the prompt runs once (images spliced in) into the engine's static KV
cache (through the fused layers, compiled with dynamic shapes, where the step is fused: `GreedyStep.prompt`), then
one compiled graph per step runs the model on the last tokens and takes the arg-max (CUDA graphs under inductor's
"reduce-overhead"), and the host looks `LOOKBEHIND` steps back to learn whether every row has ended, so it never
waits for the step it has just queued. Rows end on the end-of-sequence token on the device; a stop string is found
by the host in each step's tokens as it reads them (`on_tokens`), while the device goes on.

Why not transformers' `generate` with the same compiled step (which the engine uses for everything else): its
per-step host work (input preparation, logits processors, stopping criteria) and its wait on the device at every
step, to know whether to go on, leave the GPU idle between steps. Measured at 7B shape on an H200: 196 decode tok/s
at batch 1, 1.27x transformers' own static-cache compiled `generate` in the same run
(benchmarks/results/2026-11-26-h200-generate-fast-greedy.json, docs/Performance.md).

Sampled batches (`sampling`, `share4v.inference.sampling`) run the same loop over a second compiled step that
returns the last logits; the draw (transformers' warpers, then `torch.multinomial`) runs outside the graph, as in
`generate`, so that from the same random state the loop writes `generate`'s sampled tokens (CPU tests).

The answers are `generate`'s (with an fp8 cache, `kv_fp8`, the same computation over keys and values rounded to
e4m3: not `generate`'s): the same prompt pass (positions from the attention mask, the same cache contents, the
last position's logits; the fused pass equals the model's own to rounding: 1e-5 in the fp32 tests), the same
step, arg-max; a row that has ended writes the padding id and the batch stops where all have ended, as in `generate`
(the few steps queued past that point are dropped).
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import CompileConfig, StaticCache

from share4v.inference.fused_llama import FusedLlama, compile_prompt_layer
from share4v.inference.sampling import RowSampling, Sampling

LOOKBEHIND = 2  # steps the host may run ahead of what it knows has ended


class GreedyStep:
    """The compiled one-token step of one model: last tokens → next tokens, the arg-max of the last logits (one
    compiled function), or, for sampled batches, a draw from them (a second compiled function returns the logits;
    the draw runs outside its graph). Get it with `for_model`, so that every engine over a model shares its compiled
    code (CUDA graphs are recorded per thread: each engine's decoding thread records its own).

    `fused`: run the model through `share4v.inference.fused_llama` (q/k/v and gate/up as one product each) where its
    LLM is a plain Llama; elsewhere, and by default, the model's own forward. `fused_prompt`: with `fused`, the
    prompt pass (`prompt`) runs the fused layers too, through `prompt_layer` compiled with the batch size and length
    dynamic (`fused_llama.compile_prompt_layer`; the step's backend, not its mode: no CUDA graphs under inductor):
    one graph serves every layer, batch size and prompt length, except that batch size 1, a one-token prompt and a
    batch without padding (causal attention, no mask) get one each (torch specializes sizes 0 and 1).
    `kv_fp8` (needs both): the cache holds keys and values as e4m3 bytes (`share4v.inference.fp8_cache`). Every
    step wraps the same functions, whose compiled graphs torch counts together, function by function (8 at most by
    default, then it runs uncompiled): the prompt pass takes up to 3 for each model shape and cache dtype, so a
    process that decodes with three differently shaped models, or two with both cache dtypes, reaches that
    limit."""

    def __init__(
        self,
        model: torch.nn.Module,
        options: dict,
        fused: bool = False,
        fused_prompt: bool = True,
        kv_fp8: bool = False,
    ):
        if kv_fp8 and not (fused and fused_prompt):
            raise ValueError("an fp8 KV cache needs the fused step and the fused prompt pass")
        self.model = model
        self.options = options
        self.wants_fused = fused
        self.fused_prompt = fused_prompt
        self.kv_fp8 = kv_fp8
        self.fused: FusedLlama | None = None  # laid out by `check_weights`, on the thread that decodes
        self.compiled = torch.compile(self._step, **options)
        self.compiled_logits = torch.compile(self._logits, **options)  # for sampled batches: graphs of its own
        self.prompt_layer = compile_prompt_layer(options.get("backend", "inductor"))

    @classmethod
    def for_model(
        cls,
        model: torch.nn.Module,
        config: CompileConfig,
        fused: bool = False,
        fused_prompt: bool = True,
        kv_fp8: bool = False,
    ) -> GreedyStep:
        """The model's step for `config`'s compile options (and `fused`, `fused_prompt`, `kv_fp8`), kept on the model
        itself (as transformers keeps its compiled forward), so that it lives and dies with the model."""
        options = {key: getattr(config, key) for key in ("fullgraph", "dynamic", "backend", "mode", "options")}
        steps = model.__dict__.setdefault("_share4v_greedy_steps", {})
        key = repr((sorted(options.items()), fused, fused_prompt, kv_fp8))
        if key not in steps:
            steps[key] = cls(model, options, fused, fused_prompt, kv_fp8)
        return steps[key]

    def __deepcopy__(self, memo: dict) -> GreedyStep:
        """A new step for the copy of the model (a deep copy of a model carries its steps): the compiled functions
        are bound to this step, which decodes with the original's weights."""
        model = copy.deepcopy(self.model, memo)
        return type(self)(model, self.options, self.wants_fused, self.fused_prompt, self.kv_fp8)

    def check_weights(self) -> None:
        """Before a decode, on the decoding thread: lay out the fused projections (the first time, or again when the
        model's weights or projection modules were replaced since: a step over the old ones would use stale weights;
        the step then compiles or records again for the new ones)."""
        if self.wants_fused:
            self.fused = None  # the old fused tensors can go before new ones are made
            self.fused = FusedLlama.of(self.model)
        if self.kv_fp8 and self.fused is None:
            raise ValueError(
                "an fp8 KV cache needs the fused step, which takes transformers' Llama layers with plain nn.Linear "
                "projections (not LoRA or quantized ones): use kv_cache_dtype='auto' for this model"
            )

    def _step(self, tokens, position_ids, cache_position, attention_mask, cache):
        return self._logits(tokens, position_ids, cache_position, attention_mask, cache).argmax(-1, keepdim=True)

    def _logits(self, tokens, position_ids, cache_position, attention_mask, cache):
        if self.fused is not None:
            return self.fused.logits(tokens, position_ids, cache_position, attention_mask, cache, self.kv_fp8)
        return _last_logits(self.model, attention_mask, position_ids, cache_position, cache, input_ids=tokens)

    def prompt(
        self, embeds, attention_mask, position_ids, cache, sampling: Sampling | RowSampling | None = None
    ) -> torch.Tensor:
        """The first tokens `[B, 1]` (arg-max of the last logits; with `sampling`, drawn) of left-padded prompt
        embeddings `[B, P, D]` (mask `[B, P]`, positions from it), whose keys and values go into the reset `cache`
        at positions 0..P-1."""
        fused = self.fused  # once: another engine over this model may re-lay it meanwhile (`check_weights`)
        if self.kv_fp8 and fused is None:  # the model's own forward cannot write e4m3 bytes
            raise RuntimeError("the fused layers were re-laid while this fp8-cache batch started: run it again")
        if fused is None or not self.fused_prompt:
            positions = torch.arange(attention_mask.shape[1], device=embeds.device)
            logits = _last_logits(self.model, attention_mask, position_ids, positions, cache, inputs_embeds=embeds)
        else:
            logits = fused.prompt_logits(embeds, position_ids, attention_mask, cache, self.prompt_layer, self.kv_fp8)
        return logits.argmax(-1, keepdim=True) if sampling is None else sampling.draw(logits)

    def __call__(
        self,
        tokens,
        position_ids,
        cache_position,
        attention_mask,
        cache,
        sampling: Sampling | RowSampling | None = None,
    ) -> torch.Tensor:
        """Next tokens `[B, 1]` after last tokens `[B, 1]`: the arg-max (one compiled graph); with `sampling`, a
        draw from the last logits (the compiled logits, then the draw outside the graph; a `RowSampling` draws
        each row with its own settings)."""
        torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are read (cloned) already
        if sampling is None:
            return self.compiled(tokens, position_ids, cache_position, attention_mask, cache).clone()
        logits = self.compiled_logits(tokens, position_ids, cache_position, attention_mask, cache)
        return sampling.draw(logits)


def greedy_decode(
    step: GreedyStep,
    cache: StaticCache,
    cache_len: int,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int,
    on_tokens: Callable[[list[int]], list[int]] | None = None,
    lookbehind: int | None = None,
    sampling: Sampling | None = None,
) -> torch.Tensor:
    """New tokens `[B, steps]` for left-padded prompt embeddings `[B, P, D]` with their mask `[B, P]`, as
    `generate` writes them: a row that has ended (its end-of-sequence token, or stopped) gets padding ids, and
    decoding stops once every row has ended (`steps`) or at `max_new_tokens`. `cache` holds `cache_len` >=
    P + `max_new_tokens` positions and is reset here. Greedy, or with `sampling` each token drawn as `generate`
    draws it.

    `on_tokens`, when given, receives each step's new tokens (one per row, `lookbehind` steps late) and returns rows
    to stop (a stop string that the step's token completed, a stream whose reader left): as in `generate`, those
    rows hold padding after that step (the steps already queued past it are overwritten), and decoding stops once
    every row has ended so. `lookbehind`: how many steps the host runs ahead (default `LOOKBEHIND` on a GPU, 0 on
    the CPU, where every read waits anyway)."""
    rows, prompt = attention_mask.shape
    if prompt + max_new_tokens > cache_len:
        raise ValueError(f"a cache of {cache_len} positions cannot hold {prompt} + {max_new_tokens} new tokens")
    device = inputs_embeds.device
    mask, positions, token = begin(step, cache, cache_len, inputs_embeds, attention_mask, sampling)
    tokens = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    ended = torch.zeros(rows, dtype=torch.bool, device=device)
    position, cache_position = positions[:, -1:] + 1, torch.tensor([prompt], device=device)
    pending: deque[_Written] = deque()
    over: set[int] = set()  # with `on_tokens`: the rows the host knows to have ended by the step it read last
    if lookbehind is None:
        lookbehind = LOOKBEHIND if device.type == "cuda" else 0
    # sampled, with a look-behind: the random state after each step's draw, to undo the draws of the steps queued
    # past the end (generate draws only for the steps it returns, so later draws continue from the same state)
    states: dict[int, torch.Tensor] = {}
    for index in range(max_new_tokens):
        if index > 0:
            token = step(token, position, cache_position, mask, cache, sampling)
            position += 1
            cache_position += 1
        token = token.masked_fill(ended[:, None], pad_token_id)  # as generate: ended rows write padding
        tokens[:, index : index + 1] = token
        if eos_token_id is not None:
            ended |= token[:, 0] == eos_token_id
        pending.append(_Written.queue(index, token, ended))
        if sampling is not None and lookbehind:
            states[index] = _random_state(device)
        while len(pending) > lookbehind or (index == max_new_tokens - 1 and pending):
            written = pending.popleft()
            state = states.pop(written.index, None)
            all_ended = written.all_ended()
            if on_tokens is not None:
                read = written.tokens()
                over.update(row for row, new in enumerate(read) if new == eos_token_id)
                if stop := on_tokens(read):
                    ended[stop] = True
                    # as generate: padding from the step after the one whose tokens stopped them (the steps queued
                    # since wrote theirs)
                    tokens[stop, written.index + 1 :] = pad_token_id
                    over.update(stop)
                # the device's flag for this step was taken before the host stopped rows: a row it stopped earlier
                # and the others' ends since then end the batch here too
                all_ended = all_ended or len(over) == rows
            if all_ended:
                if state is not None and index > written.index:
                    _set_random_state(state, device)
                return tokens[:, : written.index + 1]  # where generate stops; later steps were only queued
    return tokens


def begin(
    step: GreedyStep,
    cache: StaticCache,
    cache_len: int,
    embeds: torch.Tensor,
    attention: torch.Tensor,
    sampling: Sampling | RowSampling | None = None,
):
    """Before a greedy (or, with `sampling`, sampled) loop's first step: the step's weights checked, `cache` reset
    and the prompt run into it. Returns the steps' attention mask `[B, cache_len]` (the prompt's, then ones:
    causality hides the positions not written yet), the prompt's positions `[B, P]` and the first tokens `[B, 1]`."""
    rows, prompt = attention.shape
    step.check_weights()
    cache.reset()
    mask = torch.ones((rows, cache_len), dtype=attention.dtype, device=embeds.device)
    mask[:, :prompt] = attention
    positions = (attention.long().cumsum(-1) - 1).clamp(min=0)
    return mask, positions, step.prompt(embeds, attention, positions, cache, sampling)


def _last_logits(model, attention_mask, position_ids, cache_position, cache, **inputs) -> torch.Tensor:
    """The model over `inputs` (token ids or embeddings) with `cache`: each row's last logits `[B, vocabulary]`."""
    return model(
        **inputs,
        attention_mask=attention_mask,
        position_ids=position_ids,
        cache_position=cache_position,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]


def _random_state(device: torch.device) -> torch.Tensor:
    """The state of `device`'s default random generator (on a GPU read on the host, without waiting)."""
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()


def _set_random_state(state: torch.Tensor, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    else:
        torch.set_rng_state(state)


@dataclass
class _Written:
    """One step's new tokens and whether every row had ended by then, on their way to the host (on a GPU: copied
    without waiting, with an event to wait on when they are read)."""

    index: int
    token: torch.Tensor  # [B, 1]
    ended: torch.Tensor  # [] bool
    event: torch.cuda.Event | None

    @classmethod
    def queue(cls, index: int, token: torch.Tensor, ended: torch.Tensor) -> _Written:
        if token.device.type != "cuda":
            return cls(index, token, ended.all(), None)
        host_token = torch.empty(token.shape, dtype=token.dtype, pin_memory=True)
        host_token.copy_(token, non_blocking=True)
        host_ended = torch.empty((), dtype=torch.bool, pin_memory=True)
        host_ended.copy_(ended.all(), non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(index, host_token, host_ended, event)

    def _wait(self) -> None:
        if self.event is not None:
            self.event.synchronize()  # only this older step: the steps queued after it keep the GPU busy
            self.event = None

    def tokens(self) -> list[int]:
        self._wait()
        return self.token[:, 0].tolist()

    def all_ended(self) -> bool:
        self._wait()
        return bool(self.ended)
