"""Fidelity on the real ShareGPT4V-7B (run by whoever has the weights; never in CI):

    SHARE4V_7B_PATH=/models/ShareGPT4V-7B [SHARE4V_7B_TOWER=/models/vit] [SHARE4V_7B_GOLDEN=golden.json] \\
        python -m pytest -m slow tests/slow

1. share4v's greedy answers for two example prompts equal an independent computation: transformers' own CLIP and
   Llama with the image features spliced in by hand, greedy-decoded step by step (same fp16 weights, same pixels).
2. With SHARE4V_7B_GOLDEN (a JSON list of {"image", "query", "answer"} written from the original repository's
   `eval_model` output, greedy), the answers are exactly those texts.
"""

import json
import os
from pathlib import Path

import pytest
import torch
from transformers import CLIPVisionModel, LlamaForCausalLM

from share4v.conversation import get_conv_template
from share4v.mm_utils import load_image, process_images, tokenizer_image_token
from share4v.model.builder import load_pretrained_model
from share4v.model.multimodal_encoder.builder import resolve_vision_tower_path

pytestmark = pytest.mark.slow
MODEL = os.environ.get("SHARE4V_7B_PATH")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROMPTS = [("shapes.png", "Describe the image in detail."), ("chart.png", "What does this chart show?")]


@pytest.fixture(scope="module")
def released():
    if not MODEL:
        pytest.skip("set SHARE4V_7B_PATH to a local copy of Lin-Chen/ShareGPT4V-7B")
    tower = os.environ.get("SHARE4V_7B_TOWER")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if device == "cuda" else torch.float32
    return load_pretrained_model(MODEL, None, "ShareGPT4V-7B", device=device, dtype=dtype, vision_tower=tower)


def _prompt(query: str) -> str:
    conv = get_conv_template("vicuna_v1")
    conv.append_message(conv.roles[0], "<image>\n" + query)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt()


@torch.no_grad()
def _reference_answer(model, tokenizer, ids, pixels, max_new_tokens):
    """Greedy decoding through plain transformers modules, no share4v code on the forward path."""
    config = model.config
    tower_path = resolve_vision_tower_path(config.mm_vision_tower, MODEL, os.environ.get("SHARE4V_7B_TOWER"))
    device, dtype = model.device, model.dtype
    clip = CLIPVisionModel.from_pretrained(tower_path, dtype=dtype).to(device)
    llama = LlamaForCausalLM.from_pretrained(MODEL, dtype=dtype).to(device)
    hidden = clip(pixels.to(device, dtype), output_hidden_states=True).hidden_states[config.mm_vision_select_layer]
    projector = model.get_model().mm_projector
    features = projector(hidden[:, 1:])[0]
    position = ids.tolist().index(-200)
    embed = llama.get_input_embeddings()
    sequence = torch.cat([embed(ids[:position].to(device)), features, embed(ids[position + 1 :].to(device))])[None]
    out = []
    for _ in range(max_new_tokens):
        token = llama(inputs_embeds=sequence).logits[0, -1].argmax().item()
        if token == tokenizer.eos_token_id:
            break
        out.append(token)
        sequence = torch.cat([sequence, embed(torch.tensor([[token]], device=device))], dim=1)
    del clip, llama
    return tokenizer.decode(out, skip_special_tokens=True).strip()


@pytest.mark.parametrize(("image", "query"), PROMPTS)
def test_answers_equal_an_independent_computation(released, image, query):
    tokenizer, model, processor, _ = released
    ids = tokenizer_image_token(_prompt(query), tokenizer, return_tensors="pt")
    pixels = process_images([load_image(EXAMPLES / image)], processor, model.config)
    new = model.generate(ids[None].to(model.device), images=pixels.to(model.device, model.dtype),
                         max_new_tokens=64, do_sample=False)  # fmt: skip
    ours = tokenizer.decode(new[0], skip_special_tokens=True).strip()
    assert ours == _reference_answer(model, tokenizer, ids, pixels, 64)


def test_answers_equal_the_original_repository(released):
    golden_file = os.environ.get("SHARE4V_7B_GOLDEN")
    if not golden_file:
        pytest.skip("set SHARE4V_7B_GOLDEN to answers recorded with the original code")
    tokenizer, model, processor, _ = released
    for case in json.loads(Path(golden_file).read_text()):
        ids = tokenizer_image_token(_prompt(case["query"]), tokenizer, return_tensors="pt")[None]
        pixels = process_images([load_image(case["image"])], processor, model.config)
        new = model.generate(ids.to(model.device), images=pixels.to(model.device, model.dtype),
                             max_new_tokens=512, do_sample=False)  # fmt: skip
        assert tokenizer.decode(new[0], skip_special_tokens=True).strip() == case["answer"]
