"""The fast training step (packed micro-batches, loss without full logits) trains exactly as the padded recipe."""

import logging
from types import SimpleNamespace

import pytest
import torch

from share4v.model.builder import load_pretrained_model
from share4v.model.packed_attention import PACKED_ATTENTION
from share4v.train.model_setup import compiles_decoder_layers, configure_step_speedups
from share4v.train.train import train
from tests.train.test_train import COMMON


def run(world, output_dir, *flags):
    return train(argv=[
        *COMMON, "--model_name_or_path", str(world["llm"]), "--version", "v1",
        "--data_path", str(world["instruct"]), "--image_folder", str(world["instruct"].parent),
        "--vision_tower", str(world["tower"]), "--pretrain_mm_mlp_adapter", str(world["projector"]),
        "--image_aspect_ratio", "pad", "--gradient_accumulation_steps", "2", "--max_steps", "4",
        "--output_dir", str(output_dir), *flags,
    ])  # fmt: skip


@pytest.fixture(scope="module")
def runs(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("speedups")
    padded = run(world, root / "padded", "--pack_sequences", "False", "--fused_cross_entropy", "False")
    fast = run(world, root / "fast")  # the defaults
    return padded, fast


def logged(trainer, key):
    return [entry[key] for entry in trainer.state.log_history if "loss" in entry]


def test_packed_fused_training_follows_the_padded_run(runs):
    padded, fast = runs
    assert fast.model.config._attn_implementation == PACKED_ATTENTION
    assert padded.model.config._attn_implementation == "sdpa"
    for key in ("loss", "grad_norm"):
        expected, actual = logged(padded, key), logged(fast, key)
        assert len(expected) == 4
        for step, (a, b) in enumerate(zip(actual, expected, strict=True)):
            assert abs(a - b) <= 1e-4 * abs(b), (key, step, actual, expected)


def test_every_log_line_has_useful_tokens_per_second(runs):
    _, fast = runs
    rates = logged(fast, "tokens_per_second")
    assert len(rates) == 4 and all(rate > 0 for rate in rates)


def model_recording_compiles(tiny_ckpt) -> tuple[torch.nn.Module, list]:
    """A tiny model whose decoder layers record `compile()` calls in the list instead of compiling (the compile itself
    is not what these tests check)."""
    _, model, _, _ = load_pretrained_model(str(tiny_ckpt), None, "weights", device="cpu")
    compiled = []
    for layer in model.get_model().layers:
        layer.compile = lambda layer=layer: compiled.append(layer)
    return model, compiled


def test_compiled_layers_warn_where_they_are_untested(tiny_ckpt, caplog):
    """--compile_decoder_layers with only some layers checkpointed (or ZeRO-3) has not been checked: the run says so;
    with every layer checkpointed, or none, it has."""
    model, compiled = model_recording_compiles(tiny_ckpt)
    flags = dict(fused_cross_entropy=True, pack_sequences=False, compile_decoder_layers=True)
    configure_step_speedups(model, SimpleNamespace(**flags, gradient_checkpointing=False))
    configure_step_speedups(model, SimpleNamespace(**flags, gradient_checkpointing=True))
    assert "has not been measured" not in caplog.text and len(compiled) == 2 * len(model.get_model().layers)
    total = len(model.get_model().layers)  # N = all of them: every layer, as --gradient_checkpointing alone
    every = SimpleNamespace(**flags, gradient_checkpointing=True, gradient_checkpointing_layers=total)
    configure_step_speedups(model, every)
    assert "has not been measured" not in caplog.text
    partial = SimpleNamespace(**flags, gradient_checkpointing=True, gradient_checkpointing_layers=1)
    configure_step_speedups(model, partial)
    assert "--compile_decoder_layers with --gradient_checkpointing_layers has not been measured" in caplog.text


CUDA = torch.device("cuda")  # a device object only: nothing is allocated on it


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (dict(device=CUDA), True),  # unset, training on a GPU: on
        (dict(device=torch.device("cpu")), False),
        (dict(device=CUDA, gradient_checkpointing=True), True),  # every layer checkpointed: measured (FSDP2)
        (dict(device=CUDA, gradient_checkpointing=True, gradient_checkpointing_layers=16), False),  # not measured: off
        (dict(device=CUDA, gradient_checkpointing=True, gradient_checkpointing_layers=16, layers=32), False),
        (dict(device=CUDA, gradient_checkpointing=True, gradient_checkpointing_layers=32, layers=32), True),  # all
        (dict(device=CUDA, gradient_checkpointing=True, gradient_checkpointing_layers=0, layers=32), True),  # none
        (dict(device=CUDA, gradient_checkpointing_layers=16), True),  # without --gradient_checkpointing: no effect
        (dict(device=CUDA, deepspeed="scripts/zero3.json"), False),
        (dict(device=CUDA, lora_enable=True), False),
        (dict(device=CUDA, bits=4), False),
        (dict(device=CUDA, world_size=2), False),  # DDP: not measured
        (dict(device=CUDA, world_size=2, fsdp=True), True),  # bare --fsdp (the config file says how)
        (dict(device=CUDA, torch_compile=True), False),  # the Trainer compiles the whole model
        (dict(device=CUDA, compile_decoder_layers=False), False),  # given: as given
        (dict(device=torch.device("cpu"), compile_decoder_layers=True), True),
        (dict(device=CUDA, gradient_checkpointing=True, compile_decoder_layers=True), True),
    ],
)
def test_decoder_layers_compile_by_default_where_measured(monkeypatch, given, expected):
    given = dict(given)
    monkeypatch.setenv("WORLD_SIZE", str(given.pop("world_size", 1)))  # what torchrun sets
    defaults = dict(compile_decoder_layers=None, deepspeed=None, gradient_checkpointing=False, lora_enable=False,
                    bits=16, fsdp="", torch_compile=False, gradient_checkpointing_layers=None)  # fmt: skip
    layers = given.pop("layers", None)  # the model's decoder layers, where known
    assert compiles_decoder_layers(SimpleNamespace(**{**defaults, **given}), layers) is expected


