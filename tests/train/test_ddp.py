"""Plain DDP (no DeepSpeed) on two CPU processes (gloo) through the training entry, stage 1's trainable set with
gradient checkpointing. There transformers asks DDP not to look for unused parameters, so a trainable parameter that
gets no gradient (the ViT's last layer at mm_vision_select_layer -2, as the original marks it) stops the second step."""

import json
import os
import subprocess
import sys

import pytest
import torch

from share4v.model.builder import load_pretrained_model


@pytest.fixture(scope="module")
def run(tiny_ckpt, world, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "out"
    data = world["instruct"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "share4v.train.train"]  # fmt: skip
    args = [
        "--model_name_or_path", str(tiny_ckpt), "--version", "v1", "--data_path", str(data),
        "--image_folder", str(data.parent), "--image_aspect_ratio", "pad", "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False", "--tune_entire_model", "True",
        "--tune_vit_from_layer", "1", "--gradient_checkpointing", "True", "--max_steps", "3",
        "--per_device_train_batch_size", "2", "--learning_rate", "1e-3", "--save_strategy", "no", "--report_to", "none",
        "--logging_steps", "1", "--dataloader_num_workers", "0", "--seed", "0", "--use_cpu", "True",
        "--output_dir", str(out),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_stage_1_with_checkpointing_trains_under_ddp(run):
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert len(losses) == 3 and all(loss == loss for loss in losses)


def test_the_trainable_vit_layer_moves_and_the_frozen_first_one_does_not(run, tiny_ckpt):
    before = load_pretrained_model(str(tiny_ckpt), None, None, device="cpu")[1].get_vision_tower().vision_tower
    after = load_pretrained_model(str(run), None, None, device="cpu")[1].get_vision_tower().vision_tower

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))

    assert same(before.encoder.layers[0], after.encoder.layers[0])
    assert not same(before.encoder.layers[1], after.encoder.layers[1])
