"""Second, independent checks for behaviours a planted bug once slipped past (issue 10): each test fails when its
behaviour breaks, by a different route than the first test that guards it."""

import pytest
import torch
from PIL import Image

from share4v.inference import Chat, GenerationParams, Share4VEngine
from share4v.mm_utils import KeywordsStoppingCriteria, process_images, tokenizer_image_token
from share4v.model.builder import load_pretrained_model
from share4v.utils import resolve_dtype
from tests.helpers import random_image


@pytest.fixture
def engine(tiny):
    tokenizer, model, image_processor, context_len = tiny
    return Share4VEngine(tokenizer, model, image_processor, context_len)


def test_cuda_default_dtype_is_float16_without_a_gpu():
    assert resolve_dtype(None, torch.device("cuda")) is torch.float16
    assert resolve_dtype(None, torch.device("cuda", 1)) is torch.float16
    assert resolve_dtype(None, torch.device("cpu")) is torch.float32
    assert resolve_dtype("bf16", torch.device("cuda")) is torch.bfloat16


def test_max_new_tokens_is_honoured_exactly_when_the_context_is_roomy(engine):
    batch = engine.prepare([Chat.single("Describe it.")])
    kwargs = engine._generate_kwargs(batch, GenerationParams(temperature=0, max_new_tokens=7))
    assert kwargs["generation_config"].max_new_tokens == 7
    kwargs["generation_config"].suppress_tokens = [engine.tokenizer.eos_token_id]  # nothing ends it early
    with torch.no_grad():
        out = engine.model.generate(**kwargs)
    assert out.shape[1] == 7


def test_top_p_reaches_the_generation_config(engine):
    batch = engine.prepare([Chat.single("Hi")])
    sampled = engine._generate_kwargs(batch, GenerationParams(temperature=0.7, top_p=0.42))["generation_config"]
    assert sampled.do_sample and sampled.top_p == 0.42 and sampled.temperature == 0.7
    greedy = engine._generate_kwargs(batch, GenerationParams(temperature=0, top_p=0.42))["generation_config"]
    assert not greedy.do_sample


def test_a_non_eos_stop_string_is_cut_from_generate_answers(tiny, monkeypatch):
    tokenizer, model, image_processor, context_len = tiny
    engine = Share4VEngine(tokenizer, model, image_processor, context_len, conv_mode="share4v_v0")
    assert engine.conversation(Chat.single("q")).stop_str == "###"
    scripted = tokenizer("a red circle###Human: more text", add_special_tokens=False).input_ids
    monkeypatch.setattr(model, "generate", lambda **kwargs: torch.tensor([scripted]))
    assert engine.generate([Chat.single("What is it?")]) == ["a red circle"]


def test_stop_keyword_as_the_very_first_generated_token(tiny):
    tokenizer = tiny[0]
    stop = KeywordsStoppingCriteria(["</s>"], tokenizer)
    prompt = tokenizer("USER: hi ASSISTANT:").input_ids
    assert stop(torch.tensor([[*prompt, tokenizer.eos_token_id]]), None).tolist() == [True]
    again = KeywordsStoppingCriteria(["###"], tokenizer)  # called once per generated token, as generate does
    first = tokenizer("###", add_special_tokens=False).input_ids
    verdicts = [again(torch.tensor([[*prompt, *first[: n + 1]]]), None).item() for n in range(len(first))]
    assert verdicts[-1] and not any(verdicts[:-1])


def test_image_order_within_a_row_matters(tiny):
    """Two different images in one row: swapping them changes the logits, and each position sees its own."""
    tokenizer, model, processor, _ = tiny
    ids = tokenizer_image_token("USER: <image> and <image> ASSISTANT:", tokenizer, return_tensors="pt")[None]
    a, b = process_images([random_image(1), random_image(2)], processor, model.config)
    with torch.no_grad():
        ab = model(ids, images=torch.stack([a, b])).logits
        ba = model(ids, images=torch.stack([b, a])).logits
        features = model.encode_images(torch.stack([a, b]))
        merged = model.prepare_multimodal_inputs(ids, torch.stack([a, b]))
    assert not torch.allclose(ab, ba)
    first = (ids[0] == -200).nonzero()[0].item()
    assert torch.equal(merged.inputs_embeds[0, first : first + 16], features[0])


def test_position_ids_restart_after_left_padding(engine):
    """A left-padded row gives the logits it gives alone: its positions count from its first real token."""
    batch = engine.prepare([Chat.single("Hi"), Chat.single("Tell me everything about the picture, please.")])
    mask = batch.attention_mask
    assert mask[0, 0] == 0 and mask[1, 0] == 1  # the short row is padded on the left
    with torch.no_grad():
        out = engine.model.generate(
            inputs=batch.input_ids, attention_mask=mask, max_new_tokens=1, do_sample=False,
            output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
        alone = engine.model.generate(
            inputs=batch.input_ids[:1, mask[0].argmax() :], max_new_tokens=1, do_sample=False,
            output_scores=True, return_dict_in_generate=True,
        )  # fmt: skip
    assert torch.allclose(out.scores[0][0], alone.scores[0][0], atol=1e-4)


def test_pad_background_is_the_processor_mean(tiny):
    processor = tiny[2]
    tall = Image.new("RGB", (10, 40), (0, 0, 0))
    pixels = process_images([tall], processor, None, image_aspect_ratio="pad")[0]
    mean = torch.tensor(processor.image_mean)
    std = torch.tensor(processor.image_std)
    expected = (torch.tensor([int(m * 255) for m in processor.image_mean]) / 255 - mean) / std
    assert torch.allclose(pixels[:, 28, 0], expected, atol=2e-3)  # left edge: background
    assert torch.allclose(pixels[:, 28, 28], (0 - mean) / std, atol=2e-3)  # centre: the black image


def test_text_only_batches_are_left_padded(engine):
    batch = engine.prepare([Chat.single("Hi"), Chat.single("A much longer question about nothing at all?")])
    assert batch.images is None
    assert batch.attention_mask[0, 0] == 0 and batch.attention_mask[0, -1] == 1
    assert batch.input_ids[0, -1] == batch.input_ids[1, -1]  # both end with the same "ASSISTANT:" tokens


def test_engine_api_misuse(engine):
    with pytest.raises(ValueError, match="non-empty list of Chat"):
        engine.generate([])
    with pytest.raises(ValueError, match="non-empty list of Chat"):
        engine.generate(Chat.single("hi"))
    with pytest.raises(TypeError, match="expected Chat objects"):
        engine.generate(["hi"])
    with pytest.raises(TypeError, match="Chat turns must be a string or a list of strings"):
        Chat([1, 2])


def test_default_conversation_is_a_fresh_copy_each_time():
    from share4v import conversation

    first = conversation.default_conversation
    first.append_message(first.roles[0], "changed")
    assert conversation.default_conversation.messages == [] and first.version == "v1"


def test_make_tiny_checkpoint_overwrite_replaces_only_checkpoints(tmp_path):
    from share4v.testing.make_tiny_checkpoint import make_tiny_checkpoint

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="replaces checkpoints only"):
        make_tiny_checkpoint(tmp_path / "mine", overwrite=True)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "years of work"


def test_cpu_loads_in_float32_by_default(tiny_ckpt):
    _, model, _, _ = load_pretrained_model(str(tiny_ckpt), None, None, device="cpu")
    assert model.dtype is torch.float32
