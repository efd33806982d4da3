"""Saving in the released layouts refuses to write a vision tower folder from incomplete weights; a projector-only
checkpoint resumes with the input embeddings it trained; every layout's files get the mode of a plain write."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from share4v.model import builder
from share4v.model.builder import load_pretrained_model
from share4v.train.saving import EMBED_TOKENS_KEY, load_training_checkpoint, save_training_checkpoint
from tests.helpers import file_modes, umask


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


def _projector_run_model(tiny_ckpt):
    _, model, _, _ = load_pretrained_model(str(tiny_ckpt), None, None, device="cpu")
    model.config.tune_mm_mlp_adapter = model.config.mm_use_im_start_end = True  # projector + <im_start>/<im_end>
    return model


def test_resuming_a_projector_run_restores_its_input_embeddings(tiny_ckpt, tmp_path):
    trained = _projector_run_model(tiny_ckpt)
    with torch.no_grad():
        trained.get_input_embeddings().weight.add_(1.0)  # as the run trained them
        trained.get_model().mm_projector[0].weight.add_(1.0)
    save_training_checkpoint(trained, tmp_path / "checkpoint-2")
    assert EMBED_TOKENS_KEY in load_file(tmp_path / "checkpoint-2" / "mm_projector.safetensors")
    resumed = _projector_run_model(tiny_ckpt)
    load_training_checkpoint(resumed, tmp_path / "checkpoint-2")
    assert torch.equal(resumed.get_input_embeddings().weight, trained.get_input_embeddings().weight)
    assert torch.equal(resumed.get_model().mm_projector[0].weight, trained.get_model().mm_projector[0].weight)
    # the same file loads for inference, embeddings included: the reading load_pretrained_model does
    fresh = _projector_run_model(tiny_ckpt)
    builder._load_projector(fresh, tmp_path / "checkpoint-2")
    assert torch.equal(fresh.get_input_embeddings().weight, trained.get_input_embeddings().weight)


def test_embeddings_of_another_vocabulary_are_a_clear_error(tiny_ckpt, tmp_path):
    model = _projector_run_model(tiny_ckpt)
    save_training_checkpoint(model, tmp_path / "checkpoint-1")
    path = tmp_path / "checkpoint-1" / "mm_projector.safetensors"
    state = load_file(path)
    state[EMBED_TOKENS_KEY] = state[EMBED_TOKENS_KEY][:-2].contiguous()
    save_file(state, path)
    with pytest.raises(ValueError, match=r"mm_projector.safetensors: model.embed_tokens.weight has shape"):
        load_training_checkpoint(_projector_run_model(tiny_ckpt), tmp_path / "checkpoint-1")


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)], ids=["022", "077"])
@pytest.mark.parametrize("layout", ["full", "projector", "lora"])
def test_saved_weights_get_the_mode_of_a_plain_write(tiny_ckpt, tmp_path, layout, mask, mode):
    """Not safetensors' owner-only 0o600 (safetensors/safetensors#782), whoever writes them: transformers'
    save_pretrained (full), our save_file (projector, non-LoRA weights, vision tower), peft (adapter)."""
    _, model, _, _ = load_pretrained_model(str(tiny_ckpt), None, None, device="cpu")
    if layout == "projector":
        model.config.tune_mm_mlp_adapter = True
    elif layout == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    with umask(mask):
        save_training_checkpoint(model, tmp_path / "out", save_vision_tower_folder=True)
    weights = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.safetensors"))
    assert weights == {
        "full": ["model.safetensors"],
        "projector": ["mm_projector.safetensors"],
        "lora": ["adapter_model.safetensors", "non_lora_trainables.safetensors"],
    }[layout] + ["vision_tower/model.safetensors"]
    assert file_modes(tmp_path / "out") == {mode}


@pytest.mark.parametrize("layout", ["full", "projector", "lora"])
def test_saving_over_a_restricted_checkpoint_keeps_its_modes(tiny_ckpt, tmp_path, layout):
    """As a plain write over an existing file: weights the user made owner-only stay so when a save writes over them,
    and a `*.safetensors` the save does not write (an earlier run's) keeps its mode; new files get the default."""
    _, model, _, _ = load_pretrained_model(str(tiny_ckpt), None, None, device="cpu")
    if layout == "projector":
        model.config.tune_mm_mlp_adapter = True
    elif layout == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    out = tmp_path / "out"
    with umask(0o022):
        save_training_checkpoint(model, out, save_vision_tower_folder=True)
        restricted = sorted(out.rglob("*.safetensors"))
        save_file({"a": torch.ones(1)}, out / "stray.safetensors")  # safetensors' own: 0o600, not this save's
        for path in restricted:
            path.chmod(0o600)
        save_training_checkpoint(model, out, save_vision_tower_folder=True)
    assert file_modes(out, "*.safetensors") == {0o600} and file_modes(out, "*.json") == {0o644}


def test_a_quantized_runs_loading_stays_out_of_the_saved_config(tiny_ckpt, tmp_path):
    # a 4/8-bit run (QLoRA) saves unquantized adapters and projector: a quantization_config in config.json would
    # make loaders read the base weights as pre-quantized ones (the merge script failed so on a GPU)
    from transformers import BitsAndBytesConfig

    model = _projector_run_model(tiny_ckpt)
    model.config.quantization_config = BitsAndBytesConfig(load_in_4bit=True)  # what transformers sets when loading
    save_training_checkpoint(model, tmp_path / "checkpoint-2")
    saved = json.loads((tmp_path / "checkpoint-2" / "config.json").read_text())
    assert "quantization_config" not in saved and saved["tune_mm_mlp_adapter"] is True
    assert model.config.quantization_config.load_in_4bit  # the running model keeps it
