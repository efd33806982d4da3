"""encode → collate → run: per-request Completions (finish reason, token counts), per-request errors, picklable
requests that DataLoader workers can build."""

import pickle
from concurrent.futures import Future
from dataclasses import replace

import pytest
import torch

from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.inference.requests import FINISH_ERROR, FINISH_LENGTH, FINISH_STOP, Request
from tests.helpers import random_image

GREEDY = GenerationParams(temperature=0, max_new_tokens=6)


@pytest.fixture(scope="module")
def engine(tiny):
    return Share4VEngine(*tiny)


def chats():
    return [
        Chat.single("What is this?", [random_image(1)]),
        Chat.single("Tell me a story."),
        Chat.single("Compare them.", [random_image(2), random_image(3, (30, 90))]),
    ]


def test_completions_carry_the_texts_of_generate_and_their_token_counts(engine):
    completions = engine.complete(chats(), GREEDY)
    assert [c.text for c in completions] == engine.generate(chats(), GREEDY)
    patches = engine._image_tokens()
    for completion, chat in zip(completions, chats(), strict=True):
        assert completion.error is None and completion.finish_reason in (FINISH_STOP, FINISH_LENGTH)
        assert completion.completion_tokens == len(completion.token_ids) <= GREEDY.max_new_tokens
        text_tokens = len(engine.encode(chat).prompt_ids)
        assert completion.prompt_tokens == text_tokens + len(chat.images) * (patches - 1)
        if completion.finish_reason == FINISH_LENGTH:
            assert completion.completion_tokens == GREEDY.max_new_tokens
        assert (
            engine.tokenizer.decode(completion.token_ids, skip_special_tokens=True)
            .strip()
            .startswith(completion.text[:3])
        )


def test_finish_reason_and_token_ids_from_the_generated_row(engine):
    eos, pad = engine.tokenizer.eos_token_id, engine.pad_token_id
    stopped = engine._completion([7, 8, eos, pad, pad], "</s>", prompt_tokens=10, max_new_tokens=5)
    assert (stopped.token_ids, stopped.finish_reason, stopped.completion_tokens) == ([7, 8], FINISH_STOP, 2)
    cut = engine._completion([7, 8, 9, 10, 11], "</s>", prompt_tokens=10, max_new_tokens=5)
    assert (cut.token_ids, cut.finish_reason, cut.prompt_tokens) == ([7, 8, 9, 10, 11], FINISH_LENGTH, 10)
    early = engine._completion([7, 8, pad, pad, pad], "###", prompt_tokens=10, max_new_tokens=5)
    assert (early.token_ids, early.finish_reason) == ([7, 8], FINISH_STOP)  # another row ran on; this one had stopped


def test_with_stop_strings_the_tokens_end_where_the_first_stop_of_any_kind_does(engine):
    tokens = engine.tokenizer("Answer ### x END and more", add_special_tokens=False).input_ids
    cut = engine._completion(tokens, "###", prompt_tokens=10, max_new_tokens=50, stops=("END",))
    assert (cut.text, cut.finish_reason) == ("Answer", FINISH_STOP)  # the template's stop came first
    decode = engine.tokenizer.decode
    assert "###" in decode(cut.token_ids) and "###" not in decode(cut.token_ids[:-1])
    assert cut.completion_tokens == len(cut.token_ids) < len(tokens)