def test_the_run_says_when_it_compiles_by_default(tiny_ckpt, caplog):
    model, compiled = model_recording_compiles(tiny_ckpt)
    flags = dict(fused_cross_entropy=True, pack_sequences=False, gradient_checkpointing=False)
    with caplog.at_level(logging.INFO, logger="share4v"):
        configure_step_speedups(model, SimpleNamespace(**flags, compile_decoder_layers=None, device=CUDA))
    assert len(compiled) == len(model.get_model().layers)
    assert "compiled decoder layers (the default on a CUDA GPU; --compile_decoder_layers False turns it off)" in (
        caplog.text
    )


@pytest.mark.parametrize("checkpointing", ["False", "True"])
def test_compiled_layers_train_as_the_eager_ones(world, runs, tmp_path, checkpointing):
    """fp32 on the CPU (inductor's C++ kernels): the compiled step's losses and gradient norms are the eager one's,
    with every layer recomputing its activations in the backward pass (compiled code replayed) or none."""
    _, fast = runs
    assert all(layer._compiled_call_impl is None for layer in fast.model.get_model().layers)  # the CPU's default
    compiled = run(world, tmp_path, "--compile_decoder_layers", "True", "--gradient_checkpointing", checkpointing)
    layers = compiled.model.get_model().layers
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert all(layer.gradient_checkpointing == (checkpointing == "True") for layer in layers)
    for key in ("loss", "grad_norm"):
        expected, actual = logged(fast, key), logged(compiled, key)
        assert len(actual) == 4
        for step, (a, b) in enumerate(zip(actual, expected, strict=True)):
            assert abs(a - b) <= 1e-5 * abs(b), (key, step, actual, expected)
