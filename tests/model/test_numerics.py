"""The model against an independent manual computation, KV cache vs none, batch vs single, save/load."""

import copy
import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import CLIPVisionModel

from share4v.constants import IMAGE_TOKEN_INDEX
from share4v.mm_utils import process_images, tokenizer_image_token
from share4v.model.builder import load_pretrained_model
from tests.helpers import plain_llama_like, random_image

PROMPT = "A chat. USER: <image>\nWhat is in the picture? ASSISTANT:"


def _inputs(tiny, prompt=PROMPT, seeds=(0,)):
    tokenizer, model, processor, _ = tiny
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
    pixels = process_images([random_image(s) for s in seeds], processor, model.config)
    return ids, pixels


def manual_logits(tiny_ckpt, model, ids, pixels):
    """CLIP layer -2 without CLS → Linear-GELU-Linear → spliced at -200 → a plain transformers Llama."""
    clip = CLIPVisionModel.from_pretrained(tiny_ckpt / "vision_tower")
    patches = clip(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    state = model.state_dict()
    hidden = F.linear(patches, state["model.mm_projector.0.weight"], state["model.mm_projector.0.bias"])
    projected = F.linear(F.gelu(hidden), state["model.mm_projector.2.weight"], state["model.mm_projector.2.bias"])
    llama = plain_llama_like(model)
    position = ids[0].tolist().index(IMAGE_TOKEN_INDEX)
    table = llama.get_input_embeddings().weight
    embeds = torch.cat([table[ids[0, :position]], projected[0], table[ids[0, position + 1 :]]])[None]
    return llama(inputs_embeds=embeds).logits


@torch.no_grad()
def test_logits_equal_manual_computation(tiny_ckpt, tiny):
    model = tiny[1]
    ids, pixels = _inputs(tiny)
    logits = model(ids, images=pixels).logits
    expected = manual_logits(tiny_ckpt, model, ids, pixels)
    assert logits.shape == (1, ids.shape[1] - 1 + 16, model.config.vocab_size)
    assert torch.allclose(logits, expected, atol=1e-5, rtol=0)


def test_loss_ignores_image_and_masked_positions(tiny):
    model = tiny[1]
    ids, pixels = _inputs(tiny)
    labels = ids.clone()
    labels[0, :5] = -100
    labels[labels == IMAGE_TOKEN_INDEX] = -100
    out = model(ids, images=pixels, labels=labels)
    merged = model.prepare_multimodal_inputs(ids, pixels, labels=labels)
    shifted_logits, shifted_labels = out.logits[0, :-1], merged.labels[0, 1:]
    expected = F.cross_entropy(shifted_logits, shifted_labels, ignore_index=-100)
    assert torch.allclose(out.loss, expected, atol=1e-6)
    assert (merged.labels[0] != -100).sum() == (labels[0] != -100).sum()


@torch.no_grad()
def test_greedy_generate_with_cache_equals_without(tiny):
    model = tiny[1]
    ids, pixels = _inputs(tiny)
    cached = model.generate(input_ids=ids, images=pixels, max_new_tokens=12, do_sample=False, use_cache=True)
    uncached = model.generate(ids, images=pixels, max_new_tokens=12, do_sample=False, use_cache=False)
    manual = ids
    for _ in range(12):  # reference: full forward at every step, no cache at all
        next_token = model(manual, images=pixels).logits[:, -1].argmax(-1, keepdim=True)
        manual = torch.cat([manual, next_token], dim=1)
    assert cached.tolist() == uncached.tolist() == manual[:, ids.shape[1] :].tolist()


@torch.no_grad()
def test_left_padded_batch_equals_single(tiny):
    tokenizer, model, processor, _ = tiny
    prompts = [
        "USER: <image>\nWhat is this? ASSISTANT:",
        "A much longer preamble about many things. USER: <image>\nDescribe the picture in detail please. ASSISTANT:",
        "USER: no image here, only text ASSISTANT:",
        "USER: <image> and <image>\ncompare ASSISTANT:",
    ]
    images_per_prompt = [[random_image(1)], [random_image(2, (40, 90))], [], [random_image(3), random_image(4)]]
    rows = [tokenizer_image_token(p, tokenizer) for p in prompts]
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    flat_images = [image for images in images_per_prompt for image in images]
    pixels = process_images(flat_images, processor, model.config)
    kwargs = dict(max_new_tokens=10, do_sample=False, pad_token_id=0)
    batch = model.generate(ids, images=pixels, attention_mask=mask, **kwargs)
    for i, (row, images) in enumerate(zip(rows, images_per_prompt, strict=True)):
        single_ids = torch.tensor([row])
        pixels = process_images(images, processor, model.config) if images else None
        single = model.generate(single_ids, images=pixels, **kwargs)  # new tokens only, with or without images
        assert batch[i].tolist() == single[0].tolist(), f"row {i} differs"


@torch.no_grad()
def test_image_token_count_mismatch_is_loud(tiny):
    model = tiny[1]
    ids, pixels = _inputs(tiny, "USER: <image> <image>\nhi ASSISTANT:")
    with pytest.raises(ValueError, match="the prompts hold 2 <image> tokens .* but 1 images were given"):
        model(ids, images=pixels)
    with pytest.raises(ValueError, match="no images were given"):
        model(ids)
    with pytest.raises(ValueError, match="no images were given"):
        model.generate(ids, max_new_tokens=2)
    plain_ids = tiny[0]("USER: what is this? ASSISTANT:", return_tensors="pt").input_ids  # no placeholder
    with pytest.raises(ValueError, match="the prompts hold 0 <image> tokens .* but 1 images were given"):
        model.generate(plain_ids, images=pixels, max_new_tokens=2)


@torch.no_grad()
def test_original_style_decoding_loop_with_images_every_step(tiny):
    """Passing images again at cached decoding steps (as 4.31-era code did) changes nothing."""
    model = tiny[1]
    ids, pixels = _inputs(tiny)
    first = model(ids, images=pixels, use_cache=True)
    next_token = first.logits[:, -1:].argmax(-1)
    cache = first.past_key_values
    mask = torch.ones(1, first.logits.shape[1] + 1, dtype=torch.long)
    with_images = model(next_token, images=pixels, attention_mask=mask, past_key_values=copy.deepcopy(cache))
    without = model(next_token, attention_mask=mask, past_key_values=cache)
    assert torch.equal(with_images.logits, without.logits)


@torch.no_grad()
def test_save_load_round_trip(tiny_ckpt, tiny, tmp_path):
    tokenizer, model, _, _ = tiny
    ids, pixels = _inputs(tiny)
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    assert not any("vision_tower" in k for k in load_file(tmp_path / "saved" / "model.safetensors"))
    shutil.move(tmp_path / "saved", tmp_path / "moved")  # the tower folder travels with the checkpoint
    _, reloaded, _, _ = load_pretrained_model(str(tmp_path / "moved"), None, None, device="cpu")
    assert torch.equal(reloaded(ids, images=pixels).logits, model(ids, images=pixels).logits)


def test_save_pretrained_keeps_a_changed_tower(tiny_ckpt, tmp_path):
    """A tower whose weights changed after loading (e.g. trained) is saved as it is now, not as it was loaded."""
    tokenizer, model, image_processor, _ = load_pretrained_model(str(tiny_ckpt), None, None, device="cpu")
    ids, pixels = _inputs((tokenizer, model, image_processor, None))
    with torch.no_grad():
        model.get_vision_tower().vision_tower.encoder.layers[0].mlp.fc1.weight.mul_(-1.5)
    model.save_pretrained(tmp_path / "saved")
    tokenizer.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["mm_vision_tower"] == "vision_tower"
    assert model.config.mm_vision_tower == "vision_tower"  # restored after saving
    _, reloaded, _, _ = load_pretrained_model(str(tmp_path / "saved"), None, None, device="cpu")
    assert torch.equal(reloaded(ids, images=pixels).logits, model(ids, images=pixels).logits)


@torch.no_grad()
def test_generate_without_images_equals_plain_llama(tiny):
    tokenizer, model, _, _ = tiny
    ids = tokenizer("USER: tell me about the sea ASSISTANT:", return_tensors="pt").input_ids
    ours = model.generate(ids, max_new_tokens=8, do_sample=False)
    reference = plain_llama_like(model).generate(ids, max_new_tokens=8, do_sample=False)
    assert ours.tolist() == reference[:, ids.shape[1] :].tolist()


@torch.no_grad()
def test_float32_pixels_into_a_half_precision_model(tiny_ckpt, tiny):
    """Pixel values straight from process_images (float32) work with a bfloat16 model."""
    ids, pixels = _inputs(tiny)
    _, model, _, _ = load_pretrained_model(str(tiny_ckpt), None, None, device="cpu", dtype="bfloat16")
    logits = model(ids, images=pixels).logits
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
