"""--gradient_checkpointing_layers N: in the training step the first N decoder layers run their forward again in the
backward pass, the others once, and the step computes what it computes without checkpointing.
--gradient_checkpointing_policy selective: the checkpointed layers run again without their matrix multiplications
and attention (kept from the forward pass), and the step computes the same."""

import logging
from types import SimpleNamespace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import TrainerCallback

from share4v.model.builder import load_pretrained_model
from share4v.train.model_setup import checkpointed_layers, configure_step_speedups
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


class CountedKernels(TorchDispatchMode):
    """How many matrix multiplications ran (attention's on the CPU included: SDPA's math path, two `bmm`s), and how
    many attention kernels' forwards (on CUDA: the variable-length flash kernel of packed micro-batches, SDPA's). A
    kept output that a recomputation reuses does not run again, so it is not counted."""

    MATMULS = frozenset((torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default))

    def __init__(self):
        super().__init__()
        self.matmuls = self.attention = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.name()
        self.matmuls += func in self.MATMULS
        self.attention += ("attn" in name or "attention" in name) and "backward" not in name
        return func(*args, **(kwargs or {}))


def one_step(world, output_dir, *flags, device="cpu"):
    """(how often each decoder layer ran, the gradients of the step, its loss, the kernels that ran) of one training
    step."""
    recorder = GradientsBeforeTheStep()
    arguments = argv(world, output_dir, *flags)
    if device == "cuda":
        arguments[arguments.index("--use_cpu") : arguments.index("--use_cpu") + 2] = ["--bf16", "True"]
    trainer = build_trainer(argv=arguments, callbacks=[recorder])
    tower_layers = trainer.model.get_vision_tower().vision_tower.encoder.layers
    runs = [0] * (len(trainer.model.get_model().layers) + len(tower_layers))
    # a layer's first sub-module: a recomputation replays the layer from its start (transformers 5.24 checkpoints
    # `forward`, so hooks on the layer itself would not see the replay); the LLM's layers first, then the tower's
    first_modules = [layer.input_layernorm for layer in trainer.model.get_model().layers]
    first_modules += [layer.layer_norm1 for layer in tower_layers]
    for index, module in enumerate(first_modules):
        module.register_forward_pre_hook(lambda *_, i=index: runs.__setitem__(i, runs[i] + 1))
    with CountedKernels() as kernels:
        trainer.train()
    (loss,) = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return runs, recorder.grads, loss, kernels


