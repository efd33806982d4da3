"""train/arguments.py

The three argument dataclasses of the original trainer (`ModelArguments`, `DataArguments`, `TrainingArguments`),
with every flag name and default of the original, parsed by `transformers.HfArgumentParser`; plus the mapping that
lets the original shell scripts run unchanged on transformers 5 (flags it renamed or dropped).
"""

import logging
import os
import sys
from argparse import ArgumentTypeError
from dataclasses import dataclass, field, fields
from typing import Any, Optional

import transformers
from transformers.hf_argparser import string_to_bool

logger = logging.getLogger(__name__)


# What a vision flag left unset means for a model without vision keys (the original's defaults).
ORIGINAL_VISION_DEFAULTS = {
    "mm_projector_type": "linear",
    "mm_vision_select_layer": -1,
    "mm_vision_select_feature": "patch",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": True,
}


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(default="facebook/opt-125m")
    version: Optional[str] = field(
        default="v0", metadata={"help": "conversation template: plain (stage 1), v1 (stage 2), llama_2, v0, ..."}
    )
    freeze_backbone: bool = field(default=False, metadata={"help": "freeze the LLM body (lm_head stays trainable)"})
    tune_mm_mlp_adapter: bool = field(default=False, metadata={"help": "train the projector only (alignment)"})
    vision_tower: Optional[str] = field(default=None, metadata={"help": "CLIP vision tower folder or hub id"})
    tune_vision_tower: bool = field(default=False, metadata={"help": "unlock the ViT (see --tune_vit_from_layer)"})
    tune_vit_from_layer: Optional[int] = field(
        default=-1, metadata={"help": "train ViT encoder layers >= this index (-1: the whole ViT)"}
    )
    tune_entire_model: bool = field(default=False, metadata={"help": "train LLM + projector + ViT (stage 1)"})
    # The vision flags below default to None: the starting checkpoint's config value when it is a share4v one,
    # else the original's default (linear, -1, patch, False, True).
    mm_vision_select_layer: Optional[int] = field(default=None, metadata={"help": "ViT hidden state to use (-1)"})
    pretrain_mm_mlp_adapter: Optional[str] = field(
        default=None, metadata={"help": "mm_projector.bin/.safetensors to start the projector from"}
    )
    mm_projector_type: Optional[str] = field(default=None, metadata={"help": "linear, mlp2x_gelu, ... (linear)"})
    mm_use_im_start_end: Optional[bool] = field(default=None, metadata={"help": "wrap images in <im_start>/<im_end>"})
    mm_use_im_patch_token: Optional[bool] = field(default=None, metadata={"help": "add the <im_patch> token (True)"})
    mm_vision_select_feature: Optional[str] = field(default=None, metadata={"help": "patch or cls_patch (patch)"})


@dataclass
class DataArguments:
    data_path: Optional[str] = field(default=None, metadata={"help": "training data: a JSON list or JSONL file"})
    lazy_preprocess: bool = field(default=False, metadata={"help": "accepted for the original scripts; always lazy"})
    is_multimodal: bool = False
    image_folder: Optional[str] = field(default=None, metadata={"help": "folder the rows' image paths start from"})
    image_aspect_ratio: Optional[str] = field(
        default=None, metadata={"help": "square (resize + crop) or pad; default: the checkpoint's, else square"}
    )
    image_grid_pinpoints: Optional[str] = field(default=None)
    strict_data: bool = field(
        default=False,
        metadata={
            "help": "stop at the first bad sample (corrupt image, malformed row, answer not found) "
            "instead of reporting and skipping it"
        },
    )
    # Set by the driver, not from the command line.
    conv_mode: str = field(default="vicuna_v1", init=False)
    image_processor: Any = field(default=None, init=False, repr=False)
    image_tokens_per_image: Optional[int] = field(default=None, init=False)
    mm_use_im_start_end: bool = field(default=False, init=False)


