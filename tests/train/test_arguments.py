"""Arguments: every flag and default of the original, old transformers flags mapped, and the launch scripts'
command lines parsed by the real parser with the recipe's hyper-parameters."""

import logging
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import transformers

from share4v.model import Share4VConfig
from share4v.train.arguments import (
    DataArguments,
    ModelArguments,
    TrainingArguments,
    parse_arguments,
    translate_legacy_flags,
)
from share4v.train.model_setup import resolve_vision_flags

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "sharegpt4v"

ORIGINAL_DEFAULTS = {
    # ModelArguments
    "model_name_or_path": "facebook/opt-125m", "version": "v0", "freeze_backbone": False,
    "tune_mm_mlp_adapter": False, "vision_tower": None, "tune_vision_tower": False, "tune_vit_from_layer": -1,
    "tune_entire_model": False, "pretrain_mm_mlp_adapter": None,
    # DataArguments
    "data_path": None, "lazy_preprocess": False, "is_multimodal": False, "image_folder": None,
    "image_grid_pinpoints": None,
    # TrainingArguments additions
    "cache_dir": None, "optim": "adamw_torch", "remove_unused_columns": False, "freeze_mm_mlp_adapter": False,
    "mpt_attn_impl": "triton", "model_max_length": 512, "double_quant": True, "quant_type": "nf4", "bits": 16,
    "lora_enable": False, "lora_r": 64, "lora_alpha": 16, "lora_dropout": 0.05, "lora_weight_path": "",
    "lora_bias": "none", "mm_projector_lr": None, "vision_tower_lr": None, "group_by_modality_length": False,
}  # fmt: skip


# Unset, these take the starting checkpoint's value, else the original's default (see test_vision_flag_defaults).
CHECKPOINT_OR_ORIGINAL = {
    "mm_vision_select_layer": -1, "mm_projector_type": "linear", "mm_use_im_start_end": False,
    "mm_use_im_patch_token": True, "mm_vision_select_feature": "patch", "image_aspect_ratio": "square",
}  # fmt: skip


def parser():
    return transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))


def test_every_original_flag_with_its_default():
    namespace = parser().parse_args([])
    for name, default in ORIGINAL_DEFAULTS.items():
        assert getattr(namespace, name) == default, name


def test_vision_flag_defaults(tiny_ckpt):
    namespace = parser().parse_args([])
    assert all(getattr(namespace, name) is None for name in CHECKPOINT_OR_ORIGINAL)
    plain_llama = Share4VConfig()
    model_args, data_args = ModelArguments(), DataArguments()
    resolve_vision_flags(plain_llama, model_args, data_args)
    resolved = {**vars(model_args), **vars(data_args)}
    assert {name: resolved[name] for name in CHECKPOINT_OR_ORIGINAL} == CHECKPOINT_OR_ORIGINAL
    model_args, data_args = ModelArguments(mm_vision_select_layer=-3), DataArguments()
    resolve_vision_flags(Share4VConfig.from_pretrained(tiny_ckpt), model_args, data_args)
    assert (model_args.mm_projector_type, model_args.mm_vision_select_layer, data_args.image_aspect_ratio) == (
        "mlp2x_gelu", -3, "pad"
    )  # fmt: skip


def test_legacy_flags_are_mapped_with_a_notice(caplog):
    argv = ["--evaluation_strategy", "no", "--warmup_ratio=0.03", "--overwrite_output_dir", "--logging_dir", "x",
            "--no_cuda", "True", "--bf16", "True"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="share4v"):
        translated = translate_legacy_flags(argv)
    assert translated == ["--eval_strategy", "no", "--warmup_steps", "0.03", "--use_cpu", "True", "--bf16", "True"]
    assert len(caplog.records) == 5 and all(len(r.getMessage().splitlines()) == 1 for r in caplog.records)
    namespace = parser().parse_args(translated)
    assert namespace.eval_strategy == "no" and namespace.warmup_steps == 0.03 and namespace.use_cpu


