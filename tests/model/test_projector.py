"""The projector builder: layer layout and names as released, unknown types rejected."""

import pytest
import torch
from torch import nn

from share4v.model import Share4VConfig
from share4v.model.multimodal_projector.builder import IdentityMap, build_vision_projector

SMALL = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)


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
