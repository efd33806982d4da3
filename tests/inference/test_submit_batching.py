"""`Share4VEngine.submit`: requests queued while the model is busy run together as one batch, and each gets its own
answer, equal to the answer it gets alone (greedy)."""

import threading
import time

import pytest

from share4v.inference import Chat, GenerationParams, Share4VEngine

GREEDY = GenerationParams(temperature=0, max_new_tokens=6)
# A held run waits for the test to release it; this bound only ends a test that has already failed. It is long so
# that a loaded machine (CI beside other test processes) never releases the model before the queue has filled.
HOLD_SECONDS = 600


@pytest.fixture(scope="module")
def tiny_engine(tiny):
    return Share4VEngine(*tiny)


@pytest.fixture
def image_file(examples_dir):
    return str(examples_dir / "sunset.png")


def test_requests_waiting_for_the_model_run_as_one_batch_with_their_own_answers(tiny_engine, image_file):
    engine = tiny_engine
    chats = [Chat.single(f"Question {index}: what is shown?", [image_file] if index % 2 else []) for index in range(6)]
    alone = [engine.complete([chat], GREEDY)[0] for chat in chats]

    run, sizes, entered, release = engine._run, [], threading.Event(), threading.Event()

    def held_run(batch, params, streams=()):  # the first batch holds the model until the others are queued
        sizes.append(len(batch.prompt_tokens))
        if len(sizes) == 1:
            entered.set()
            release.wait(timeout=HOLD_SECONDS)
        return run(batch, params, streams)

    engine._run = held_run
    try:
        futures = [engine.submit(engine.encode(chats[0]), GREEDY)]
        assert entered.wait(timeout=HOLD_SECONDS)  # the model is busy with the first request...
        futures += [engine.submit(engine.encode(chat), GREEDY) for chat in chats[1:]]  # ...while five more arrive
        release.set()
        answers = [future.result(timeout=120) for future in futures]
    finally:
        release.set()  # a failed assertion must not leave the model held
        del engine._run
    assert sizes == [1, 5]  # the first ran alone; the five that waited ran together
    assert [(a.text, a.token_ids, a.finish_reason) for a in answers] == [
        (a.text, a.token_ids, a.finish_reason) for a in alone
    ]


def test_requests_with_other_settings_are_not_mixed_and_a_failed_request_completes_at_once(tiny_engine, image_file):
    engine = tiny_engine
    failed = engine.submit(engine.encode(Chat.single("<image>\nwhat?", ["no/such/image.png"])), GREEDY)
    assert failed.done() and failed.result().finish_reason == "error" and "no/such/image.png" in failed.result().error
    longer = GenerationParams(temperature=0, max_new_tokens=9)
    short, long = (engine.submit(engine.encode(Chat.single("Hello?", [])), p) for p in (GREEDY, longer))
    assert short.result(timeout=120).text == engine.complete([Chat.single("Hello?", [])], GREEDY)[0].text
    assert long.result(timeout=120).text == engine.complete([Chat.single("Hello?", [])], longer)[0].text


