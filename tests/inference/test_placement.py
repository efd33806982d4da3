"""`share4v.inference.placement`: a model that fits one GPU stays on it; one that does not is spread as the original
spreads it. The estimate is checked against real parameter counts; the GPUs are faked (CI has none)."""

import pytest
import torch

from share4v.inference import placement
from share4v.model.builder import load_pretrained_model
from share4v.model.checkpoint_checks import read_config
from share4v.testing.make_tiny_checkpoint import TinySpec, make_tiny_checkpoint


@pytest.mark.parametrize("projector_type", ["mlp2x_gelu", "linear", "mlp3x_gelu"])
def test_the_estimate_counts_the_language_model_and_projector_exactly(tmp_path, projector_type):
    checkpoint = make_tiny_checkpoint(tmp_path / "ckpt", TinySpec(projector_type=projector_type))
    _, model, _, _ = load_pretrained_model(str(checkpoint), None, None, device="cpu")
    tower = sum(p.numel() for p in model.get_vision_tower().parameters())
    expected = sum(p.numel() for p in model.parameters()) - tower  # the tiny tower in place of CLIP-L/336
    estimate = placement.estimated_parameters(read_config(checkpoint)) - placement.CLIP_L_336_PARAMETERS
    assert estimate == expected


def test_the_estimate_of_the_released_7b_shape():
    config = {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "vocab_size": 32000, "mm_vision_tower": "Lin-Chen/ShareGPT4V-7B_Pretrained_vit-large336-l12",
              "mm_hidden_size": 1024, "mm_projector_type": "mlp2x_gelu"}  # fmt: skip
    # Vicuna-7B's 6,738,415,616 + the projector's 20,979,712 + the tower
    assert placement.estimated_parameters(config) == 6_738_415_616 + 20_979_712 + placement.CLIP_L_336_PARAMETERS


class FakeGPUs:
    """Two GPUs with `free` bytes free on the current one (index 1)."""

    def __init__(self, monkeypatch, free: int):
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (free, 2 * free))


def test_a_model_that_fits_stays_on_the_current_gpu_and_a_larger_one_is_spread(tiny_ckpt, monkeypatch):
    weight_bytes = placement.estimated_parameters(read_config(tiny_ckpt)) * 2  # fp16, the CUDA default
    FakeGPUs(monkeypatch, free=int(weight_bytes / placement.SHARE_OF_FREE_MEMORY) + 1)
    assert placement.default_device_map(str(tiny_ckpt), {}) == {"": torch.device("cuda", 1)}
    assert placement.default_device_map(str(tiny_ckpt), {"dtype": "float32"}) == "auto"  # twice the bytes
    assert placement.default_device_map(str(tiny_ckpt), {"dtype": "float32", "load_4bit": True}) == {
        "": torch.device("cuda", 1)
    }


def test_one_gpu_or_an_unreadable_config_keeps_the_builders_default(tiny_ckpt, tmp_path, monkeypatch):
    FakeGPUs(monkeypatch, free=10**12)
    assert placement.default_device_map(str(tmp_path / "missing"), {}) == "auto"
    assert placement.default_device_map("no-such-owner/no-such-model", {}) == "auto"  # offline: not in the cache
    (tmp_path / "config.json").write_text('{"model_type": "share4v"}')
    assert placement.default_device_map(str(tmp_path), {}) == "auto"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert placement.default_device_map(str(tiny_ckpt), {}) == "auto"
