"""`Share4VEngine.submit`: requests queued while the model is busy run together as one batch, and each gets its own
answer, equal to the answer it gets alone (greedy)."""

import threading

import pytest

from share4v.inference import Chat, GenerationParams, Share4VEngine

GREEDY = GenerationParams(temperature=0, max_new_tokens=6)


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

    run, sizes, entered, release = engine.run, [], threading.Event(), threading.Event()

    def held_run(batch, params=None):  # the first batch holds the model until the others are queued
        sizes.append(len(batch.prompt_tokens))
        if len(sizes) == 1:
            entered.set()
            release.wait(timeout=30)
        return run(batch, params)

    engine.run = held_run
    try:
        futures = [engine.submit(engine.encode(chats[0]), GREEDY)]
        assert entered.wait(timeout=30)  # the model is busy with the first request...
        futures += [engine.submit(engine.encode(chat), GREEDY) for chat in chats[1:]]  # ...while five more arrive
        release.set()
        answers = [future.result(timeout=120) for future in futures]
    finally:
        del engine.run
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