def test_a_corrupt_image_fails_its_own_request_only(engine, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    batch = [*chats(), Chat.single("And this?", [str(broken)])]
    completions = engine.complete(batch, GREEDY)
    assert completions[3].finish_reason == FINISH_ERROR and "broken.png" in completions[3].error
    assert completions[3].text == "" and completions[3].completion_tokens == 0
    assert [c.text for c in completions[:3]] == engine.generate(chats(), GREEDY)
    with pytest.raises(ValueError, match="broken.png"):  # generate() keeps raising, as before
        engine.generate(batch, GREEDY)


def test_a_prompt_past_the_context_is_that_requests_error(engine):
    long = Chat.single("word " * (engine.context_len + 10))
    request = engine.encode(long)
    assert request.error is not None and "the context is" in request.error
    completions = engine.complete([long, Chat.single("hi")], GREEDY)
    assert completions[0].finish_reason == FINISH_ERROR and completions[1].finish_reason != FINISH_ERROR
    with pytest.raises(ValueError, match="failed to encode"):
        engine.collate([request])


@pytest.mark.parametrize("images", [0, 1])
def test_an_image_marker_in_an_assistant_turn_is_that_requests_error(engine, images):
    # the marker would become an image slot: with no image to fill it, an out-of-range embedding lookup (on a GPU a
    # device-side assert that ends the process), and a batch-mate would fail with it
    history = Chat(["Look at this.", "I see an <image> here.", "What else?"], [random_image(4)] * images)
    request = engine.encode(history)
    assert request.error == "an assistant turn holds <image>: images go in user turns"
    completions = engine.complete([history, Chat.single("hi")], GREEDY)
    assert completions[0].finish_reason == FINISH_ERROR and completions[1].finish_reason != FINISH_ERROR


def test_an_image_marker_in_the_templates_text_is_caught_before_the_model(engine, monkeypatch):
    encoder = engine.encoder
    conversation = encoder.conversation

    def with_marker_in_the_system_text(turns, num_images):
        conv = conversation(turns, num_images)
        conv.system += " <image>"
        return conv

    monkeypatch.setattr(encoder, "conversation", with_marker_in_the_system_text)
    request = encoder.encode(Chat.single("What is this?", [random_image(1)]))
    assert request.error == "the prompt has 2 <image> slots but 1 images"


def test_requests_are_built_in_dataloader_workers(engine):
    encoder = pickle.loads(pickle.dumps(engine.encoder))  # no model inside: a worker can hold it
    loader = torch.utils.data.DataLoader(
        chats(), batch_size=3, num_workers=1, collate_fn=lambda c: [encoder.encode(x) for x in c]
    )
    (requests,) = list(loader)
    assert all(isinstance(r, Request) and r.error is None for r in requests)
    local = [engine.encode(chat) for chat in chats()]
    assert [r.prompt_ids for r in requests] == [r.prompt_ids for r in local]
    assert torch.equal(requests[2].pixel_values, local[2].pixel_values)
    completions = engine.run(engine.collate(requests), GREEDY)
    assert [c.text for c in completions] == engine.generate(chats(), GREEDY)


def test_the_limit_is_the_models_positions_and_past_the_trained_context_only_warns(tiny, caplog):
    engine = Share4VEngine(*tiny)
    assert engine.max_positions == engine.model.config.max_position_embeddings > engine.context_len
    chat = Chat.single("Describe the picture in a few words.", [random_image(5)])
    prompt_tokens = engine.encode(chat).prompt_tokens
    engine.context_len = prompt_tokens + 2  # a checkpoint trained at a shorter context
    with caplog.at_level("WARNING", logger="share4v.inference.engine"):
        (completion,) = engine.complete([chat], GREEDY)
    assert completion.error is None and "context this checkpoint was trained at" in caplog.text
    engine.max_positions = prompt_tokens + 3  # prompt + answer are capped at the model's positions
    (capped,) = engine.complete([chat], GenerationParams(temperature=0, max_new_tokens=50))
    assert capped.completion_tokens <= 3
    engine.max_positions = prompt_tokens
    (refused,) = engine.complete([chat], GREEDY)
    assert refused.finish_reason == FINISH_ERROR and "the context is" in refused.error


def test_stop_strings_cut_the_answer_and_finish_it_with_stop(engine):
    chat = Chat.single("Tell me a story.")
    params = GenerationParams(temperature=0, max_new_tokens=16)
    [whole] = engine.complete([chat], params)
    stop = whole.text[len(whole.text) // 2 :][:3]  # a piece of the answer's second half
    assert stop.strip() and whole.completion_tokens > 2
    [cut] = engine.complete([chat], replace(params, stop=("never there", stop)))
    expected = whole.text[: whole.text.index(stop)].strip()
    assert (cut.text, cut.finish_reason) == (expected, FINISH_STOP)
    # the tokens end with the one that completed the stop string: the same tokens as far as they go
    assert cut.token_ids == whole.token_ids[: cut.completion_tokens] and cut.completion_tokens < whole.completion_tokens
    assert stop in engine.tokenizer.decode(cut.token_ids) and stop not in engine.tokenizer.decode(cut.token_ids[:-1])
    finished = Future()
    pieces = list(engine.stream(chat, replace(params, stop=(stop,)), completion=finished))
    assert "".join(pieces) == expected
    assert finished.result(timeout=60).finish_reason == FINISH_STOP
    length = Future()
    assert "".join(engine.stream(chat, params, completion=length)) == whole.text
    assert (length.result(timeout=60).finish_reason, length.result().completion_tokens) == (
        whole.finish_reason, whole.completion_tokens
    )  # fmt: skip


def test_a_streams_completion_is_settled_however_the_stream_ends(engine):
    refused = Future()
    with pytest.raises(ValueError, match="num_beams=1"):
        list(engine.stream(Chat.single("hi"), GenerationParams(num_beams=2), completion=refused))
    assert isinstance(refused.exception(timeout=1), ValueError)  # before any token: the caller is not left waiting
    left = Future()
    pieces = engine.stream(Chat.single("Tell me everything."), GenerationParams(max_new_tokens=200), completion=left)
    next(pieces)
    pieces.close()  # the reader left early: what it read is the answer
    answer = left.result(timeout=60)
    assert answer.finish_reason == FINISH_STOP and 0 < answer.completion_tokens < 200
    cancelled = Future()
    cancelled.cancel()  # a waiter that gave up: settling it must not raise in the generating thread
    assert (
        "".join(engine.stream(Chat.single("hi"), GREEDY, completion=cancelled))
        == engine.generate([Chat.single("hi")], GREEDY)[0]
    )