@dataclass
class TrainingArguments(transformers.TrainingArguments):
    cache_dir: Optional[str] = field(default=None)
    optim: str = field(default="adamw_torch")
    remove_unused_columns: bool = field(default=False)
    freeze_mm_mlp_adapter: bool = field(default=False)
    mpt_attn_impl: Optional[str] = field(default="triton", metadata={"help": "accepted for old scripts; unused"})
    model_max_length: int = field(
        default=512,
        metadata={"help": "longest sequence, counted after images are spliced in (text + images x patches)"},
    )
    double_quant: bool = field(default=True, metadata={"help": "QLoRA: quantize the quantization statistics"})
    quant_type: str = field(default="nf4", metadata={"help": "QLoRA: fp4 or nf4"})
    bits: int = field(default=16, metadata={"help": "16 (no quantization), 8 or 4 (QLoRA, needs bitsandbytes)"})
    lora_enable: bool = False
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_weight_path: str = ""
    lora_bias: str = "none"
    mm_projector_lr: Optional[float] = None
    vision_tower_lr: Optional[float] = None
    group_by_modality_length: bool = field(default=False)
    save_vision_tower: Optional[bool] = field(
        default=None, metadata={"help": "write vision_tower/ into the output (default: when ViT weights trained)"}
    )
    pack_sequences: bool = field(
        default=True,
        metadata={
            "help": "run each micro-batch as one row of its samples without padding, each sample attending only "
            "to itself (same samples, same loss as padding; faster)"
        },
    )
    fused_cross_entropy: bool = field(
        default=True,
        metadata={"help": "compute the loss without full-vocabulary logits (same values; less memory and time)"},
    )
    compile_decoder_layers: Optional[bool] = field(
        default=None,
        metadata={
            "help": "compile each decoder layer with torch.compile (regional compilation: one compile serves all "
            "layers); fuses the element-wise work of the step, about 1.25x faster on an H100-class GPU. Default: on "
            "where it was measured, training on a CUDA GPU, alone or under FSDP, with every layer checkpointed or "
            "none, without DeepSpeed, LoRA or quantization, and not with --gradient_checkpointing_layers "
            "checkpointing only some layers; else off"
        },
    )
    gradient_checkpointing_layers: Optional[int] = field(
        default=None,
        metadata={
            "help": "with --gradient_checkpointing: how many of the LLM's decoder layers (the first ones) recompute "
            "their activations in the backward pass (default: all); the others keep theirs: less recomputation for "
            "more memory"
        },
    )
    peak_tflops: Optional[float] = field(
        default=None,
        metadata={"help": "the accelerator's bf16 matmul peak, for the logged MFU (default: measured on CUDA)"},
    )


# Flags of transformers 4.31 (which the original scripts pass) that transformers 5 renamed or dropped.
RENAMED_FLAGS = {
    "--evaluation_strategy": "--eval_strategy",
    "--no_cuda": "--use_cpu",
    "--per_gpu_train_batch_size": "--per_device_train_batch_size",
    "--per_gpu_eval_batch_size": "--per_device_eval_batch_size",
}
DROPPED_FLAGS = ("--overwrite_output_dir", "--logging_dir", "--save_safetensors", "--use_mps_device", "--fp16_backend")


def _warmup_ratio(value: str) -> list[str]:
    """`--warmup_ratio R` → `--warmup_steps R`: transformers 5 reads a warmup_steps below 1 as a share of the steps."""
    try:
        ratio = float(value)
    except ValueError:
        raise ValueError(f"--warmup_ratio {value!r} is not a number") from None
    if not 0 <= ratio < 1:
        raise ValueError(
            f"--warmup_ratio {value}: transformers 5 has no warm-up share of 1 or more (its --warmup_steps reads 1 "
            "as one step): give --warmup_steps N, N the run's optimizer steps, to warm up over the whole run"
        )
    return ["--warmup_steps", value]


def _group_by_length(value: str) -> list[str]:
    """`--group_by_length [True]` → `--train_sampling_strategy group_by_length`; False is transformers 5's default."""
    try:
        wanted = string_to_bool(value) if value else True
    except ArgumentTypeError:
        raise ValueError(f"--group_by_length {value!r}: expected True or False") from None
    return ["--train_sampling_strategy", "group_by_length"] if wanted else []


