"""--gradient_checkpointing_layers N: in the training step the first N decoder layers run their forward again in the
backward pass, the others once, and the step computes what it computes without checkpointing. A frozen vision tower
runs once: no backward pass goes through it."""

import logging
from types import SimpleNamespace

import pytest
import torch
from transformers import TrainerCallback

from share4v.model.builder import load_pretrained_model
from share4v.train.model_setup import _reentrant_checkpoint, checkpointed_layers, configure_step_speedups
from share4v.train.train import build_trainer
from tests.train.test_train import COMMON


def argv(world, output_dir, *flags):
    return [
        *COMMON, "--model_name_or_path", str(world["llm"]), "--version", "v1",
        "--data_path", str(world["instruct"]), "--image_folder", str(world["instruct"].parent),
        "--vision_tower", str(world["tower"]), "--pretrain_mm_mlp_adapter", str(world["projector"]),
        "--image_aspect_ratio", "pad", "--max_steps", "1", "--output_dir", str(output_dir), *flags,
    ]  # fmt: skip


class GradientsBeforeTheStep(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def one_step(world, output_dir, *flags):
    """(how often each decoder layer ran, the LLM's first and then the tower's, the gradients of the step, its loss)
    of one training step."""
    recorder = GradientsBeforeTheStep()
    trainer = build_trainer(argv=argv(world, output_dir, *flags), callbacks=[recorder])
    tower_layers = trainer.model.get_vision_tower().vision_tower.encoder.layers
    runs = [0] * (len(trainer.model.get_model().layers) + len(tower_layers))
    # a layer's first sub-module: a recomputation replays the layer from its start (transformers 5.24 checkpoints
    # `forward`, so hooks on the layer itself would not see the replay); the LLM's layers first, then the tower's
    first_modules = [layer.input_layernorm for layer in trainer.model.get_model().layers]
    first_modules += [layer.layer_norm1 for layer in tower_layers]
    for index, module in enumerate(first_modules):
        module.register_forward_pre_hook(lambda *_, i=index: runs.__setitem__(i, runs[i] + 1))
    trainer.train()
    (loss,) = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return runs, recorder.grads, loss


@pytest.fixture(scope="module")
def steps(world, tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("selective")
    return {
        "plain": one_step(world, root / "plain"),
        "all": one_step(world, root / "all", "--gradient_checkpointing", "True"),
        "first": one_step(world, root / "first", "--gradient_checkpointing", "True",
                          "--gradient_checkpointing_layers", "1"),
        # stage 1: ViT layers from 1 on train (layer 2 stays frozen: the feature is layer 1's output)
        "vit plain": one_step(world, root / "vit-plain", *TUNE_VIT),
        "vit all": one_step(world, root / "vit-all", *TUNE_VIT, "--gradient_checkpointing", "True"),
        # LoRA (peft wraps the model): the hooks are removed through the wrapper; the adapters get their gradients
        "lora plain": one_step(world, root / "lora-plain", *LORA),
        "lora all": one_step(world, root / "lora-all", *LORA, "--gradient_checkpointing", "True"),
        # the reentrant checkpoint needs the inputs to require a gradient: the hooks that do it stay
        "vit reentrant": one_step(world, root / "vit-reentrant", *TUNE_VIT, "--gradient_checkpointing", "True",
                                  "--gradient_checkpointing_kwargs", '{"use_reentrant": true}'),
    }  # fmt: skip


TUNE_VIT = ("--tune_entire_model", "True", "--tune_vit_from_layer", "1")
LORA = ("--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8")


def test_only_the_first_layers_recompute(steps):
    frozen_tower = [1, 1, 1]  # its layers run once: no backward pass goes through them (`apply_checkpointing`)
    assert steps["plain"][0] == [1, 1, *frozen_tower]
    assert steps["all"][0] == [2, 2, *frozen_tower]
    assert steps["first"][0] == [2, 1, *frozen_tower]
    assert steps["vit plain"][0] == [1, 1, 1, 1, 1]
    assert steps["vit all"][0] == [2, 2, 1, 2, 1]  # only the trained ViT layer recomputes
    assert steps["lora plain"][0] == [1, 1, *frozen_tower]
    assert steps["lora all"][0] == [2, 2, *frozen_tower]


@pytest.mark.parametrize(
    ("plain", "name"),
    [("plain", "all"), ("plain", "first"), ("vit plain", "vit all"), ("vit plain", "vit reentrant"),
     ("lora plain", "lora all")],
)  # fmt: skip
def test_checkpointing_computes_the_plain_step(steps, plain, name):
    _, plain_grads, plain_loss = steps[plain]
    if plain == "vit plain":
        assert any("vision_tower.vision_tower.encoder.layers.1." in key for key in plain_grads)
    if plain == "lora plain":
        assert any("lora_" in key for key in plain_grads)
    _, grads, loss = steps[name]
    assert loss == pytest.approx(plain_loss, abs=1e-6)
    assert grads.keys() == plain_grads.keys() and any("layers.1." in key for key in grads)
    for key, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[key], rtol=1e-6, atol=1e-6, msg=f"{name}: {key}")


@pytest.mark.parametrize("layers", ["-1", "3"])
def test_a_layer_count_out_of_range_is_one_line(world, tmp_path, layers):
    flags = ["--gradient_checkpointing", "True", "--gradient_checkpointing_layers", layers]
    with pytest.raises(ValueError, match=rf"^--gradient_checkpointing_layers {layers}: the LLM has 2 decoder layers"):
        build_trainer(argv=argv(world, tmp_path, *flags))


def test_the_run_says_which_layers_checkpoint(tiny_ckpt, caplog):
    _, model, _, _ = load_pretrained_model(str(tiny_ckpt), None, "weights", device="cpu")  # its own: this changes it
    flags = dict(fused_cross_entropy=True, pack_sequences=False, compile_decoder_layers=False)
    with caplog.at_level(logging.INFO, logger="share4v"):
        configure_step_speedups(model, SimpleNamespace(**flags, gradient_checkpointing=True,
                                                       gradient_checkpointing_layers=1))  # fmt: skip
    assert "activation checkpointing in decoder layers 0-0 of 2 (the others keep their activations)" in caplog.text
    assert checkpointed_layers(model, SimpleNamespace(gradient_checkpointing=True)) == 2
    caplog.clear()
    without_checkpointing = SimpleNamespace(gradient_checkpointing=False, gradient_checkpointing_layers=1)
    assert checkpointed_layers(model, without_checkpointing) is None
    assert "--gradient_checkpointing_layers 1 has no effect without --gradient_checkpointing" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "reentrant"),
    [
        (None, False),  # transformers passes use_reentrant=False when given nothing
        ({}, False),
        ({"every_n_layers": 2, "offload": True}, False),  # transformers' own, taken out before the checkpoint
        ({"use_reentrant": False}, False),
        ({"use_reentrant": True}, True),
        ({"preserve_rng_state": False}, True),  # arguments without use_reentrant: torch's default, reentrant
    ],
)
def test_which_checkpoint_the_trainer_runs(kwargs, reentrant):
    assert _reentrant_checkpoint(kwargs) is reentrant
