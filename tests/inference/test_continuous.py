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


@pytest.mark.parametrize("lookbehind", [0, 2])
def test_requests_join_rows_that_ended_and_answer_as_alone(engine, lookbehind):
    """The module alone: three seats start (the longest prompt first); two rows end at the same step and a text
    and an image prompt join them together; more join as rows end (by budget, by an end-of-sequence token), all
    mid-decode, with the host reading tokens at once or two steps late; a joiner whose prompt pass fails gets the
    error and the others go on. Each writes its answer alone, in fewer steps than one after another."""
    chats = [Chat.single("Describe both.", [random_image(1), random_image(2, (40, 80))]),
             Chat.single("Tell me a story."), Chat.single("Count."), Chat.single("What is here?", [random_image(3)]),
             Chat.single("Hi."), Chat.single("Broken."),
             Chat.single("And this one?", [random_image(4, (90, 30))])]  # fmt: skip
    budgets = [16, 3, 3, 5, 4, 2, 6]
    expected = [alone(engine, chat, budget) for chat, budget in zip(chats, budgets, strict=True)]
    eos = expected[3][2]  # the fourth seat ends at its own third token, by end of sequence
    expected[3] = expected[3][: expected[3].index(eos) + 1]
    requests = [engine.encode(chat) for chat in chats]
    answers: dict[int, list[int] | BaseException] = {}
    end = engine.tokenizer.eos_token_id  # the others end as they do alone (the answers leave it out)
    seats = [Seat(request.prompt_tokens, budget, eos if index == 3 else end,
                  lambda tokens, index=index: answers.__setitem__(index, [t for t in tokens if index == 3 or t != end]),
                  on_error=lambda error, index=index: answers.__setitem__(index, error), request=request)
             for index, (request, budget) in enumerate(zip(requests, budgets, strict=True))]  # fmt: skip
    waiting, joins = list(seats[3:]), []

    def take(free: int, written: int, left: int) -> list[Seat]:
        fitting = [s for s in waiting if s.prompt_len <= written and s.budget - 1 <= left][:free]
        for seat in fitting:
            waiting.remove(seat)
        joins.append(([seats.index(seat) for seat in fitting], written)) if fitting else None
        return fitting

    def embed(batch):
        if any(seat is seats[5] for seat in batch):
            raise RuntimeError("this prompt cannot be embedded")
        return engine._prompt_embeddings(engine.collate([seat.request for seat in batch]))

    engine._make_greedy_step()
    step = CountingStep(engine._greedy_step)
    longest = max(request.prompt_tokens for request in requests)
    with torch.inference_mode():
        cache = engine._static_cache(3, longest + max(budgets) + 64)
        steps = decode_continuously(step, cache, engine._cache_shape[1], seats[:3], embed, take, lookbehind=lookbehind)
    assert isinstance(answers.pop(5), RuntimeError)
    expected.pop(5)
    assert [answers[index] for index in sorted(answers)] == expected
    assert not waiting and joins[0][0] == [3, 4]  # the two rows that ended together, taken together
    assert [index for group, _ in joins for index in group] == [3, 4, 5, 6]
    assert all(written > requests[0].prompt_tokens for _, written in joins)  # all while the first seat decoded
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
    # the third step of the batch of two (the first batch, of one row, takes nobody in)
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
    beams = GenerationParams(temperature=0, num_beams=2, max_new_tokens=4)
    item = (engine.encode(Chat.single("Hi?")), beams, _running(), None)
    assert engine._serve_continuously([item], lambda fits, free: []) is False
    sampled = GenerationParams(temperature=0.7, max_new_tokens=4)
    generate_samples = Share4VEngine(*tiny, compile_decode=EAGER, fast_sampling=False)
    assert generate_samples._serve_continuously([(item[0], sampled, _running(), None)], lambda f, n: []) is False
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


def test_a_request_that_cannot_join_is_not_passed_and_both_are_answered_after(engine):
    """First come, first served: a request whose prompt is longer than the running batch has written cannot take
    a freed row, and a younger one that could does not pass it; both then run in the next batch, as alone."""
    short = {"a": Chat.single("Count to eight."), "b": Chat.single("Say hi.")}
    late = {"x": Chat.single("Both?", [random_image(6), random_image(7, (50, 90))]), "y": Chat.single("Ok?")}
    budgets = {"a": 8, "b": 3, "x": 4, "y": 3}
    chats = {**short, **late}
    expected = {name: alone(engine, chats[name], budgets[name]) for name in chats}
    serve, batches, futures = engine._serve_continuously, [], {}
    engine._make_greedy_step()
    real_step = engine._greedy_step

    def arrive():  # at the batch's second step (row b frees after its third token)
        for name in late:
            futures[name] = engine.submit(engine.encode(late[name]), greedy(budgets[name]))

    entered, release = threading.Event(), threading.Event()

    def held_serve(items, take):  # the first batch (one row: it takes nobody in) holds the model
        batches.append(len(items))
        if len(batches) == 1:
            entered.set()
            release.wait(timeout=30)
        return serve(items, take)

    engine._serve_continuously = held_serve
    engine._greedy_step = CountingStep(real_step, at={2: arrive})
    try:
        hold = engine.submit(engine.encode(Chat.single("Wait.")), GenerationParams(temperature=0.7, max_new_tokens=2))
        assert entered.wait(timeout=30)
        for name in short:
            futures[name] = engine.submit(engine.encode(short[name]), greedy(budgets[name]))
        release.set()
        hold.result(timeout=120)
        futures["a"].result(timeout=120)
        answers = {name: futures[name].result(timeout=120).token_ids for name in chats}
    finally:
        del engine._serve_continuously
        engine._greedy_step = real_step
    assert engine.encode(late["x"]).prompt_tokens > engine.encode(short["a"]).prompt_tokens + budgets["a"]
    assert answers == expected
    assert batches == [1, 2, 2]  # x could not join a and b, y did not pass x: they ran next, together