@pytest.fixture(scope="module")
def steps(world, tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("selective")
    return {
        "plain": one_step(world, root / "plain"),
        "all": one_step(world, root / "all", "--gradient_checkpointing", "True"),
        "first": one_step(world, root / "first", "--gradient_checkpointing", "True",
                          "--gradient_checkpointing_layers", "1"),
        "selective": one_step(world, root / "selective", "--gradient_checkpointing", "True",
                              "--gradient_checkpointing_policy", "selective"),
        "selective first": one_step(world, root / "selective-first", "--gradient_checkpointing", "True",
                                    "--gradient_checkpointing_policy", "selective",
                                    "--gradient_checkpointing_layers", "1"),
        # stage 1: ViT layers from 1 on train (layer 2 stays frozen: the feature is layer 1's output)
        "vit plain": one_step(world, root / "vit-plain", *TUNE_VIT),
        "vit all": one_step(world, root / "vit-all", *TUNE_VIT, "--gradient_checkpointing", "True"),
        "vit selective": one_step(world, root / "vit-selective", *TUNE_VIT, "--gradient_checkpointing", "True",
                                  "--gradient_checkpointing_policy", "selective"),
        # the reentrant checkpoint needs the inputs to require a gradient: the hooks that do it stay
        "vit reentrant": one_step(world, root / "vit-reentrant", *TUNE_VIT, "--gradient_checkpointing", "True",
                                  "--gradient_checkpointing_kwargs", '{"use_reentrant": true}'),
    }  # fmt: skip


TUNE_VIT = ("--tune_entire_model", "True", "--tune_vit_from_layer", "1")


def test_only_the_first_layers_recompute(steps):
    frozen_tower = [1, 1, 1]  # its layers run once: no backward pass goes through them (`apply_checkpointing`)
    assert steps["plain"][0] == [1, 1, *frozen_tower]
    assert steps["all"][0] == [2, 2, *frozen_tower]
    assert steps["first"][0] == [2, 1, *frozen_tower]
    assert steps["selective"][0] == [2, 2, *frozen_tower]
    assert steps["selective first"][0] == [2, 1, *frozen_tower]
    assert steps["vit plain"][0] == [1, 1, 1, 1, 1]
    assert steps["vit all"][0] == steps["vit selective"][0] == [2, 2, 1, 2, 1]  # the trained ViT layer recomputes


def test_the_selective_policy_recomputes_no_matmul(steps):
    plain, full, first = (steps[name][3].matmuls for name in ("plain", "all", "first"))
    assert full > first > plain > 0  # a full recomputation runs each checkpointed layer's matmuls again
    assert steps["selective"][3].matmuls == plain
    assert steps["selective first"][3].matmuls == plain
    assert steps["vit all"][3].matmuls > steps["vit plain"][3].matmuls == steps["vit selective"][3].matmuls


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the variable-length attention kernel runs on CUDA")
def test_the_selective_policy_keeps_the_cuda_attention(world, tmp_path):
    """bf16 packed micro-batches on CUDA: attention is PyTorch's variable-length flash kernel, which the selective
    policy must keep as it keeps matmuls."""
    checkpointing = ("--gradient_checkpointing", "True")
    plain = one_step(world, tmp_path / "plain", device="cuda")[3]
    full = one_step(world, tmp_path / "full", *checkpointing, device="cuda")[3]
    selective = one_step(world, tmp_path / "selective", *checkpointing, "--gradient_checkpointing_policy",
                         "selective", device="cuda")[3]  # fmt: skip
    assert full.attention > plain.attention > 0 and full.matmuls > plain.matmuls > 0
    assert (selective.attention, selective.matmuls) == (plain.attention, plain.matmuls)


@pytest.mark.parametrize(
    ("plain", "name"),
    [("plain", "all"), ("plain", "first"), ("plain", "selective"), ("plain", "selective first"),
     ("vit plain", "vit all"), ("vit plain", "vit selective"), ("vit plain", "vit reentrant")],
)  # fmt: skip
def test_checkpointing_computes_the_plain_step(steps, plain, name):
    _, plain_grads, plain_loss, _ = steps[plain]
    if plain == "vit plain":
        assert any("vision_tower.vision_tower.encoder.layers.1." in key for key in plain_grads)
    _, grads, loss, _ = steps[name]
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


def test_a_policy_the_run_cannot_use_is_one_line(world, tmp_path):
    flags = ["--gradient_checkpointing", "True", "--gradient_checkpointing_policy", "selective",
             "--gradient_checkpointing_kwargs", '{"use_reentrant": true}']  # fmt: skip
    with pytest.raises(ValueError, match=r"^--gradient_checkpointing_policy selective needs the non-reentrant"):
        build_trainer(argv=argv(world, tmp_path, *flags))
    with pytest.raises(SystemExit):  # argparse's choices: "invalid choice: 'some'"
        build_trainer(argv=argv(world, tmp_path, "--gradient_checkpointing_policy", "some"))


def test_the_run_says_which_policy_checkpoints(tiny_ckpt, caplog):
    _, model, _, _ = load_pretrained_model(str(tiny_ckpt), None, "weights", device="cpu")
    flags = dict(fused_cross_entropy=True, pack_sequences=False, compile_decoder_layers=False,
                 gradient_checkpointing_policy="selective")  # fmt: skip
    with caplog.at_level(logging.INFO, logger="share4v"):
        configure_step_speedups(model, SimpleNamespace(**flags, gradient_checkpointing=True))
    assert "selective activation checkpointing (matmul and attention outputs kept) in all 2 decoder layers" in (
        caplog.text
    )
    caplog.clear()
    configure_step_speedups(model, SimpleNamespace(**flags, gradient_checkpointing=False))
    assert "--gradient_checkpointing_policy selective has no effect without --gradient_checkpointing" in caplog.text