def test_flags_transformers_5_lacks_are_dropped_or_converted(tmp_path, caplog):
    out = ["--output_dir", str(tmp_path)]
    with caplog.at_level(logging.WARNING, logger="share4v"):
        argv = ["--fp16_backend", "auto", "--group_by_length", "True", "--warmup_ratio", "0.5", *out]
        args = parse_arguments(argv)[2]
    assert "--fp16_backend auto is ignored" in caplog.text  # not renamed to a flag transformers 5 lacks as well
    assert args.train_sampling_strategy == "group_by_length"
    assert args.get_warmup_steps(100) == 50
    assert parse_arguments(["--group_by_length", "False", *out])[2].train_sampling_strategy == "random"
    assert parse_arguments(["--group_by_length", *out])[2].train_sampling_strategy == "group_by_length"
    assert parse_arguments(["--warmup_ratio=0", *out])[2].get_warmup_steps(100) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--warmup_ratio", "1.0"], "--warmup_ratio 1.0: transformers 5 has no warm-up share of 1 or more"),
     (["--warmup_ratio", "lots"], "--warmup_ratio 'lots' is not a number"),
     (["--group_by_length", "maybe"], "--group_by_length 'maybe': expected True or False")],
)  # fmt: skip
def test_values_transformers_5_cannot_express_are_one_line_errors(argv, message, tmp_path):
    with pytest.raises(ValueError, match=f"^{message}") as err:
        parse_arguments([*argv, "--output_dir", str(tmp_path)])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--lora_enable", "True"], "--lora_enable with FSDP: LoRA under FSDP is not supported"),
     (["--bits", "4"], "--bits 4 with FSDP: 4/8-bit weights under FSDP are not supported")],
)  # fmt: skip
def test_what_fsdp_never_ran_is_a_one_line_error(argv, message, tmp_path, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    fsdp = ["--fsdp", "--fsdp_config", str(REPO / "scripts" / "fsdp2.json")]
    with pytest.raises(ValueError, match=f"^{message}") as err:
        parse_arguments([*fsdp, *argv, "--output_dir", str(tmp_path)])
    assert "\n" not in str(err.value)
    _, _, without_fsdp = parse_arguments([*argv, "--output_dir", str(tmp_path)])  # the same flags alone are fine
    assert not without_fsdp.fsdp
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # FSDP from an accelerate config (accelerate launch)
    with pytest.raises(ValueError, match=f"^{message}"):
        parse_arguments([*argv, "--output_dir", str(tmp_path)])


def test_checkpointing_flags_of_the_original_without_a_deprecation_warning(tmp_path):
    # transformers 5.2x renamed them (activation_checkpointing*) and warns at the old names; 5.17 has only those
    argv = ["--gradient_checkpointing", "True", "--gradient_checkpointing_kwargs", '{"use_reentrant": false}']
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _, _, args = parse_arguments([*argv, "--gradient_checkpointing_layers", "3", "--output_dir", str(tmp_path)])
    assert args.gradient_checkpointing is True
    assert args.gradient_checkpointing_kwargs == {"use_reentrant": False}
    assert args.gradient_checkpointing_layers == 3
    _, _, off = parse_arguments(["--gradient_checkpointing=False", "--output_dir", str(tmp_path)])
    assert off.gradient_checkpointing is False
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _, _, dashed = parse_arguments(["--gradient-checkpointing", "True", "--output_dir", str(tmp_path)])
    assert dashed.gradient_checkpointing is True


def test_the_new_checkpointing_name_wins_over_the_old_as_in_transformers(tmp_path):
    if "activation_checkpointing" not in TrainingArguments.__dataclass_fields__:
        pytest.skip("this transformers has no activation_checkpointing (5.17)")
    argv = ["--activation_checkpointing", "False", "--gradient_checkpointing", "True", "--output_dir", str(tmp_path)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old name, given beside the new one, warns as before
        _, _, args = parse_arguments(argv)
    assert args.gradient_checkpointing is False


def test_several_reporters(tmp_path):
    argv = ["--report_to", "tensorboard", "wandb", "--output_dir", str(tmp_path)]
    assert translate_legacy_flags(argv)[:2] == ["--report_to", "tensorboard,wandb"]
    assert parse_arguments(argv)[2].report_to == ["tensorboard", "wandb"]
    assert parse_arguments(["--output_dir", str(tmp_path)])[2].report_to == []  # reports nowhere by default


def script_env(**env):
    """The environment of a dry run: this process's without the settings the scripts read (a developer's exported
    SHARDING or DEEPSPEED would change what they print), then `env`."""
    inherited = {k: v for k, v in os.environ.items() if k not in {"SHARDING", "DEEPSPEED", "MICRO_BATCH", "NUM_GPUS"}}
    return {**inherited, "DRY_RUN": "1", **env}


def dry_run(script, **env):
    result = subprocess.run(["bash", str(SCRIPTS / script)], env=script_env(**env), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    words = result.stdout.splitlines()
    entry = words.index("share4v/train/train_mem.py")
    return words[:entry], parser().parse_args(translate_legacy_flags(words[entry + 1 :])), result.stderr


STAGE_1 = {
    "version": "plain", "tune_entire_model": True, "tune_vit_from_layer": 12, "mm_projector_type": "mlp2x_gelu",
    "mm_vision_select_layer": -2, "mm_use_im_start_end": False, "mm_use_im_patch_token": False,
    "image_aspect_ratio": None, "group_by_modality_length": False, "learning_rate": 2e-5,  # None: square from Vicuna
    "weight_decay": 0.0, "warmup_steps": 0.03, "lr_scheduler_type": "cosine", "model_max_length": 2048,
    "num_train_epochs": 1.0, "gradient_checkpointing": True, "bf16": True, "deepspeed": "./scripts/zero3.json",
    "report_to": "none",
}  # fmt: skip
STAGE_2 = {
    **STAGE_1, "version": "v1", "tune_entire_model": False, "tune_vit_from_layer": -1, "image_aspect_ratio": "pad",
    "group_by_modality_length": True,
}  # fmt: skip


@pytest.mark.parametrize("size", ["7b", "13b"])
def test_slurm_scripts_run_the_recipe(size):
    launcher, args, _ = dry_run(f"slurm_pretrain_{size}.sh")
    assert launcher[:2] == ["srun", "--kill-on-bad-exit=1"] and "torchrun" in launcher
    assert launcher[launcher.index("--nnodes") + 1] == "2" and launcher[launcher.index("--nproc_per_node") + 1] == "8"
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (16, 1)  # 16 x 16 GPUs = 256
    assert {k: getattr(args, k) for k in STAGE_1} == STAGE_1
    assert args.model_name_or_path == f"lmsys/vicuna-{size}-v1.5"
    assert args.vision_tower == "openai/clip-vit-large-patch14-336"
    assert args.pretrain_mm_mlp_adapter.endswith(f"vicuna-{size}-v1.5/mm_projector.bin")

    launcher, args, _ = dry_run(f"slurm_finetune_{size}.sh", REPORT_TO="wandb tensorboard")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 1)  # 8 x 16 GPUs = 128
    assert {k: getattr(args, k) for k in STAGE_2} == {**STAGE_2, "report_to": "wandb,tensorboard"}
    assert args.vision_tower == args.model_name_or_path + "/vision_tower"
    assert args.output_dir == f"checkpoints/share4v-{size}"


@pytest.mark.parametrize(
    ("script", "nodes", "gpus", "micro", "accumulation"),
    [("slurm_pretrain_7b.sh", "1", "8", 16, 2), ("slurm_finetune_13b.sh", "1", "4", 8, 4),
     ("slurm_finetune_7b.sh", "4", "4", 8, 1)],
)  # fmt: skip
def test_slurm_scripts_keep_the_global_batch(script, nodes, gpus, micro, accumulation):
    launcher, args, stderr = dry_run(script, SLURM_NNODES=nodes, GPUS_PER_NODE=gpus)
    assert (
        launcher[launcher.index("--nnodes") + 1] == nodes and launcher[launcher.index("--nproc_per_node") + 1] == gpus
    )
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (micro, accumulation)
    assert f"x gradient accumulation {accumulation}" in stderr
    result = subprocess.run(
        ["bash", str(SCRIPTS / script)], capture_output=True, text=True,
        env=script_env(SLURM_NNODES="1", GPUS_PER_NODE="3"),
    )  # fmt: skip
    assert result.returncode == 2 and "not a multiple of 3 GPUs" in result.stderr


@pytest.mark.parametrize(
    ("script", "gpus", "micro", "accumulation", "stage"),
    [("local_pretrain.sh", "4", 16, 4, STAGE_1), ("local_finetune.sh", "8", 8, 2, STAGE_2),
     ("local_finetune.sh", "2", 8, 8, STAGE_2)],
)  # fmt: skip
def test_local_scripts_keep_the_global_batch(script, gpus, micro, accumulation, stage):
    launcher, args, stderr = dry_run(script, NUM_GPUS=gpus)
    assert launcher[:4] == ["torchrun", "--standalone", "--nproc_per_node", gpus]
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (micro, accumulation)
    assert {k: getattr(args, k) for k in stage} == stage
    assert f"x gradient accumulation {accumulation}" in stderr


@pytest.mark.parametrize("script", ["local_pretrain.sh", "local_finetune.sh", "slurm_finetune_7b.sh"])
def test_sharding_fsdp2_replaces_deepspeed(script):
    _, args, _ = dry_run(script, NUM_GPUS="8", SHARDING="fsdp2")
    assert args.deepspeed is None and args.fsdp is True  # bare --fsdp: transformers deprecates the string form
    assert args.fsdp_config == "./scripts/fsdp2.json" and (SCRIPTS.parents[1] / args.fsdp_config).is_file()
    assert args.gradient_checkpointing and args.bf16  # the rest of the recipe as under DeepSpeed
    _, args, _ = dry_run(script, NUM_GPUS="8", SHARDING="deepspeed", DEEPSPEED="./scripts/zero2.json")
    assert args.deepspeed == "./scripts/zero2.json" and not args.fsdp


@pytest.mark.parametrize(
    ("script", "env", "error"),
    [("local_finetune.sh", {"SHARDING": "fsdp"}, "SHARDING=fsdp: use deepspeed (the default) or fsdp2"),
     ("local_finetune.sh", {"SHARDING": "fsdp2", "DEEPSPEED": "./scripts/zero2.json"}, "choose one"),
     ("local_finetune_lora.sh", {"SHARDING": "fsdp2"}, "LoRA runs under DeepSpeed here")],
)  # fmt: skip
def test_sharding_refuses_what_it_cannot_do(script, env, error):
    result = subprocess.run(
        ["bash", str(SCRIPTS / script)], env=script_env(NUM_GPUS="8", **env), capture_output=True, text=True
    )
    assert result.returncode == 2 and error in result.stderr and "train_mem.py" not in result.stdout


def test_lora_script_and_indivisible_batches():
    _, args, _ = dry_run("local_finetune_lora.sh", NUM_GPUS="8")
    assert args.lora_enable and (args.lora_r, args.lora_alpha, args.mm_projector_lr) == (128, 256, 2e-5)
    assert args.learning_rate == 2e-4 and args.output_dir == "checkpoints/share4v-7b-lora"
    assert args.per_device_train_batch_size * 8 * args.gradient_accumulation_steps == 128
    result = subprocess.run(
        ["bash", str(SCRIPTS / "local_finetune.sh")], env=script_env(NUM_GPUS="3"),
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "not a multiple of 3 GPUs" in result.stderr
