"""inference/continuous.py

Decoding in which waiting requests join a batch while it decodes (continuous batching), for the engine's
queue (`Share4VEngine.submit` and `stream`). The batch's rows share one static KV cache and one compiled step, as
in `fast_greedy.greedy_decode`. When a row's answer has ended (its end-of-sequence token, its token budget, a stop
string that the host finds in its text as it reads each token, or a stream whose reader left), a waiting request
takes the row: its prompt runs into a scratch cache (with those
joining at the same step, left-padded together), and its keys and values are copied into the row so that the
prompt ends where the batch writes next. The row's positions before that are masked out, as left padding is. From
the next step on it decodes with the others. A request whose prompt pass fails gets its error; the batch goes on.

Each greedy answer is the one the request gets alone, up to rounding: its prompt pass and its steps see its own
tokens at its own positions (rotary positions come from its mask, not from the cache slot), the masked slots count
for nothing, and greedy decoding takes the arg-max per row. fp32 tests on the CPU check the tokens exactly
(tests/inference/test_continuous.py); on a GPU, attention over a longer cache rounds differently, which can flip a
near-tie (benchmarks/check_continuous.py).

A seat with `sampling` draws its tokens with its own settings from those same logits (`RowSampling`: greedy and
sampled requests of any settings share a batch). Its draws come from the one random generator that the whole batch
draws from, so which tokens it gets depends on what else decodes; each token is drawn from the distribution that
`generate` would draw it from. Rows whose seat has ended (or that nobody holds) take their arg-max, so a batch goes
back to the greedy step once its last sampled answer has ended.

A request can take a row only where it fits: its prompt no longer than the positions written so far (it ends where
the batch writes next), and its whole token budget within the cache's positions left. The engine gives a batch
that may take requests `JOIN_ROOM` positions more than its first rows need.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, StaticCache

from share4v.inference.fast_greedy import LOOKBEHIND, GreedyStep, begin
from share4v.inference.sampling import RowSampling, Sampling

JOIN_ROOM = 256  # cache positions a batch that takes requests has beyond what its first rows need


@dataclass(eq=False)
class Seat:
    """One request's place in a continuous batch: how long its prompt is, how many tokens it may write, and what
    to do with them. `on_token` gets each new token and returns False to stop the answer there (a stream whose
    reader left; the token is dropped); `ends` gets the answer's tokens after each new one and returns True where
    they end it (a stop string that the token completed; the token is kept); `on_end` gets the answer's tokens once
    it has ended (with the end-of-sequence token where it ended so)."""

    prompt_len: int
    budget: int
    eos_token_id: int | None
    on_end: Callable[[list[int]], None]
    on_token: Callable[[int], bool] | None = None
    on_error: Callable[[BaseException], None] | None = None  # its prompt pass failed (it never decoded)
    ends: Callable[[list[int]], bool] | None = None  # whether its tokens so far end the answer (a stop string)
    sampling: Sampling | None = None  # how its tokens are drawn (None: the arg-max)
    request: Any = None  # what the caller seats (its `embed` reads it)
    tokens: list[int] = field(default_factory=list)
    queued: int = 0  # tokens of this seat queued on the device (read or not)
    finished: bool = False

    @property
    def decoding(self) -> bool:
        """Whether the seat still needs steps."""
        return not self.finished and self.queued < self.budget

    def accept(self, token: int) -> None:
        if self.finished:
            return
        if self.on_token is not None and not self.on_token(token):
            self.finish()
            return
        self.tokens.append(token)
        if (
            token == self.eos_token_id
            or len(self.tokens) >= self.budget
            or (self.ends is not None and self.ends(self.tokens))
        ):
            self.finish()

    def finish(self) -> None:
        self.finished = True
        self.on_end(self.tokens)

    def fail(self, error: BaseException) -> None:
        self.finished = True
        if self.on_error is not None:
            self.on_error(error)


Embed = Callable[[Sequence[Seat]], tuple[torch.Tensor, torch.Tensor]]  # seats → left-padded embeddings, mask
Take = Callable[[int, int, int], list[Seat]]  # (free rows, positions written, positions left) → seats that fit


def decode_continuously(
    step: GreedyStep,
    cache: StaticCache,
    cache_len: int,
    seats: Sequence[Seat],
    embed: Embed,
    take: Take,
    lookbehind: int | None = None,
) -> int:
    """Decode `seats` (one cache row each; `cache` holds `len(seats)` rows of `cache_len` positions and is reset
    here) greedily, seating the requests `take` hands over in rows whose answer has ended while another row still
    decodes, until every seat has ended. `take(free, written, left)` returns at most `free` seats whose prompt is at
    most `written` positions and whose budget is at most `left` + 1 tokens. Each seat's tokens are its arg-max or,
    with `sampling`, drawn so. Returns the compiled steps run."""
    embeds, attention = embed(seats)
    rows, prompt = attention.shape
    if prompt + max(seat.budget for seat in seats) - 1 > cache_len:
        raise ValueError(f"a cache of {cache_len} positions cannot hold the prompts and budgets of {rows} seats")
    device = embeds.device
    mask, positions, token = begin(step, cache, cache_len, embeds, attention, _draw(seats))
    position, cache_position, written = positions[:, -1:] + 1, torch.tensor([prompt], device=device), prompt
    owners: list[Seat | None] = list(seats)
    for seat in seats:
        seat.queued = 1
    pending = deque([_Queued.of(list(owners), token)])
    if lookbehind is None:
        lookbehind = LOOKBEHIND if device.type == "cuda" else 0
    steps = 0
    while True:
        free = [row for row, seat in enumerate(owners) if seat is None or not seat.decoding]
        # requests join while others decode; once none does, the batch ends, and the queue starts a new one from
        # all that wait (one row would otherwise take them one by one)
        joined = take(len(free), written, cache_len - written) if free and len(free) < rows else []
        if joined:
            rows_taken = free[: len(joined)]
            try:
                _seat(step, cache, embed(joined), rows_taken, written, mask, position, token, _draw(joined))
            except Exception as err:  # these requests get the error; their rows stay free, the others decode on
                for seat in joined:
                    seat.fail(err)
            else:
                for row, seat in zip(rows_taken, joined, strict=True):
                    owners[row], seat.queued = seat, 1
                seated = [seat if row in rows_taken else None for row, seat in enumerate(owners)]
                pending.append(_Queued.of(seated, token))
        decoding = [seat if seat is not None and seat.decoding else None for seat in owners]
        if any(decoding):
            token = step(token, position, cache_position, mask, cache, _draw(owners))
            position += 1
            cache_position += 1
            written, steps = written + 1, steps + 1
            for seat in decoding:
                if seat is not None:
                    seat.queued += 1
            pending.append(_Queued.of(decoding, token))
        while pending and (len(pending) > lookbehind or not any(decoding)):
            record = pending.popleft()
            for seat, new in zip(record.owners, record.tokens(), strict=True):
                if seat is not None:
                    seat.accept(new)
        if not joined and not any(decoding):
            return steps


def _seat(
    step: GreedyStep,
    cache: StaticCache,
    prompts: tuple[torch.Tensor, torch.Tensor],
    rows: list[int],
    written: int,
    mask: torch.Tensor,
    position: torch.Tensor,
    token: torch.Tensor,
    sampling: Sampling | RowSampling | None = None,
) -> None:
    """Run the joining prompts (left-padded embeddings and mask) into a scratch cache, copy their keys and values
    into `rows` of `cache` so that they end at `written`, and set those rows' mask, next position and next token
    (the arg-max, or drawn with `sampling`) in place (the step reads them from there)."""
    embeds, attention = prompts
    length = attention.shape[1]
    if length > written:
        raise ValueError(f"a prompt of {length} positions cannot end at position {written}")
    positions = (attention.long().cumsum(-1) - 1).clamp(min=0)
    scratch = DynamicCache()
    first = step.prompt(embeds, attention, positions, scratch, sampling)  # as the batch's own prompts ran
    index = torch.tensor(rows, device=embeds.device)
    span = slice(written - length, written)
    for layer, joined in zip(cache.layers, scratch.layers, strict=True):
        # full-length layers, slot i holding position i of the row (no sliding window): what the copy assumes
        if (
            getattr(layer, "is_sliding", False)
            or layer.keys.shape[2] != mask.shape[1]
            or joined.keys.shape[2] != length
        ):
            raise ValueError("continuous batching needs full-length static cache layers (no sliding window)")
        layer.keys[index, :, span] = joined.keys
        layer.values[index, :, span] = joined.values
    row_mask = torch.zeros((len(rows), mask.shape[1]), dtype=mask.dtype, device=mask.device)
    row_mask[:, span] = attention
    row_mask[:, written:] = 1
    mask[index] = row_mask
    position[index] = positions[:, -1:] + 1
    token[index] = first


def _draw(seats: Sequence[Seat | None]) -> Sampling | RowSampling | None:
    """How the rows of `seats` draw their next tokens: a decoding seat's own way, every other row (nobody's, or
    an ended answer's) its arg-max."""
    return RowSampling.of([seat.sampling if seat is not None and seat.decoding else None for seat in seats])


@dataclass
class _Queued:
    """One step's new tokens, with the seat each row's token belongs to (None: a row nobody waits on), on their way
    to the host (on a GPU: copied without waiting, with an event to wait on when they are read)."""

    owners: list[Seat | None]
    token: torch.Tensor
    event: torch.cuda.Event | None

    @classmethod
    def of(cls, owners: list[Seat | None], token: torch.Tensor) -> _Queued:
        if token.device.type != "cuda":
            return cls(owners, token.clone(), None)
        host = torch.empty(token.shape, dtype=token.dtype, pin_memory=True)
        host.copy_(token, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        return cls(owners, host, event)

    def tokens(self) -> list[int]:
        if self.event is not None:
            self.event.synchronize()  # only this older step: the steps queued after it keep the GPU busy
        return self.token[:, 0].tolist()
