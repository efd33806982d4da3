"""The DeepSpeed configs in scripts/ leave the learning-rate schedule to the Trainer: a "scheduler" block would make
transformers hand the schedule to DeepSpeed and ignore --lr_scheduler_type (the recipe's cosine) without a word."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers.integrations.deepspeed import deepspeed_optim_sched

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.mark.parametrize("name", sorted(p.name for p in SCRIPTS.glob("zero*.json")))
def test_the_trainer_schedules_the_learning_rate(name):
    config = json.loads((SCRIPTS / name).read_text())
    assert "scheduler" not in config
    if "optimizer" not in config:
        return  # transformers builds optimizer and scheduler itself
    # DeepSpeed's optimizer (zero3_offload.json, as the original's) with the Trainer's scheduler (transformers' case
    # "HF scheduler + DS optimizer", offload included): the scheduler DeepSpeed gets is built by the Trainer
    hf_config = SimpleNamespace(config=config, is_offload=lambda: "offload_optimizer" in config["zero_optimization"])
    _, scheduler = deepspeed_optim_sched(None, hf_config, None, num_training_steps=10, model_parameters=[])
    assert scheduler.lr_scheduler_callable is not None