def test_concurrent_streams_share_one_batch_and_stream_what_they_stream_alone(tiny_engine, image_file, monkeypatch):
    engine = tiny_engine
    params = GenerationParams(temperature=0, max_new_tokens=12)
    chats = [Chat.single(f"Tell me about {index}.", [image_file] if index % 3 else []) for index in range(8)]
    forward, steps = engine.model.forward, []
    monkeypatch.setattr(engine.model, "forward", lambda *a, **k: steps.append(1) or forward(*a, **k))
    alone, alone_steps = [], []
    for chat in chats:
        before = len(steps)
        alone.append("".join(engine.stream(chat, params)))
        alone_steps.append(len(steps) - before)

    run, sizes, batch_steps, entered, release = engine._run, [], [], threading.Event(), threading.Event()

    def held_run(batch, params, streams=()):  # a first request holds the model until the eight streams are queued
        sizes.append(len(batch.prompt_tokens))
        if len(sizes) == 1:
            entered.set()
            release.wait(timeout=HOLD_SECONDS)
        before = len(steps)
        try:
            return run(batch, params, streams)
        finally:
            batch_steps.append(len(steps) - before)

    engine._run = held_run
    streamed = [None] * len(chats)

    def read(index):
        pieces = engine.stream(chats[index], params)
        if index == 0:  # this caller leaves after the first piece: its row stops, the others go on
            streamed[index] = next(pieces)
            pieces.close()
        else:
            streamed[index] = "".join(pieces)

    try:
        first = engine.submit(engine.encode(Chat.single("Hold on.", [])), params)
        assert entered.wait(timeout=HOLD_SECONDS)
        readers = [threading.Thread(target=read, args=(index,)) for index in range(len(chats))]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + HOLD_SECONDS
        while len(engine._batcher.pending) < len(chats) and time.monotonic() < deadline:  # all eight queued
            time.sleep(0.01)
        release.set()
        for reader in readers:
            reader.join(timeout=120)
        first.result(timeout=120)
    finally:
        release.set()  # a failed assertion must not leave the model held
        del engine._run
    assert sizes == [1, len(chats)]  # the eight streams ran as one batch
    assert streamed[1:] == alone[1:]
    assert alone[0].startswith(streamed[0]) and streamed[0]
    # one batch took as many model steps as the longest stream alone, not the sum of all eight
    assert batch_steps[1] <= max(alone_steps) < sum(alone_steps)


def test_a_request_cancelled_while_waiting_is_dropped_and_the_rest_are_served(tiny_engine):
    engine = tiny_engine
    run, entered, release = engine._run, threading.Event(), threading.Event()

    def held_run(batch, params, streams=()):
        entered.set()
        release.wait(timeout=HOLD_SECONDS)
        return run(batch, params, streams)

    engine._run = held_run
    try:
        first = engine.submit(engine.encode(Chat.single("Hold on.", [])), GREEDY)
        assert entered.wait(timeout=HOLD_SECONDS)
        dropped, kept = (engine.submit(engine.encode(Chat.single(q, [])), GREEDY) for q in ("Dropped?", "Kept?"))
        assert dropped.cancel()  # e.g. the server's task for it was cancelled
        release.set()
        assert (
            first.result(timeout=120).text
            and kept.result(timeout=120).text == engine.complete([Chat.single("Kept?", [])], GREEDY)[0].text
        )
    finally:
        release.set()  # a failed assertion must not leave the model held
        del engine._run
    later = engine.submit(engine.encode(Chat.single("Still there?", [])), GREEDY)
    assert later.result(timeout=120).finish_reason in ("stop", "length")  # the batcher lives on


def test_threads_start_once_under_a_burst_and_the_batcher_ends_with_its_engine(tiny):
    import gc

    def batchers():
        return [thread for thread in threading.enumerate() if thread.name == "share4v-batcher"]

    before = set(batchers())  # other tests' engines may still be waiting for the garbage collector
    held = {"engine": Share4VEngine(*tiny)}  # the only strong reference, dropped below
    start = threading.Barrier(8)
    requests = [held["engine"].encode(Chat.single(f"Hello {index}?", [])) for index in range(8)]
    futures = [None] * 8

    def first_call(index):  # eight callers meet a fresh engine at once
        start.wait(timeout=HOLD_SECONDS)
        futures[index] = held["engine"].submit(requests[index], GREEDY)

    callers = [threading.Thread(target=first_call, args=(index,)) for index in range(8)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=HOLD_SECONDS)
    assert all(future.result(timeout=120).text is not None for future in futures)
    (ours,) = set(batchers()) - before  # one batching thread for the engine, however many first callers
    held.clear()
    gc.collect()
    ours.join(timeout=5)
    assert not ours.is_alive()  # the engine is gone, and so is its thread