# Flags whose value transformers 5 expresses differently: flag → (its value → the flags that replace it).
CONVERTED_FLAGS = {"--warmup_ratio": _warmup_ratio, "--group_by_length": _group_by_length}


def translate_legacy_flags(argv: list[str]) -> list[str]:
    """Rename or convert flags transformers 5 renamed and drop the ones it removed, with a one-line notice for each.

    `--report_to wandb tensorboard` (several values, as transformers 4 took them) becomes `--report_to
    wandb,tensorboard`, which `parse_arguments` splits again.

    Raises:
        ValueError: for a converted flag's value transformers 5 cannot express (e.g. `--warmup_ratio 1`).
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        takes_next = not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        if arg == "--report_to":
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                values.append(argv[i + 1])
                i += 1
            out += [arg, ",".join(values)]
        elif name in RENAMED_FLAGS:
            logger.warning("%s is called %s in transformers 5: using that", name, RENAMED_FLAGS[name])
            out.append(RENAMED_FLAGS[name] + eq + value)
        elif name in CONVERTED_FLAGS or name in DROPPED_FLAGS:
            value = argv[i + 1] if takes_next else value
            i += 1 if takes_next else 0
            typed = f"{name} {value}".strip()
            if name in DROPPED_FLAGS:
                logger.warning("%s is ignored: transformers 5 has no such setting", typed)
                replacement = []
            elif replacement := CONVERTED_FLAGS[name](value):
                logger.warning("%s is %s in transformers 5: using that", typed, " ".join(replacement))
            else:
                logger.warning("%s is transformers 5's default: nothing to pass", typed)
            out += replacement
        else:
            out.append(arg)
        i += 1
    return out


# The names transformers 5.2x gives the original's checkpointing flags (a FutureWarning at the old ones; both set the
# same setting, and `gradient_checkpointing*` keeps mirroring it); transformers 5.17 has only the old names.
CHECKPOINTING_RENAMES = {
    "gradient_checkpointing": "activation_checkpointing",
    "gradient_checkpointing_kwargs": "activation_checkpointing_kwargs",
}


def current_checkpointing_names(argv: list[str]) -> list[str]:
    """`--gradient_checkpointing[_kwargs]` (or `--gradient-checkpointing[-kwargs]`) → `--activation_checkpointing
    [_kwargs]`, silently, where the installed transformers has the new names and the command line does not give them
    itself (transformers lets the new name win over the old)."""
    names = {f.name for f in fields(TrainingArguments)}
    renames = {}
    for old, new in CHECKPOINTING_RENAMES.items():
        given = {f"--{new}", f"--{new.replace('_', '-')}"}
        if new in names and not any(arg.partition("=")[0] in given for arg in argv):
            renames |= {f"--{old}": f"--{new}", f"--{old.replace('_', '-')}": f"--{new}"}
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        out.append(renames[name] + eq + value if name in renames else arg)
    return out


def parse_arguments(
    argv: Optional[list[str]] = None,
) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Parse the command line (default `sys.argv[1:]`) into the three dataclasses."""
    argv = current_checkpointing_names(translate_legacy_flags(list(sys.argv[1:] if argv is None else argv)))
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    training_args.report_to = [name for entry in training_args.report_to for name in entry.split(",") if name]
    _refuse_untested_sharding(training_args)
    return model_args, data_args, training_args


def _refuse_untested_sharding(training_args: TrainingArguments) -> None:
    """LoRA and 4/8-bit weights run under DeepSpeed (as the original) or unsharded; under FSDP neither the adapters'
    saving and resuming nor quantized shards were ever run, so they are an error rather than an untried path."""
    if not (training_args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true", "yes")):
        return
    if training_args.lora_enable:
        raise ValueError(
            "--lora_enable with FSDP: LoRA under FSDP is not supported; use DeepSpeed "
            "(--deepspeed ./scripts/zero3.json, as scripts/sharegpt4v/local_finetune_lora.sh) or one GPU"
        )
    if training_args.bits in (4, 8):
        raise ValueError(f"--bits {training_args.bits} with FSDP: 4/8-bit weights under FSDP are not supported")
