"""The same model on a GPU: default float16 loading, and CUDA numerics equal to the CPU reference."""

import pytest
import torch

from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.mm_utils import process_images, tokenizer_image_token
from share4v.model.builder import load_pretrained_model
from tests.helpers import random_image

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _logits(loaded):
    tokenizer, model, processor, _ = loaded
    ids = tokenizer_image_token("USER: <image>\nWhat? ASSISTANT:", tokenizer, return_tensors="pt")[None]
    pixels = process_images([random_image(0)], processor, model.config)
    with torch.no_grad():
        return model(ids.to(model.device), images=pixels.to(model.device)).logits.float().cpu()  # float32 pixels


def test_default_cuda_load_is_float16(tiny_ckpt):
    tokenizer, model, processor, _ = loaded = load_pretrained_model(str(tiny_ckpt), None, None)
    assert model.device.type == "cuda" and model.dtype == torch.float16
    tower = model.get_vision_tower()
    assert tower.device.type == "cuda" and tower.dtype == torch.float16
    assert torch.isfinite(_logits(loaded)).all()
    answer = Share4VEngine(tokenizer, model, processor).generate(
        [Chat.single("hi", [random_image(1)])], GenerationParams(temperature=0, max_new_tokens=8)
    )
    assert isinstance(answer[0], str)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_cuda_fp32_matches_cpu(tiny_ckpt, tiny, attn):
    loaded = load_pretrained_model(str(tiny_ckpt), None, None, device="cuda", dtype="float32", attn_implementation=attn)
    assert torch.allclose(_logits(loaded), _logits(tiny), atol=1e-4)


def test_cuda_batch_equals_single(tiny_ckpt):
    engine = Share4VEngine(*load_pretrained_model(str(tiny_ckpt), None, None, device="cuda", dtype="float32"))
    chats = [Chat.single("short?", [random_image(2)]), Chat.single("a longer question about it", [random_image(3)])]
    params = GenerationParams(temperature=0, max_new_tokens=12)
    assert engine.generate(chats, params) == [engine.generate([chat], params)[0] for chat in chats]


def test_bfloat16_is_selectable(tiny_ckpt):
    _, model, _, _ = load_pretrained_model(str(tiny_ckpt), None, None, dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and model.get_vision_tower().dtype == torch.bfloat16


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_model_split_over_two_gpus(tiny_ckpt, tiny):
    device_map = {
        "model.embed_tokens": 0,
        "model.rotary_emb": 0,
        "model.layers.0": 0,
        "model.layers.1": 1,
        "model.norm": 1,
        "model.mm_projector": 1,
        "lm_head": 1,
    }
    loaded = load_pretrained_model(str(tiny_ckpt), None, None, device_map=device_map, dtype="float32")
    assert loaded[1].model.mm_projector[0].weight.device.index == 1
    assert torch.allclose(_logits(loaded), _logits(tiny), atol=1e-4)
    engine = Share4VEngine(*loaded)
    answer = engine.generate([Chat.single("hi", [random_image(4)])], GenerationParams(temperature=0, max_new_tokens=6))
    assert answer == Share4VEngine(*tiny).generate(
        [Chat.single("hi", [random_image(4)])], GenerationParams(temperature=0, max_new_tokens=6)
    )
