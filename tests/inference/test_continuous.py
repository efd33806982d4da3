"""Continuous batching (`share4v.inference.continuous`, through the engine's queue): requests take the rows of
answers that have ended while the others decode, and every answer is the one the request gets alone (fp32 CPU,
compiled as eager graphs): text-only, one-image and two-image chats, answers ending at their budget, at their
end-of-sequence token and by a stream whose reader left; an error reaches every waiting answer."""

import threading

import pytest
import torch
from transformers import CompileConfig

from share4v.inference.continuous import Seat, decode_continuously
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine, _StreamRow
from share4v.inference.requests import FINISH_LENGTH
from tests.helpers import random_image

EAGER = CompileConfig(backend="eager")  # dynamo's capture without inductor's code generation: seconds on a CPU


def greedy(tokens: int) -> GenerationParams:
    return GenerationParams(temperature=0, max_new_tokens=tokens)


@pytest.fixture(scope="module")
def engine(tiny):
    return Share4VEngine(*tiny, compile_decode=EAGER)


def alone(engine: Share4VEngine, chat: Chat, tokens: int) -> list[int]:
    (completion,) = engine.complete([chat], greedy(tokens))  # a fixed batch of one: `fast_greedy.greedy_decode`
    return completion.token_ids


class CountingStep:
    """The engine's greedy step, counting its calls; `at` runs a callback before a given call."""

    def __init__(self, step, at: dict | None = None):
        self.step, self.calls, self.at = step, 0, at or {}

    def __getattr__(self, name):
        return getattr(self.step, name)

    def __call__(self, *inputs):
        self.calls += 1
        if self.calls in self.at:
            self.at.pop(self.calls)()
        return self.step(*inputs)


def test_requests_join_rows_that_ended_and_answer_as_alone(engine):
    """The module alone: two seats start (the longer prompt first), three join as rows end (by budget, and by an
    end-of-sequence token), mid-decode; each writes its answer alone, in fewer steps than one after another."""
    chats = [Chat.single("Describe both.", [random_image(1), random_image(2, (40, 80))]),
             Chat.single("Tell me a story."), Chat.single("What is here?", [random_image(3)]),
             Chat.single("Hi."), Chat.single("And this one?", [random_image(4, (90, 30))])]  # fmt: skip
    budgets = [14, 3, 5, 4, 6]
    expected = [alone(engine, chat, budget) for chat, budget in zip(chats, budgets, strict=True)]
    eos = expected[2][2]  # the third seat ends at its own third token, by end of sequence
    expected[2] = expected[2][: expected[2].index(eos) + 1]
    requests = [engine.encode(chat) for chat in chats]
    answers: dict[int, list[int]] = {}
    end = engine.tokenizer.eos_token_id  # the others end as they do alone (the answers leave it out)
    seats = [Seat(request.prompt_tokens, budget, eos if index == 2 else end,
                  lambda tokens, index=index: answers.__setitem__(index, [t for t in tokens if index == 2 or t != end]),
                  request=request)
             for index, (request, budget) in enumerate(zip(requests, budgets, strict=True))]  # fmt: skip
    waiting, joins = list(seats[2:]), []

    def take(free: int, written: int, left: int) -> list[Seat]:
        fitting = [s for s in waiting if s.prompt_len <= written and s.budget - 1 <= left][:free]
        for seat in fitting:
            waiting.remove(seat)
            joins.append((seats.index(seat), written))
        return fitting

    def embed(batch):
        return engine._prompt_embeddings(engine.collate([seat.request for seat in batch]))

    engine._make_greedy_step()
    step = CountingStep(engine._greedy_step)
    longest = max(request.prompt_tokens for request in requests)
    with torch.inference_mode():
        cache = engine._static_cache(2, longest + max(budgets) + 64)
        steps = decode_continuously(engine.model, step, cache, engine._cache_shape[1], seats[:2], embed, take)
    assert [answers[index] for index in range(5)] == expected
    assert not waiting and [index for index, _ in joins] == [2, 3, 4]
    first_prompt = requests[0].prompt_tokens
    assert all(written > first_prompt for _, written in joins)  # every one joined while the first seat decoded
    assert steps == step.calls == budgets[0] - 1  # the longest answer's steps: the others fit in beside it
    assert steps < sum(len(tokens) - 1 for tokens in expected)


