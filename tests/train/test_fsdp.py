"""FSDP2 (`--fsdp --fsdp_config scripts/fsdp2.json`) on two CPU processes (gloo), the tiny
model sharded into accelerate's units:
- it computes the unsharded model's loss and gradients;
- it trains on steps where one rank's batch holds only text;
- it runs in bf16 with the policy share4v gives it;
- it saves from its shards in the released layout, and loads such a checkpoint (for resuming) into them.
transformers' Trainer runs FSDP on GPUs only: benchmarks/check_fsdp_training.py runs it there (docs/Performance.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from share4v.train.fsdp import use_fp32_gradients

WORKER = Path(__file__).with_name("fsdp_worker.py")


@pytest.fixture(scope="module")
def reports(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([*command, str(tiny_ckpt), str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def test_sharded_step_equals_the_unsharded_one(reports):
    for report in reports:
        assert report["sharded"]
        assert report["loss_error"] <= 1e-6 and report["grad_names_equal"], report
        assert report["grad_error"] <= 1e-5, report
        assert report["frozen_tower_grads"] == 0


def test_steps_where_one_rank_has_only_text(reports):
    # text-only rows keep the tower and projector in the graph (zero gradients), so the ranks reduce the same
    # gradients; before, such a step stopped the run (a collective that differs between the ranks)
    for report in reports:
        assert report["text_only_leaves_no_more_weights_without_gradient"]
        assert report["steps_with_a_text_only_rank"] == 3 and report["finite_gradient_norms"]


def test_saved_from_the_shards_in_the_released_layout(reports):
    main = reports[0]
    assert main["saved_tensors"] > 50 and main["saved_error"] == 0.0, main


def test_bf16_step_with_fp32_loss(reports):
    for report in reports:
        assert report["bf16_loss_dtype"] == "torch.float32"
        assert report["bf16_loss_error"] <= 1e-2, report


def test_released_checkpoint_loads_into_the_shards(reports):
    for report in reports:
        assert report["loaded_tensors"] > 50
        assert report["load_error"] == 0.0 and report["tower_load_error"] == 0.0, report
        assert report["incomplete_refused"]


def _args(version: int = 2, bf16: bool = True, fp16: bool = False, **plugin) -> SimpleNamespace:
    return SimpleNamespace(fsdp_plugin_args={"fsdp_version": version, **plugin}, bf16=bf16, fp16=fp16)


def test_fp32_gradients_policy():
    args = _args()
    use_fp32_gradients(args)
    policy = args.fsdp_plugin_args["mixed_precision_policy"]
    assert (policy.param_dtype, policy.reduce_dtype, policy.output_dtype) == (torch.bfloat16, torch.float32, None)
    half = _args(bf16=False, fp16=True)
    use_fp32_gradients(half)
    assert half.fsdp_plugin_args["mixed_precision_policy"].param_dtype == torch.float16
    for untouched in (_args(version=1), _args(bf16=False), _args(mixed_precision_policy="mine")):
        before = dict(untouched.fsdp_plugin_args)
        use_fp32_gradients(untouched)
        assert untouched.fsdp_plugin_args == before
    no_fsdp = SimpleNamespace(fsdp_plugin_args=None, bf16=True, fp16=False)
    use_fp32_gradients(no_fsdp)
    assert no_fsdp.fsdp_plugin_args is None
