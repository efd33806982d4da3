"""The generation engine: prompts, batching equal to single, streaming equal to whole, stop strings."""

import pytest
import torch

from share4v.constants import IMAGE_TOKEN_INDEX
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine, _stop_at
from share4v.model.builder import load_pretrained_model
from tests.helpers import plain_llama_like, random_image

GREEDY = GenerationParams(temperature=0, max_new_tokens=12)


@pytest.fixture(scope="module")
def engine(tiny):
    return Share4VEngine(*tiny)


def test_prompt_puts_one_image_token_per_image_first(engine):
    conv = engine.conversation(Chat.single("What?", [random_image(0), random_image(1)]))
    assert conv.get_prompt().endswith("USER: <image>\n<image>\nWhat? ASSISTANT:")
    conv = engine.conversation(Chat(["Look: <image> ok?", "Yes.", "More?"], [random_image(0)]))
    assert conv.get_prompt().endswith("USER: Look: <image> ok? ASSISTANT: Yes.</s>USER: More? ASSISTANT:")


def test_prompt_errors(engine):
    with pytest.raises(ValueError, match="the prompt has 2 <image> markers but 1 images were given"):
        engine.conversation(Chat.single("<image> vs <image>", [random_image(0)]))
    with pytest.raises(ValueError, match="ending with a user turn"):
        engine.conversation(Chat(["hi", "hello"]))
    with pytest.raises(ValueError, match="unknown conversation template 'mpt'"):
        Share4VEngine(engine.tokenizer, engine.model, engine.image_processor, conv_mode="mpt")


def test_prepare_left_pads_and_orders_images(engine):
    chats = [Chat.single("short", [random_image(0)]), Chat.single("a much longer question here", [random_image(1)])]
    batch = engine.prepare(chats)
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[:, -1].tolist() == [1, 1]
    assert (batch.input_ids == IMAGE_TOKEN_INDEX).sum(dim=1).tolist() == [1, 1]
    assert batch.images.shape == (2, 3, 56, 56) and batch.stop_str == "</s>"


def test_batch_equals_single(engine, examples_dir):
    chats = [
        Chat.single("What is shown?", [examples_dir / "shapes.png"]),
        Chat.single("Describe this chart in detail, please, with numbers.", [str(examples_dir / "chart.png")]),
        Chat.single("Text only: tell me a story."),
        Chat(["<image> and <image>: which is brighter?", "The first.", "Why?"], [random_image(5), random_image(6)]),
    ]
    together = engine.generate(chats, GREEDY)
    alone = [engine.generate([chat], GREEDY)[0] for chat in chats]
    assert together == alone
    assert all(isinstance(answer, str) and answer for answer in together)


def test_stream_joins_to_generate(engine, examples_dir):
    chat = Chat.single("What is in the picture?", [examples_dir / "sunset.png"])
    pieces = list(engine.stream(chat, GenerationParams(temperature=0, max_new_tokens=24)))
    assert len(pieces) > 1
    assert "".join(pieces) == engine.generate([chat], GenerationParams(temperature=0, max_new_tokens=24))[0]


def test_closing_a_stream_stops_generation(engine, monkeypatch):
    forward = engine.model.forward
    steps = []
    monkeypatch.setattr(engine.model, "forward", lambda *a, **k: steps.append(1) or forward(*a, **k))
    pieces = engine.stream(Chat.single("Tell me everything.", [random_image(9)]), GenerationParams(max_new_tokens=1500))
    assert next(pieces)
    pieces.close()  # e.g. the client went away: the generation thread must end, not run 1500 steps
    assert len(steps) < 50


def test_sampling_is_seeded_and_beams_batch_like_single(engine):
    chat = Chat.single("hi", [random_image(2)])
    params = GenerationParams(temperature=0.9, top_p=0.8, max_new_tokens=8)
    torch.manual_seed(0)
    first = engine.generate([chat], params)
    torch.manual_seed(0)
    assert engine.generate([chat], params) == first
    chats = [chat, Chat.single("a different and longer question", [random_image(3)])]
    beams = GenerationParams(temperature=0, num_beams=3, max_new_tokens=8)
    assert engine.generate(chats, beams) == [engine.generate([c], beams)[0] for c in chats]


