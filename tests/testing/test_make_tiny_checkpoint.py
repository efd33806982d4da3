"""The tiny checkpoint is written in the released on-disk format."""

import json
import subprocess
import sys

import pytest
from safetensors import safe_open
from transformers import AutoTokenizer

from share4v.testing.make_tiny_checkpoint import make_tiny_checkpoint
from tests.helpers import file_modes, folder_modes, umask


def test_files_and_tensor_names(tiny_ckpt):
    names = sorted(p.name for p in tiny_ckpt.iterdir())
    assert names == [
        "config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "vision_tower",
    ]
    assert sorted(p.name for p in (tiny_ckpt / "vision_tower").iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    config = json.loads((tiny_ckpt / "config.json").read_text())
    assert config["model_type"] == "share4v" and config["architectures"] == ["Share4VLlamaForCausalLM"]
    assert config["mm_vision_tower"] == "vision_tower" and config["mm_projector_type"] == "mlp2x_gelu"
    assert (config["mm_vision_select_layer"], config["image_aspect_ratio"]) == (-2, "pad")
    with safe_open(tiny_ckpt / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert {
        "model.embed_tokens.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.mm_projector.0.weight",
        "model.mm_projector.0.bias",
        "model.mm_projector.2.weight",
        "model.mm_projector.2.bias",
        "model.layers.1.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
    } <= keys
    assert not any("vision_tower" in k for k in keys)
    with safe_open(tiny_ckpt / "vision_tower" / "model.safetensors", "pt") as weights:
        assert all(k.startswith("vision_model.") for k in weights.keys())


def test_tokenizer_is_llama_like(tiny_ckpt):
    tokenizer = AutoTokenizer.from_pretrained(tiny_ckpt)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token == "<unk>" and len(tokenizer) == 512
    ids = tokenizer("What is in the picture?").input_ids
    assert ids[0] == 1 and 2 not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "What is in the picture?"
    assert tokenizer("hi</s>").input_ids[-1] == 2


def test_same_seed_same_weights_and_kept_on_rerun(tmp_path):
    a = make_tiny_checkpoint(tmp_path / "a")
    b = make_tiny_checkpoint(tmp_path / "b")
    for name in ("model.safetensors", "tokenizer.model", "vision_tower/model.safetensors"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    stamp = (a / "model.safetensors").stat().st_mtime_ns
    make_tiny_checkpoint(a)  # an existing checkpoint is kept
    assert (a / "model.safetensors").stat().st_mtime_ns == stamp
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    with pytest.raises(FileExistsError, match="is not a checkpoint"):
        make_tiny_checkpoint(tmp_path / "junk")
    assert not list(tmp_path.glob(".*"))  # no staging folder left behind


def test_cli(tmp_path):
    out = tmp_path / "cli"
    run = [sys.executable, "-m", "share4v.testing.make_tiny_checkpoint", str(out), "--seed", "3"]
    first = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    again = subprocess.run(run, capture_output=True, text=True, check=True).stdout
    assert "wrote a tiny random share4v checkpoint" in first and "kept the existing checkpoint" in again
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert weights.get_tensor("lm_head.weight").shape == (512, 64)


@pytest.mark.parametrize(("mask", "file", "folder"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)], ids=["022", "077"])
def test_the_checkpoint_gets_the_modes_of_plain_writes(tmp_path, mask, file, folder):
    """Neither the staging folder renamed into place (tempfile's owner-only 0o700) nor the weights (safetensors'
    owner-only 0o600, safetensors/safetensors#782) keep other users out; under umask 0o077 all stay private."""
    with umask(mask):
        made = make_tiny_checkpoint(tmp_path / "tiny")
    assert folder_modes(made) == {folder} and file_modes(made) == {file}
    assert len(list(made.rglob("*.safetensors"))) == 2  # the LLM's and the vision tower's
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]
