"""Share4VConfig: defaults, validation, round trip, Auto registration."""

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from share4v.model import Share4VConfig, Share4VLlamaForCausalLM

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
