"""Stop strings on the engine's own loops (tiny fp32 model): a batch with the template's text stop or a request's
`stop` strings decodes on the fixed-batch loop or, through the queue, the continuous one (generate never runs), and
answers as the `generate` path does with its text check: the same texts, tokens (up to the one that completed the
stop) and finish reasons, greedy and sampled from the same random state, streamed or whole."""

from dataclasses import replace

import pytest
import torch
from transformers import CompileConfig, StoppingCriteria

from share4v.inference.continuous import Seat, decode_continuously
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.inference.fast_greedy import greedy_decode
from share4v.inference.requests import FINISH_STOP
from tests.helpers import random_image

EAGER = CompileConfig(backend="eager")  # dynamo's capture without inductor's code generation: seconds on a CPU


def chats() -> list[Chat]:
    return [
        Chat.single("What is shown?", [random_image(1)]),
        Chat.single("Tell me a long story about the sea, please."),
        Chat(["<image> and <image>: which is brighter?", "The first.", "Why?"], [random_image(5), random_image(6)]),
    ]


def stops_within(answers: list[str]) -> tuple[str, ...]:
    """A piece of the second half of the first and last answers: stop strings that end those two early."""
    pieces = []
    for text in (answers[0], answers[-1]):
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
    """share4v_v0 ends answers at "###" (not the end-of-sequence token): a text stop of the template's own, checked
    beside the request's (the tiny model does not write "###" itself)."""
    params = GenerationParams(temperature=0, max_new_tokens=16)
    slow = Share4VEngine(*tiny, conv_mode="share4v_v0", compile_decode=False)
    fast = Share4VEngine(*tiny, conv_mode="share4v_v0", compile_decode=EAGER)
    assert slow._text_stops(slow.encode(chats()[0]).stop_str) == ["###"]
    whole = slow.complete(chats(), params)
    # the same check on a stop string the model does write: as a request's stop, with the template's "###"
    stopped = replace(params, stop=stops_within([c.text for c in whole]))
    expected = slow.complete(chats(), stopped)
    generate_forbidden(fast)
    assert shown(fast.complete(chats(), stopped)) == shown(expected)


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

    def __init__(self, row: int, count: int, prompt: int):
        self.row, self.count, self.prompt = row, count, prompt

    def __call__(self, input_ids, scores=None, **kwargs):
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        done[self.row] = input_ids.shape[1] >= self.count  # generate from embeddings: new tokens only
        return done


@pytest.mark.parametrize("lookbehind", [0, 2])
def test_a_row_stopped_by_the_host_holds_padding_after_its_step(tiny, lookbehind):
    """`greedy_decode`'s `on_tokens` stops a row at its third token while the host reads two steps late: the steps
    queued past it are overwritten with padding, as generate pads a row from the step after its criteria stopped it;
    once the other row has ended too, decoding stops where generate does."""
    engine = Share4VEngine(*tiny, compile_decode=EAGER)
    engine._make_greedy_step()
    batch = engine.prepare(chats()[:2])
    pad, new_tokens = engine.pad_token_id, 10
    with torch.inference_mode():
        embeds, mask = engine._prompt_embeddings(batch)
        alone = greedy_decode(engine._greedy_step, engine._static_cache(2, 64), engine._cache_shape[1], embeds, mask,
                              new_tokens, None, pad, lookbehind=lookbehind)  # fmt: skip
        eos = alone[1, 5].item()  # row 1 ends by its sixth token
        assert eos not in alone[1, :5].tolist() and eos not in alone[0, :3].tolist()
        expected = engine.model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=new_tokens,
                                         do_sample=False, eos_token_id=eos, pad_token_id=pad,
                                         stopping_criteria=[StopRowAt(0, 3, mask.shape[1])])  # fmt: skip
        read = []

        def on_tokens(tokens: list[int]) -> list[int]:
            read.append(tokens)
            return [0] if len(read) == 3 else []

        got = greedy_decode(engine._greedy_step, engine._static_cache(2, 64), engine._cache_shape[1], embeds, mask,
                            new_tokens, eos, pad, on_tokens, lookbehind=lookbehind)  # fmt: skip
    assert expected.shape[1] == 6 and (expected[0, 3:] == pad).all()
    assert torch.equal(got, expected)


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
