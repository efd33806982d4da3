"""Resume: N steps straight equal N/2 steps, a crash, and a resumed run to N (weights, optimizer, scheduler,
sampler position, RNG), for a stage-1-style run (ViT layers trained) and a LoRA run."""

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from share4v.train.train import train

STEPS, SAVE_EVERY, CRASH_AT = 16, 5, 8  # 27 samples / batch 2: the checkpoint is mid-epoch, the run crosses epochs


class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == CRASH_AT:
            raise KeyboardInterrupt("simulated crash")


def argv(world, tiny_ckpt, output_dir, lora):
    common = [
        "--model_name_or_path", str(tiny_ckpt), "--version", "v1", "--data_path", str(world["instruct"]),
        "--image_folder", str(world["instruct"].parent), "--image_aspect_ratio", "pad",
        "--group_by_modality_length", "True", "--use_cpu", "True", "--report_to", "none", "--seed", "3",
        "--per_device_train_batch_size", "2", "--max_steps", str(STEPS), "--learning_rate", "1e-3",
        "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.2", "--weight_decay", "0.1",
        "--mm_projector_lr", "3e-3", "--save_strategy", "steps", "--save_steps", str(SAVE_EVERY),
        "--dataloader_num_workers", "0", "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2",
        "--mm_use_im_patch_token", "False", "--output_dir", str(output_dir),
    ]  # fmt: skip
    if lora:
        return [*common, "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8", "--lora_dropout", "0.0"]
    return [*common, "--tune_entire_model", "True", "--tune_vit_from_layer", "1"]


def final_weights(folder, lora):
    files = ["adapter_model.safetensors", "non_lora_trainables.safetensors"] if lora else ["model.safetensors"]
    if not lora:
        files.append("vision_tower/model.safetensors")
    return {f"{name}:{k}": v for name in files for k, v in load_file(folder / name).items()}


@pytest.mark.parametrize("lora", [False, True], ids=["stage1-vit", "lora"])
def test_resumed_run_equals_straight_run(world, tiny_ckpt, tmp_path, lora):
    straight = train(argv=argv(world, tiny_ckpt, tmp_path / "straight", lora))
    with pytest.raises(KeyboardInterrupt):
        train(argv=argv(world, tiny_ckpt, tmp_path / "crashed", lora), callbacks=[Crash()])
    assert (tmp_path / "crashed" / "checkpoint-5").is_dir() and not (tmp_path / "crashed" / "checkpoint-10").exists()
    resumed = train(argv=argv(world, tiny_ckpt, tmp_path / "crashed", lora))  # finds checkpoint-5 by itself
    assert resumed.state.global_step == straight.state.global_step == STEPS
    expected, got = final_weights(tmp_path / "straight", lora), final_weights(tmp_path / "crashed", lora)
    assert expected.keys() == got.keys() and expected
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    first_losses = [e["loss"] for e in straight.state.log_history if "loss" in e]
    resumed_losses = [e["loss"] for e in resumed.state.log_history if "loss" in e]
    assert resumed_losses[-STEPS + SAVE_EVERY :] == first_losses[SAVE_EVERY:]


def test_measuring_the_matmul_peak_draws_nothing_from_the_default_generator():
    # the trainer measures it at its first step, which on a resumed GPU run comes after the checkpoint's RNG states
    # are restored: a draw from the default generator there changed every later dropout mask (a LoRA run resumed
    # with other adapters than the uninterrupted one, benchmarks/check_quantized.py)
    from share4v.train.throughput import measure_matmul_peak

    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    assert measure_matmul_peak(torch.device("cpu"), size=32, repeats=1) > 0
    assert torch.equal(torch.rand(4), expected)