def test_stream_errors_reach_the_caller(engine, monkeypatch):
    with pytest.raises(ValueError, match="markers"):
        list(engine.stream(Chat.single("<image>", [])))
    with pytest.raises(ValueError, match="streaming needs num_beams=1"):
        list(engine.stream(Chat.single("hi"), GenerationParams(num_beams=2)))

    def broken_generate(**kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(engine.model, "generate", broken_generate)
    with pytest.raises(RuntimeError, match="simulated"):
        list(engine.stream(Chat.single("hi")))


def test_the_engine_chooses_the_placement_on_cuda_unless_told(tiny_ckpt, monkeypatch):
    """Without a device_map, loading onto "cuda" takes `placement.default_device_map`'s; a given map, or another
    device, passes through as it is."""
    from share4v.inference import engine as engine_module

    asked = []

    def load(*args, **kwargs):
        asked.append((kwargs["device"], kwargs.get("device_map")))
        return load_pretrained_model(*args, **{**kwargs, "device": "cpu"})

    monkeypatch.setattr(engine_module, "load_pretrained_model", load)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(engine_module, "default_device_map", lambda path, kwargs: {"": "chosen"})
    Share4VEngine.from_pretrained(str(tiny_ckpt), device="cuda")
    Share4VEngine.from_pretrained(str(tiny_ckpt))
    Share4VEngine.from_pretrained(str(tiny_ckpt), device="cuda", device_map="balanced")
    Share4VEngine.from_pretrained(str(tiny_ckpt), device="cuda:1")
    assert asked == [("cuda", {"": "chosen"}), ("auto", {"": "chosen"}), ("cuda", "balanced"), ("cuda:1", None)]


def test_default_conv_mode_from_name(tiny_ckpt):
    from share4v.conversation import default_conv_mode

    assert default_conv_mode("ShareGPT4V-7B") == default_conv_mode(None) == "vicuna_v1"
    assert default_conv_mode("share4v-llama-2-13b") == "share4v_llama_2"
    engine = Share4VEngine.from_pretrained(str(tiny_ckpt), model_name="my-llama2-run", device="cpu")
    assert engine.conv_mode == "share4v_llama_2"


@pytest.mark.parametrize(
    ("pieces", "expected"),
    [
        (["Hello", " wor", "ld##", "#tail"], "Hello world"),
        (["  lead", "ing ", "# not a stop", " end  "], "  leading # not a stop end"),
        (["a#", "#", "b"], "a##b"),
        (["x", "###"], "x"),
        (["one EN", "D two"], "one"),  # the user's stop ends it first
        (["ab", "c", "x"], "abcx"),  # "abcd" never completes
    ],
)
def test_stop_at_holds_back_partial_stop_strings(pieces, expected):
    assert "".join(_stop_at(iter(pieces), ("###", "END", "abcd"))) == expected


def test_generation_params_validation():
    with pytest.raises(ValueError, match="temperature"):
        GenerationParams(temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        GenerationParams(top_p=0)


def test_text_only_model_answers_without_the_prompt(tiny):
    tokenizer, model, _, _ = tiny
    engine = Share4VEngine(tokenizer, plain_llama_like(model), None)  # a plain transformers Llama
    chat = Chat.single("Tell me about the sea.")
    [answer] = engine.generate([chat], GREEDY)
    assert answer == "".join(engine.stream(chat, GREEDY))
    share4v_engine = Share4VEngine(*tiny)
    assert answer == share4v_engine.generate([chat], GREEDY)[0]  # same weights, same answer
    with pytest.raises(ValueError, match="the model has no vision tower"):
        engine.generate([Chat.single("hi", random_image(0))])


def test_context_length_is_enforced(tiny, examples_dir):
    tokenizer, model, processor, _ = tiny
    chat = Chat.single("What is it?", str(examples_dir / "shapes.png"))  # one image given as a plain string
    assert chat.images == [str(examples_dir / "shapes.png")]
    roomy = Share4VEngine(tokenizer, model, processor, context_len=2048).prepare([chat])
    assert roomy.prompt_len == roomy.input_ids.shape[1] - 1 + 16
    tight = Share4VEngine(tokenizer, model, processor)
    tight.max_positions = roomy.prompt_len + 5  # the hard limit is the model's positions (config: 4096)
    kwargs = tight._generate_kwargs(tight.prepare([chat]), GenerationParams(max_new_tokens=100))
    assert kwargs["generation_config"].max_new_tokens == 5
    tight.max_positions = 20
    with pytest.raises(ValueError, match=rf"the prompt takes {roomy.prompt_len} tokens .* the context is 20"):
        tight.prepare([chat])
