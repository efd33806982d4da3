"""DeepSpeed ZeRO-2 and ZeRO-3 on the CPU (gloo, one process): the same weights as a plain run, and loadable
checkpoints in the released layout; ZeRO-3 over two processes, where it partitions the weights: DDP's weights, an
exact resume, the projector file on every rank. The first DeepSpeed start compiles a small op (~1 min, cached
afterwards)."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

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


def _two_processes(args, tmp_path, *flags):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "share4v.train.train", *args, "--seed", "0", *flags]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "SHARE4V_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_zero3_over_two_processes_equals_ddp_resumes_and_hands_the_projector_file_to_every_rank(
    world, tiny_ckpt, tmp_path
):
    # the recipe's default sharding where ZeRO-3 partitions the weights (two gloo processes): each rank holds half of
    # every weight, rank 0 loads the projector file into the gathered projector, saving gathers the whole model
    projector = tmp_path / "projector.safetensors"
    own = {k: v for k, v in load_file(tiny_ckpt / "model.safetensors").items() if "mm_projector." in k}
    moved = {k: v + 0.1 for k, v in own.items()}
    save_file(moved, projector)
    start = ["--pretrain_mm_mlp_adapter", str(projector)]
    zero3 = ["--deepspeed", str(REPO / "scripts" / "zero3.json")]
    _two_processes(_args(world, tiny_ckpt, tmp_path / "ddp"), tmp_path, *start)
    _two_processes(_args(world, tiny_ckpt, tmp_path / "zero3"), tmp_path, *start, *zero3)
    (tmp_path / "resumed").mkdir()
    shutil.copytree(tmp_path / "zero3" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    _two_processes(_args(world, tiny_ckpt, tmp_path / "resumed"), tmp_path, *start, *zero3)

    ddp, sharded, resumed = (_weights(tmp_path / name) for name in ("ddp", "zero3", "resumed"))
    assert ddp.keys() == sharded.keys() == resumed.keys()
    assert max((ddp[k] - sharded[k]).abs().max().item() for k in ddp) < 1e-5
    assert all(torch.equal(sharded[k], resumed[k]) for k in sharded)
    first_step = load_file(tmp_path / "zero3" / "checkpoint-2" / "model.safetensors")
    for key in moved:  # two steps from the file's projector, not from the checkpoint's own
        assert (first_step[key] - moved[key]).abs().max() < (first_step[key] - own[key]).abs().max()
    _, model, _, _ = load_pretrained_model(str(tmp_path / "zero3"), None, None, device="cpu")
    assert model.config.mm_vision_tower == "vision_tower"
