"""LoRA: the adapter checkpoint loads on its base (merged) with the logits of the trained adapter model, and
scripts/merge_lora_weights.py writes a full checkpoint that passes its own logit check."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from share4v.model.builder import load_pretrained_model
from share4v.model.merge_lora import probe_logits
from share4v.train import train as train_module
from share4v.train.train import build_trainer, train

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def lora_run(world, tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "out"
    trainer = train(argv=[
        "--model_name_or_path", str(tiny_ckpt), "--version", "v1", "--data_path", str(world["instruct"]),
        "--image_folder", str(world["instruct"].parent), "--image_aspect_ratio", "pad", "--use_cpu", "True",
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False",
        "--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16", "--max_steps", "12",
        "--per_device_train_batch_size", "4", "--learning_rate", "3e-3", "--save_strategy", "no",
        "--report_to", "none", "--output_dir", str(out), "--logging_steps", "1",
    ])  # fmt: skip
    return trainer, out


def test_lora_trains_adapters_and_projector_only(lora_run):
    trainer, out = lora_run
    names = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert names and all("lora_" in n or ".mm_projector." in n for n in names)
    assert any(".mm_projector." in n for n in names)
    assert {p.name for p in out.iterdir()} >= {
        "adapter_config.json", "adapter_model.safetensors", "non_lora_trainables.safetensors", "config.json"
    }  # fmt: skip
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < losses[0]


def test_lora_checkpoint_loads_merged_with_the_trained_logits(lora_run, tiny_ckpt):
    trainer, out = lora_run
    tokenizer, merged, processor, _ = load_pretrained_model(str(out), str(tiny_ckpt), None, device="cpu")
    trainer.model.eval()
    size = processor.crop_size["height"]
    expected = probe_logits(trainer.model, tokenizer, size)
    assert torch.allclose(probe_logits(merged, tokenizer, size), expected, atol=1e-4)
    _, base, _, _ = load_pretrained_model(str(tiny_ckpt), None, None, device="cpu")
    assert not torch.allclose(probe_logits(base, tokenizer, size), expected, atol=1e-2)  # training changed it


def test_merge_script_saves_a_checked_full_checkpoint(lora_run, tiny_ckpt, tmp_path):
    _, out = lora_run
    result = subprocess.run(
        [sys.executable, "scripts/merge_lora_weights.py", "--model-path", str(out), "--model-base", str(tiny_ckpt),
         "--save-model-path", str(tmp_path / "merged")],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert ": ok" in result.stdout
    assert (tmp_path / "merged" / "model.safetensors").is_file() and (tmp_path / "merged" / "vision_tower").is_dir()
    assert not (tmp_path / "merged" / "adapter_config.json").exists()


def lora_argv(world, tiny_ckpt, out, *flags):
    return [
        "--model_name_or_path", str(tiny_ckpt), "--version", "v1", "--data_path", str(world["instruct"]),
        "--image_folder", str(world["instruct"].parent), "--use_cpu", "True", "--mm_projector_type", "mlp2x_gelu",
        "--lora_enable", "True", "--lora_r", "8", "--report_to", "none", "--output_dir", str(out), *flags,
    ]  # fmt: skip


def adapters(trainer):
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if "lora_A" in name}


def test_seed_decides_the_new_adapters(world, tiny_ckpt, tmp_path):
    first = adapters(build_trainer(argv=lora_argv(world, tiny_ckpt, tmp_path / "a", "--seed", "3")))
    torch.rand(1000)  # whatever ran before in the process does not matter
    again = adapters(build_trainer(argv=lora_argv(world, tiny_ckpt, tmp_path / "b", "--seed", "3")))
    other = adapters(build_trainer(argv=lora_argv(world, tiny_ckpt, tmp_path / "c", "--seed", "4")))
    assert first and first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not any(torch.equal(first[name], other[name]) for name in first)


def test_the_adapters_do_not_depend_on_what_loading_drew(world, tiny_ckpt, tmp_path, monkeypatch):
    # DeepSpeed ZeRO-3's partitioned loading draws other amounts of randomness than a plain one: a LoRA run under
    # ZeRO-3 started from other adapters than the same run under DDP, with the same --seed
    plain = adapters(build_trainer(argv=lora_argv(world, tiny_ckpt, tmp_path / "a", "--seed", "3")))
    load_model = train_module.load_model
    monkeypatch.setattr(train_module, "load_model", lambda *args: (torch.rand(1000), load_model(*args))[1])
    drawing = adapters(build_trainer(argv=lora_argv(world, tiny_ckpt, tmp_path / "b", "--seed", "3")))
    assert plain and all(torch.equal(plain[name], drawing[name]) for name in plain)
