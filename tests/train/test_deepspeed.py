"""DeepSpeed ZeRO-2 and ZeRO-3 on the CPU (gloo, one process): the same weights as a plain run, and loadable
checkpoints in the released layout. The first DeepSpeed start compiles a small op (~1 min, cached afterwards)."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from share4v.model.builder import load_pretrained_model
from share4v.train.train import train

REPO = Path(__file__).resolve().parents[2]


def _args(world, tiny_ckpt, output_dir):
    return [
        "--model_name_or_path", str(tiny_ckpt), "--version", "v1", "--data_path", str(world["instruct"]),
        "--image_folder", str(world["instruct"].parent), "--image_aspect_ratio", "pad", "--use_cpu", "True",
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False",
        "--tune_entire_model", "True", "--tune_vit_from_layer", "1", "--max_steps", "4",
        "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--save_steps", "2", "--report_to", "none",
        "--dataloader_num_workers", "0", "--output_dir", str(output_dir),
    ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def plain_run(world, tiny_ckpt, tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain") / "out"
    train(argv=_args(world, tiny_ckpt, folder))
    return folder


def _weights(folder):
    return {
        f"{name}:{k}": v
        for name in ("model.safetensors", "vision_tower/model.safetensors")
        for k, v in load_file(folder / name).items()
    }


def _deepspeed_run(config, args, tmp_path):
    env = {
        **os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "HF_HUB_OFFLINE": "1",
        "SHARE4V_CACHE": str(tmp_path / "cache"),
    }  # fmt: skip
    command = [sys.executable, "-m", "share4v.train.train", "--deepspeed", str(REPO / "scripts" / config)]
    result = subprocess.run([*command, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.parametrize("config", ["zero2.json", "zero3.json"])
def test_zero_run_matches_plain_run_and_saves_loadable_checkpoints(world, tiny_ckpt, tmp_path, plain_run, config):
    out = tmp_path / "out"
    _deepspeed_run(config, _args(world, tiny_ckpt, out), tmp_path)
    expected, got = _weights(plain_run), _weights(out)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(expected[key], got[key], atol=1e-4), key
    for folder in (out, out / "checkpoint-2"):
        assert not any("vision_tower" in k for k in load_file(folder / "model.safetensors"))
        _, model, _, _ = load_pretrained_model(str(folder), None, None, device="cpu")
        assert model.config.mm_vision_tower == "vision_tower"


def test_lora_under_zero3_writes_the_whole_trained_tower(world, tiny_ckpt, tmp_path):
    """peft under ZeRO-3 gathers only trainable weights by default; the tower folder needs the frozen ones too."""
    out = tmp_path / "out"
    lora = ["--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8", "--save_strategy", "no"]
    _deepspeed_run("zero3.json", [*_args(world, tiny_ckpt, out), *lora], tmp_path)
    tower = load_file(out / "vision_tower" / "model.safetensors")
    assert len(tower) == len(load_file(tiny_ckpt / "vision_tower" / "model.safetensors"))
    assert all(v.numel() > 0 for v in tower.values())
    _, model, _, _ = load_pretrained_model(str(out), str(tiny_ckpt), None, device="cpu")
    assert model.config.mm_vision_tower == "vision_tower"
