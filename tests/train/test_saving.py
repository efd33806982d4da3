"""Saving in the released layouts refuses to write a vision tower folder from incomplete weights."""

import pytest

from share4v.model.builder import load_pretrained_model
from share4v.train.saving import save_training_checkpoint


def test_incomplete_tower_weights_are_an_error_not_a_broken_folder(tiny_ckpt, tmp_path):
    _, model, _, _ = load_pretrained_model(str(tiny_ckpt), None, None, device="cpu")
    model.config.tune_mm_mlp_adapter = True  # the projector-only layout, which writes the tower from the state
    state = {k: v for k, v in model.state_dict().items() if "encoder.layers.0." not in k}  # as if half gathered
    with pytest.raises(RuntimeError, match=r"hold \d+ of the vision tower's \d+ tensors"):
        save_training_checkpoint(model, tmp_path / "out", state, save_vision_tower_folder=True)
    assert not (tmp_path / "out" / "vision_tower").exists()
    save_training_checkpoint(model, tmp_path / "ok", None, save_vision_tower_folder=True)
    assert (tmp_path / "ok" / "vision_tower" / "model.safetensors").is_file()
    assert (tmp_path / "ok" / "mm_projector.safetensors").is_file()
