"""CLIPVisionTower: hidden state of the selected layer, patch tokens or CLS + patches."""

import pytest
import torch
from transformers import CLIPVisionModel

from share4v.model.multimodal_encoder.clip_encoder import CLIPVisionTower


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