def test_a_queued_request_joins_a_batch_while_it_decodes(engine):
    """Through `submit`: a batch of two decodes; one of its streams is left by its reader and a request queued
    meanwhile takes that row, ends before the other answer and equals its answer alone."""
    chats = {"long": Chat.single("Describe it.", [random_image(5)]), "left": Chat.single("Count to ten."),
             "late": Chat.single("Hello?")}  # fmt: skip
    expected = {"long": alone(engine, chats["long"], 12), "left": alone(engine, chats["left"], 12),
                "late": alone(engine, chats["late"], 4)}  # fmt: skip
    requests = {name: engine.encode(chat) for name, chat in chats.items()}
    engine._make_greedy_step()
    real_step, batches, order = engine._greedy_step, [], []
    serve, entered, release = engine._serve_continuously, threading.Event(), threading.Event()

    def held_serve(items, take):  # the first batch holds the model until the batch of two is queued
        batches.append(len(items))
        if len(batches) == 1:
            entered.set()
            release.wait(timeout=30)
        return serve(items, take)

    stream, futures = _StreamRow(), {}

    def reader_leaves_and_a_request_arrives():
        stream.cancel.set()
        futures["late"] = engine.submit(requests["late"], greedy(4))
        futures["late"].add_done_callback(lambda _: order.append("late"))

    engine._serve_continuously = held_serve
    # the third step of the batch of two (the first batch samples: generate() answers it, and nobody joins it)
    engine._greedy_step = CountingStep(real_step, at={3: reader_leaves_and_a_request_arrives})
    try:
        hold = engine.submit(
            engine.encode(Chat.single("Hold on.")), GenerationParams(temperature=0.7, max_new_tokens=2)
        )
        assert entered.wait(timeout=30)
        futures["long"] = engine.submit(requests["long"], greedy(12))
        futures["long"].add_done_callback(lambda _: order.append("long"))
        futures["left"] = engine.submit(requests["left"], greedy(12), stream=stream)
        release.set()
        hold.result(timeout=120)
        answers = {name: futures[name].result(timeout=120) for name in ("long", "left")}
        answers["late"] = futures["late"].result(timeout=120)
    finally:
        del engine._serve_continuously
        engine._greedy_step = real_step
    assert batches == [1, 2]  # the late request ran in the batch of two, not a batch of its own
    assert answers["long"].token_ids == expected["long"] and answers["long"].finish_reason == FINISH_LENGTH
    assert answers["late"].token_ids == expected["late"]
    left = answers["left"].token_ids
    assert left and len(left) < 12 and expected["left"][: len(left)] == left  # the row stopped when its reader left
    assert order == ["late", "long"]  # the late request took the freed row and ended while the other decoded
    assert stream.closed.is_set()


def test_an_error_while_decoding_reaches_every_answer_and_stream(engine):
    requests = [engine.encode(Chat.single(f"Question {index}?")) for index in range(2)]
    stream = _StreamRow()
    engine._make_greedy_step()
    real_step = engine._greedy_step

    def broken():
        raise RuntimeError("the device fell over")

    engine._greedy_step = CountingStep(real_step, at={2: broken})
    try:
        items = [(requests[0], greedy(6), _running(), None), (requests[1], greedy(6), _running(), stream)]
        assert engine._serve_continuously(items, lambda fits, free: [])
    finally:
        engine._greedy_step = real_step
    for _, _, future, _ in items:
        with pytest.raises(RuntimeError, match="the device fell over"):
            future.result(timeout=10)
    assert stream.closed.is_set() and stream.batch_over


def test_a_batch_the_loop_cannot_take_is_left_to_the_fixed_path(engine, tiny):
    sampled = GenerationParams(temperature=0.7, max_new_tokens=4)
    item = (engine.encode(Chat.single("Hi?")), sampled, _running(), None)
    assert engine._serve_continuously([item], lambda fits, free: []) is False
    plain = Share4VEngine(*tiny)  # no compiled decoding on the CPU by default: generate() answers
    assert plain._serve_continuously([(item[0], greedy(4), _running(), None)], lambda fits, free: []) is False


def _running():
    from concurrent.futures import Future

    future = Future()
    future.set_running_or_notify_cancel()
    return future


def test_waiting_greedy_requests_of_any_length_start_one_batch_or_fall_back_by_settings(engine, monkeypatch):
    """Queued greedy requests with different `max_new_tokens` start one continuous batch; where no static cache
    fits, the same queue runs them as fixed batches of equal settings, each with its own budget."""
    chats = [Chat.single(f"Item {index}, please.") for index in range(3)]
    budgets = [3, 7, 5]
    expected = [alone(engine, chat, budget) for chat, budget in zip(chats, budgets, strict=True)]
    serve, batches, ran = engine._serve_continuously, [], []
    entered, release = threading.Event(), threading.Event()

    def held_serve(items, take):
        batches.append(len(items))
        if len(batches) == 1:
            entered.set()
            release.wait(timeout=30)
        return serve(items, take)

    for no_cache in (False, True):
        batches.clear()
        entered.clear()
        release.clear()
        monkeypatch.setattr(engine, "_serve_continuously", held_serve)
        if no_cache:
            monkeypatch.setattr(engine, "_static_cache", lambda rows, positions: None)
            monkeypatch.setattr(engine, "_run", lambda batch, params, streams=(), run=engine._run: ran.append(params)
                                or run(batch, params, streams))  # fmt: skip
        hold = engine.submit(engine.encode(Chat.single("Wait.")), GenerationParams(temperature=0.7, max_new_tokens=2))
        assert entered.wait(timeout=30)
        futures = [
            engine.submit(engine.encode(chat), greedy(budget)) for chat, budget in zip(chats, budgets, strict=True)
        ]
        release.set()
        hold.result(timeout=120)
        assert [future.result(timeout=120).token_ids for future in futures] == expected
        assert batches == [1, 3]  # the three waited, and left the queue together
    assert [params.max_new_tokens for params in ran] == [2, 3, 7, 5]  # the sampled one, then one fixed batch each
