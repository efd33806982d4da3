"""Stop strings on the engine's own loops (tiny fp32 model): a batch with the template's text stop or a request's
`stop` strings decodes on the fixed-batch loop or, through the queue, the continuous one (generate never runs), and
answers as the `generate` path does with its text check: the same texts, tokens (up to the one that completed the
stop) and finish reasons, greedy and sampled from the same random state, streamed or whole."""

from dataclasses import replace

import pytest
import torch
from transformers import CompileConfig, StaticCache, StoppingCriteria

from share4v.inference.continuous import Seat, decode_continuously
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.inference.fast_greedy import GreedyStep, greedy_decode
from share4v.inference.requests import FINISH_STOP
from share4v.inference.sampling import Sampling
from tests.helpers import random_image

EAGER = CompileConfig(backend="eager")  # dynamo's capture without inductor's code generation: seconds on a CPU


def chats() -> list[Chat]:
    return [
        Chat.single("What is shown?", [random_image(1)]),
        Chat.single("Tell me a long story about the sea, please."),
        Chat(["<image> and <image>: which is brighter?", "The first.", "Why?"], [random_image(5), random_image(6)]),
    ]


def stops_within(answers: list[str]) -> tuple[str, ...]:
    """A piece of the second half of the first and last answers (or of the one answer): stop strings that end
    those early."""
    pieces = []
    for text in dict.fromkeys((answers[0], answers[-1])):
        piece = text[len(text) // 2 :][:3]
        assert piece.strip(), f"an answer too short to cut: {text!r}"
        pieces.append(piece)
    return tuple(pieces)


def shown(completions) -> list[tuple]:
    return [(c.text, c.token_ids, c.finish_reason) for c in completions]


@pytest.fixture
def generate_forbidden(monkeypatch):
    """Call with an engine: its model's `generate` raises from then on (the loops must answer)."""

    def forbid(engine: Share4VEngine) -> None:
        def no_generate(*args, **kwargs):
            raise AssertionError("generate ran")

        monkeypatch.setattr(engine.model, "generate", no_generate)

    return forbid


def test_greedy_stop_strings_end_rows_on_the_fixed_loop_as_generate_does(tiny, generate_forbidden):
    params = GenerationParams(temperature=0, max_new_tokens=16)
    slow = Share4VEngine(*tiny, compile_decode=False)
    whole = slow.complete(chats(), params)
    stopped = replace(params, stop=stops_within([c.text for c in whole]))
    expected = slow.complete(chats(), stopped)
    assert expected[0].finish_reason == FINISH_STOP and len(expected[0].token_ids) < len(whole[0].token_ids)
    fast = Share4VEngine(*tiny, compile_decode=EAGER)
    generate_forbidden(fast)
    assert shown(fast.complete(chats(), stopped)) == shown(expected)
    streamed = "".join(fast.stream(chats()[0], stopped))
    assert streamed == expected[0].text  # one row alone: the same answer


def test_the_templates_text_stop_is_found_on_the_loop(tiny, generate_forbidden):
    """A template whose stop is not the end-of-sequence token (share4v_v0's "###") ends answers by a text check of
    its own, with no stop strings asked for. The tiny model never writes "###", so its requests carry a piece of the
    first answer as their template's stop instead: the fixed loop and the queue end rows on it as generate does."""
    params = GenerationParams(temperature=0, max_new_tokens=16)
    slow = Share4VEngine(*tiny, conv_mode="share4v_v0", compile_decode=False)
    fast = Share4VEngine(*tiny, conv_mode="share4v_v0", compile_decode=EAGER)
    assert slow._text_stops(slow.encode(chats()[0]).stop_str) == ["###"]
    whole = slow.complete(chats(), params)
    (stop,) = stops_within([whole[0].text])
    requests = [replace(slow.encode(chat), stop_str=stop) for chat in chats()]
    expected = slow.run(slow.collate(requests), params)
    assert expected[0].finish_reason == FINISH_STOP and len(expected[0].token_ids) < len(whole[0].token_ids)
    assert stop not in expected[0].text
    alone = [slow.run(slow.collate([request]), params)[0] for request in requests]
    generate_forbidden(fast)
    assert shown(fast.run(fast.collate(requests), params)) == shown(expected)
    assert shown(fast.submit(request, params).result(timeout=120) for request in requests) == shown(alone)


def test_sampled_rows_stop_on_the_loop_with_generates_draws_and_random_state(tiny, generate_forbidden):
    params = GenerationParams(temperature=0.7, top_p=0.9, max_new_tokens=16)
    slow = Share4VEngine(*tiny, compile_decode=False)
    torch.manual_seed(3)
    whole = slow.complete(chats(), params)
    stops = stops_within([c.text for c in whole])
    middle = whole[1].text[len(whole[1].text) // 2 :][:3]  # every row stops: the batch ends early
    stopped = replace(params, stop=(*stops, middle))
    torch.manual_seed(3)
    expected = slow.complete(chats(), stopped)
    after_generate = torch.rand(4)
    assert all(c.finish_reason == FINISH_STOP for c in expected)
    fast = Share4VEngine(*tiny, compile_decode=EAGER, fast_sampling=True)
    generate_forbidden(fast)
    torch.manual_seed(3)
    assert shown(fast.complete(chats(), stopped)) == shown(expected)
    assert torch.equal(torch.rand(4), after_generate)  # no draw past the end: the next batch draws as after generate


def test_queued_requests_with_stop_strings_decode_continuously(tiny, generate_forbidden):
    params = GenerationParams(temperature=0, max_new_tokens=16)
    slow = Share4VEngine(*tiny, compile_decode=False)
    whole = [slow.complete([chat], params)[0] for chat in chats()]
    stopped = replace(params, stop=stops_within([c.text for c in whole]))
    expected = [slow.complete([chat], stopped)[0] for chat in chats()]
    fast = Share4VEngine(*tiny, compile_decode=EAGER)
    generate_forbidden(fast)
    futures = [fast.submit(fast.encode(chat), stopped) for chat in chats()]
    assert shown(future.result(timeout=120) for future in futures) == shown(expected)
    assert [("".join(fast.stream(chat, stopped))) for chat in chats()] == [c.text for c in expected]


class StopRowAt(StoppingCriteria):
    """generate's side of `test_a_row_stopped_by_the_host_holds_padding_after_its_step`: row `row` stops after its
    `count`-th new token."""

    def __init__(self, row: int, count: int):
        self.row, self.count = row, count

    def __call__(self, input_ids, scores=None, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        done[self.row] = input_ids.shape[1] >= self.count  # generate from embeddings: new tokens only
        return done


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
@pytest.mark.parametrize("eos_at", [4, 5], ids=["eos-two-steps-after-the-stop", "eos-three-steps-after"])
@pytest.mark.parametrize("lookbehind", [0, 2])
def test_a_row_stopped_by_the_host_holds_padding_after_its_step(tiny, lookbehind, eos_at, sampled):
    """`greedy_decode`'s `on_tokens` stops row 0 at its third token while the host reads up to two steps late: the
    steps queued past it are overwritten with padding, as generate pads a row from the step after its criteria
    stopped it; row 1 ends by its end-of-sequence token two or three steps later (within the look-behind, or past
    it), and decoding stops where generate does, with generate's random state after it when sampled."""
    model = tiny[1]
    engine = Share4VEngine(*tiny)
    step = GreedyStep.for_model(model, EAGER)  # the model's own forward: generate's logits, bit for bit
    pad, new_tokens = engine.pad_token_id, 10
    sampling = Sampling(0.9, 0, 1.0) if sampled else None
    settings = {"do_sample": True, "temperature": 0.9, "top_k": 0, "top_p": 1.0} if sampled else {"do_sample": False}

    def decode(eos, on_tokens=None):
        length = mask.shape[1] + new_tokens
        cache = StaticCache(config=model.config, max_cache_len=length)
        return greedy_decode(step, cache, length, embeds, mask, new_tokens, eos, pad, on_tokens,
                             lookbehind=lookbehind, sampling=sampling)  # fmt: skip

    with torch.inference_mode():
        embeds, mask = engine._prompt_embeddings(engine.prepare(chats()[:2]))
        for seed in range(20):  # the first draws whose row 1 writes a token at `eos_at` that neither row wrote before
            torch.manual_seed(seed)
            alone = decode(None)
            eos = alone[1, eos_at].item()
            if eos not in alone[1, :eos_at].tolist() and eos not in alone[0, :3].tolist():
                break
        torch.manual_seed(seed)
        expected = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new_tokens,
                                  eos_token_id=eos, pad_token_id=pad, stopping_criteria=[StopRowAt(0, 3)],
                                  **settings)  # fmt: skip
        after_generate = torch.rand(4)
        read = []

        def on_tokens(tokens: list[int]) -> list[int]:
            read.append(tokens)
            return [0] if len(read) == 3 else []

        torch.manual_seed(seed)
        got = decode(eos, on_tokens)
        after_loop = torch.rand(4)
    assert expected.shape[1] == eos_at + 1 and (expected[0, 3:] == pad).all()
    assert torch.equal(got, expected)
    assert torch.equal(after_loop, after_generate) or not sampled


def test_a_seat_ended_by_a_stop_string_frees_its_row_at_once(tiny):
    """In the continuous loop a seat whose `ends` says its tokens end it stops there (the token kept): the batch
    runs that seat's steps, not its budget's."""
    engine = Share4VEngine(*tiny, compile_decode=EAGER)
    engine._make_greedy_step()
    request = engine.encode(chats()[1])
    ended: list[list[int]] = []
    seat = Seat(request.prompt_tokens, 12, None, ended.append, ends=lambda tokens: len(tokens) == 3, request=request)
    with torch.inference_mode():
        cache = engine._static_cache(1, request.prompt_tokens + 12)
        steps = decode_continuously(engine._greedy_step, cache, engine._cache_shape[1], [seat],
                                    lambda seats: engine._prompt_embeddings(engine.collate([request])),
                                    lambda free, written, left: [])  # fmt: skip
    whole = engine.complete([chats()[1]], GenerationParams(temperature=0, max_new_tokens=12))[0].token_ids
    assert ended == [whole[:3]] and steps == 2  # the first token from the prompt pass, two steps