def test_a_callback_on_an_answer_may_generate(engine):
    """Answers reach their futures off the decoding thread: a done-callback that generates does not wait for
    itself."""
    serve, entered, release, got = engine._serve_continuously, threading.Event(), threading.Event(), []

    def held_serve(items, take):
        entered.set()
        release.wait(timeout=30)
        return serve(items, take)

    engine._serve_continuously = held_serve
    try:
        future = engine.submit(engine.encode(Chat.single("Hi.")), greedy(3))
        assert entered.wait(timeout=30)  # held: the callback is in place before the answer is
        future.add_done_callback(lambda _: got.append(engine.complete([Chat.single("Again.")], greedy(2))[0]))
        release.set()
        future.result(timeout=60)
        for _ in range(6000):
            if got:
                break
            threading.Event().wait(0.01)
    finally:
        del engine._serve_continuously
    assert got and got[0].token_ids == alone(engine, Chat.single("Again."), 2)


def test_greedy_and_sampled_requests_share_a_batch_each_drawn_with_its_own_settings(engine, monkeypatch):
    """Queued requests of different settings start one continuous batch on the engine's loop (generate is never
    called), and a sampled one joins it while it decodes. Greedy rows answer as alone; a row sampled with a top-p so
    small that only the likeliest token is left writes its greedy answer; a row sampled at temperature 1 draws."""
    chats = {"greedy": Chat.single("Describe it.", [random_image(8)]), "narrow": Chat.single("Count to ten."),
             "wide": Chat.single("Tell me a story."), "late": Chat.single("And now?")}  # fmt: skip
    settings = {"greedy": greedy(10), "narrow": GenerationParams(temperature=1.0, top_p=1e-6, max_new_tokens=6),
                "wide": GenerationParams(temperature=1.0, max_new_tokens=6),
                "late": GenerationParams(temperature=1.0, top_p=1e-6, max_new_tokens=3)}  # fmt: skip
    expected = {name: alone(engine, chat, settings[name].max_new_tokens) for name, chat in chats.items()}

    def no_generate(*args, **kwargs):
        raise AssertionError("a request went to generate()")

    monkeypatch.setattr(engine.model, "generate", no_generate)
    engine._make_greedy_step()
    real_step, batches, futures = engine._greedy_step, [], {}
    serve, entered, release = engine._serve_continuously, threading.Event(), threading.Event()

    def held_serve(items, take):  # the first batch (one row) holds the model until the three are queued
        batches.append([item[1] for item in items])
        if len(batches) == 1:
            entered.set()
            release.wait(timeout=30)
        return serve(items, take)

    def arrive():  # the narrow row ends after 6 tokens; the late request waits for a row
        futures["late"] = engine.submit(engine.encode(chats["late"]), settings["late"])

    monkeypatch.setattr(engine, "_serve_continuously", held_serve)
    torch.manual_seed(0)
    hold = engine.submit(engine.encode(Chat.single("Wait.")), greedy(2))
    assert entered.wait(timeout=30)
    for name in ("greedy", "narrow", "wide"):
        futures[name] = engine.submit(engine.encode(chats[name]), settings[name])
    engine._greedy_step = CountingStep(real_step, at={4: arrive})  # the hold's one step, then the three's third
    try:
        release.set()
        hold.result(timeout=120)
        answers = {name: futures[name].result(timeout=120).token_ids for name in ("greedy", "narrow", "wide")}
        answers["late"] = futures["late"].result(timeout=120).token_ids
    finally:
        engine._greedy_step = real_step
    assert [len(batch) for batch in batches] == [1, 3]  # three settings in one batch; the late one joined it
    assert answers["greedy"] == expected["greedy"]
    assert answers["narrow"] == expected["narrow"] and answers["late"] == expected["late"]
    assert answers["wide"] != expected["wide"]  # drawn at temperature 1 (6 tokens of a near-uniform vocabulary)
