"""Config validation, projector shapes and names, vision-tower feature selection."""

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, CLIPVisionModel

from share4v.model import Share4VConfig, Share4VLlamaForCausalLM
from share4v.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from share4v.model.multimodal_projector.builder import IdentityMap, build_vision_projector

SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


def test_config_defaults_and_round_trip(tmp_path):
    config = Share4VConfig(**SMALL, mm_vision_tower="tower", mm_hidden_size=8, mm_projector_type="mlp2x_gelu")
    assert config.model_type == "share4v" and config.is_multimodal
    assert (config.mm_vision_select_feature, config.mm_use_im_patch_token, config.image_aspect_ratio) == (
        "patch",
        True,
        "square",
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, Share4VConfig)
    assert (loaded.mm_vision_tower, loaded.mm_hidden_size, loaded.mm_projector_type) == ("tower", 8, "mlp2x_gelu")
    assert not Share4VConfig(**SMALL).is_multimodal


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("mm_projector_type", "mlp2x_relu", "unknown mm_projector_type 'mlp2x_relu'"),
        ("mm_vision_select_feature", "cls", "unknown mm_vision_select_feature 'cls'"),
        ("image_aspect_ratio", "anyres", "unknown image_aspect_ratio 'anyres'"),
    ],
)
def test_config_rejects_unknown_values(key, value, message):
    with pytest.raises(ValueError, match=message):
        Share4VConfig(**SMALL, **{key: value})


def test_config_needs_feature_width_with_a_tower():
    with pytest.raises(ValueError, match="mm_hidden_size"):
        Share4VConfig(**SMALL, mm_vision_tower="tower")


def test_auto_classes_know_share4v():
    config = Share4VConfig(**SMALL)
    assert isinstance(AutoModelForCausalLM.from_config(config), Share4VLlamaForCausalLM)


@pytest.mark.parametrize(
    ("kind", "names"),
    [
        ("linear", ["bias", "weight"]),
        ("mlp2x_gelu", ["0.bias", "0.weight", "2.bias", "2.weight"]),
        ("mlp3x_gelu", ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]),
    ],
)
def test_projector_layers(kind, names):
    config = Share4VConfig(**SMALL, mm_hidden_size=8, mm_projector_type=kind)
    projector = build_vision_projector(config)
    assert sorted(name for name, _ in projector.named_parameters()) == names
    assert projector(torch.randn(2, 5, 8)).shape == (2, 5, 16)
    if kind == "mlp2x_gelu":
        assert isinstance(projector[1], nn.GELU)


def test_identity_projector_and_unknown_type():
    config = Share4VConfig(**SMALL, mm_hidden_size=16, mm_projector_type="identity")
    projector = build_vision_projector(config)
    x = torch.randn(1, 2, 16)
    assert isinstance(projector, IdentityMap) and projector(x) is x
    config.mm_projector_type = "resampler"
    with pytest.raises(ValueError, match="unknown mm_projector_type 'resampler'"):
        build_vision_projector(config)


@pytest.mark.parametrize(("layer", "feature"), [(-2, "patch"), (-1, "cls_patch"), (1, "patch")])
def test_vision_tower_selects_layer_and_feature(tiny_ckpt, layer, feature):
    tower = CLIPVisionTower(str(tiny_ckpt / "vision_tower"), select_layer=layer, select_feature=feature)
    tower.load_model()
    reference = CLIPVisionModel.from_pretrained(tiny_ckpt / "vision_tower")
    images = torch.randn(2, 3, 56, 56)
    expected = reference(images, output_hidden_states=True).hidden_states[layer]
    if feature == "patch":
        expected = expected[:, 1:]
    assert torch.allclose(tower(images), expected, atol=1e-6)
    assert tower.num_patches == 16 and tower.hidden_size == 32
    assert all(not p.requires_grad for p in tower.parameters())


def test_vision_tower_must_be_loaded():
    with pytest.raises(RuntimeError, match="not loaded"):
        CLIPVisionTower("somewhere")(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="unknown mm_vision_select_feature"):
        CLIPVisionTower("somewhere", select_feature="cls")
