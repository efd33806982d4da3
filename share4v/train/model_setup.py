"""train/model_setup.py

Building what a training run starts from: the model (LLM + vision tower + projector, LoRA / quantized when asked),
the tokenizer with its padding token, and the data settings the vision tower decides.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, BitsAndBytesConfig

from share4v.mm_utils import IMAGE_ASPECT_RATIOS
from share4v.model.checkpoint_checks import looks_local
from share4v.model.language_model.share4v_llama import (
    UNQUANTIZED_MODULES,
    Share4VConfig,
    Share4VLlamaForCausalLM,
)
from share4v.model.multimodal_encoder.builder import resolve_vision_tower_path
from share4v.model.packed_attention import PACKED_ATTENTION, PACKING_AWARE
from share4v.model.vision_setup import (
    image_tokens_per_image,
    initialize_vision_modules,
    initialize_vision_tokenizer,
    resize_embeddings_to_mean,
)
from share4v.train.arguments import ORIGINAL_VISION_DEFAULTS
from share4v.utils import dist_info

logger = logging.getLogger(__name__)


def compute_dtype(training_args: Any) -> torch.dtype:
    return torch.bfloat16 if training_args.bf16 else torch.float16 if training_args.fp16 else torch.float32


def _quantization(training_args: Any) -> dict[str, Any]:
    if training_args.bits not in (4, 8, 16):
        raise ValueError(f"--bits must be 4, 8 or 16, not {training_args.bits}")
    if training_args.bits == 16:
        return {}
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"--bits {training_args.bits} needs bitsandbytes: pip install 'share4v[quant]'")
    return {
        "device_map": {"": training_args.device},
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=training_args.bits == 4,
            load_in_8bit=training_args.bits == 8,
            llm_int8_skip_modules=UNQUANTIZED_MODULES,
            llm_int8_threshold=6.0,
            bnb_4bit_compute_dtype=compute_dtype(training_args),
            bnb_4bit_use_double_quant=training_args.double_quant,
            bnb_4bit_quant_type=training_args.quant_type,
        ),
    }


def load_model(model_args: Any, training_args: Any, attn_implementation: str | None = None) -> Share4VLlamaForCausalLM:
    """The language model of `--model_name_or_path` (a Llama/Vicuna folder or a share4v checkpoint), in fp32
    (mixed precision and DeepSpeed keep fp32 master weights), quantized with `--bits 4/8`."""
    path = model_args.model_name_or_path
    if looks_local(path) and not Path(path).expanduser().is_dir():
        raise FileNotFoundError(f"no such folder: {path} (--model_name_or_path)")
    if Path(path, "adapter_config.json").is_file():
        raise ValueError(f"{path} is a LoRA adapter: merge it first (python scripts/merge_lora_weights.py --help)")
    config_dict, _ = Share4VConfig.get_config_dict(path, cache_dir=training_args.cache_dir)
    config = Share4VConfig.from_dict(config_dict)  # a Llama/Vicuna config gains the mm_* keys with their defaults
    kwargs: dict[str, Any] = {"config": config, "cache_dir": training_args.cache_dir, **_quantization(training_args)}
    kwargs["dtype"] = compute_dtype(training_args) if training_args.bits in (4, 8) else torch.float32
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = Share4VLlamaForCausalLM.from_pretrained(path, **kwargs)
    model.config.use_cache = False
    if training_args.bits in (4, 8):
        from peft import prepare_model_for_kbit_training

        # checkpointing (and the input hooks it needs) is the Trainer's to turn on, once: `apply_checkpointing`
        # removes the hooks of that one call where the checkpoint does not need them
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model


def load_tokenizer(model_args: Any, training_args: Any, model: torch.nn.Module) -> Any:
    """The tokenizer of `--model_name_or_path`, right-padded, with the original's pad token (unk; `[PAD]` for v0)."""
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path,
        cache_dir=training_args.cache_dir,
        model_max_length=training_args.model_max_length,
        padding_side="right",
    )
    if model_args.version == "v0":
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
            resize_embeddings_to_mean(model, len(tokenizer))
    else:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def resolve_vision_flags(config: Share4VConfig, model_args: Any, data_args: Any) -> None:
    """Fill the vision flags left unset: from a share4v checkpoint's config, else the original's defaults.

    Raises:
        ValueError: when `--mm_projector_type` names another projector than the checkpoint holds.
    """
    for name, default in ORIGINAL_VISION_DEFAULTS.items():
        if getattr(model_args, name) is None:
            setattr(model_args, name, getattr(config, name) if config.is_multimodal else default)
    if data_args.image_aspect_ratio is None:
        data_args.image_aspect_ratio = config.image_aspect_ratio if config.is_multimodal else "square"
    if config.is_multimodal and model_args.mm_projector_type != config.mm_projector_type:
        raise ValueError(
            f"--mm_projector_type {model_args.mm_projector_type} but {model_args.model_name_or_path} holds a "
            f"{config.mm_projector_type} projector"
        )


def _recorded_tower_name(name: str) -> str:
    """What the saved config calls the tower: an absolute path for a local folder, else the name (a hub id)."""
    return str(Path(name).resolve()) if Path(name).is_dir() else name


def setup_vision(model: Share4VLlamaForCausalLM, tokenizer: Any, model_args: Any, data_args: Any, training_args: Any):
    """Attach and load the vision tower and projector, fill the data settings, record the run in the config.

    The tower is `--vision_tower`, else the one the checkpoint's config names; none means a text-only run.
    """
    config = model.config
    resolve_vision_flags(config, model_args, data_args)
    name = model_args.vision_tower
    tower_path = None
    if name is None and config.mm_vision_tower:
        tower_path = resolve_vision_tower_path(config.mm_vision_tower, model_args.model_name_or_path)
        name = tower_path
    if name is None:
        data_args.is_multimodal = False
        return None
    name = _recorded_tower_name(name)  # the saved config must not name a folder relative to the working directory
    if data_args.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
        raise ValueError(
            f"--image_aspect_ratio must be one of {IMAGE_ASPECT_RATIOS}, not {data_args.image_aspect_ratio!r}"
        )
    tower = initialize_vision_modules(
        model.get_model(),
        name,
        projector_type=model_args.mm_projector_type,
        select_layer=model_args.mm_vision_select_layer,
        select_feature=model_args.mm_vision_select_feature,
        pretrain_mm_mlp_adapter=model_args.pretrain_mm_mlp_adapter,
        tower_path=tower_path,
    )
    data_args.is_multimodal = True
    data_args.image_processor = tower.image_processor
    data_args.image_tokens_per_image = image_tokens_per_image(tower)
    data_args.mm_use_im_start_end = model_args.mm_use_im_start_end
    for key, value in {
        "image_aspect_ratio": data_args.image_aspect_ratio,
        "image_grid_pinpoints": data_args.image_grid_pinpoints,
        "tune_mm_mlp_adapter": model_args.tune_mm_mlp_adapter,
        "tune_entire_model": model_args.tune_entire_model,
        "freeze_mm_mlp_adapter": training_args.freeze_mm_mlp_adapter,
        "tune_vision_tower": model_args.tune_vision_tower,
        "mm_use_im_start_end": model_args.mm_use_im_start_end,
        "mm_use_im_patch_token": model_args.mm_use_im_patch_token,
        "mm_projector_lr": training_args.mm_projector_lr,
        "vision_tower_lr": training_args.vision_tower_lr,
    }.items():
        setattr(config, key, value)
    initialize_vision_tokenizer(
        model,
        tokenizer,
        mm_use_im_patch_token=model_args.mm_use_im_patch_token,
        mm_use_im_start_end=model_args.mm_use_im_start_end,
        tune_mm_mlp_adapter=model_args.tune_mm_mlp_adapter,
        pretrain_mm_mlp_adapter=model_args.pretrain_mm_mlp_adapter,
    )
    return tower


def llm_linear_module_names(model: torch.nn.Module) -> list[str]:
    """Full names of the language model's linear layers (what LoRA adapts): not the tower, projector or lm_head."""
    decoder = model.get_model()
    skip = {
        id(m)
        for part in (decoder.get_vision_tower(), getattr(decoder, "mm_projector", None))
        if part
        for m in part.modules()
    }
    head = model.get_output_embeddings()
    return [  # bitsandbytes' quantized layers are nn.Linear subclasses
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and id(module) not in skip and module is not head
    ]


def apply_lora(model: Share4VLlamaForCausalLM, training_args: Any) -> torch.nn.Module:
    """Wrap the LLM's linear layers with LoRA adapters (peft), as `--lora_*` say."""
    if importlib.util.find_spec("peft") is None:
        raise ImportError("--lora_enable needs peft: pip install 'share4v[lora]'")
    from peft import LoraConfig, get_peft_model

    lora_config = LoraConfig(
        r=training_args.lora_r,
        lora_alpha=training_args.lora_alpha,
        target_modules=llm_linear_module_names(model),
        lora_dropout=training_args.lora_dropout,
        bias=training_args.lora_bias,
        task_type="CAUSAL_LM",
    )
    if training_args.bits == 16 and (training_args.bf16 or training_args.fp16):
        model.to(compute_dtype(training_args))
    logger.info("adding LoRA adapters (r=%d, alpha=%d)", training_args.lora_r, training_args.lora_alpha)
    return get_peft_model(model, lora_config)


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The share4v model itself, also when peft wraps it (LoRA)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def checkpointed_layers(model: torch.nn.Module, training_args: Any) -> int | None:
    """How many of the LLM's decoder layers, counted from the first, recompute their activations in the backward
    pass: all with --gradient_checkpointing alone, --gradient_checkpointing_layers when given; None without
    --gradient_checkpointing (there --gradient_checkpointing_layers has no effect, and the run says so)."""
    total = len(_unwrapped(model).get_model().layers)
    wanted = getattr(training_args, "gradient_checkpointing_layers", None)
    if not getattr(training_args, "gradient_checkpointing", False):  # a bare namespace (benchmarks): off
        if wanted is not None:
            logger.warning("--gradient_checkpointing_layers %d has no effect without --gradient_checkpointing", wanted)
        return None
    if wanted is None:
        return total
    if not 0 <= wanted <= total:
        raise ValueError(
            f"--gradient_checkpointing_layers {wanted}: the LLM has {total} decoder layers (give 0 to {total})"
        )
    return wanted


def keep_activations_after(model: torch.nn.Module, checkpointed: int) -> None:
    """Let the LLM's decoder layers from index `checkpointed` on run plainly, keeping their activations for the
    backward pass. Call it after transformers has turned checkpointing on (`gradient_checkpointing_enable` sets
    `gradient_checkpointing` on every `GradientCheckpointingLayer`, and each layer reads that flag at every call).

    The last layers keep theirs because backward reaches them first: their activations are freed before the first
    recomputation, so a recomputed layer never sits in memory beside all the kept ones (keeping the first layers
    instead would hold the same activations through every recomputation).
    """
    for layer in _unwrapped(model).get_model().layers[checkpointed:]:
        layer.gradient_checkpointing = False


def apply_checkpointing(model: torch.nn.Module, training_args: Any) -> None:
    """--gradient_checkpointing_layers, once transformers has turned checkpointing on in every decoder layer (what
    `Share4VTrainer` does when training starts).

    With the non-reentrant checkpoint (transformers 5's default) this also removes the hooks that
    `gradient_checkpointing_enable` puts on every input embedding to make its output require a gradient, the vision
    tower's patch embedding included: that checkpoint computes the gradients of a checkpointed layer's weights
    whatever its inputs, and the hook on the tower only made the backward pass run through the frozen ViT layers
    for an input gradient that nothing uses (the same gradients either way; the reentrant checkpoint does need the
    hooks, and keeps them)."""
    keep_activations_after(model, checkpointed_layers(model, training_args))
    if not _reentrant_checkpoint(getattr(training_args, "gradient_checkpointing_kwargs", None)):
        _unwrapped(model).disable_input_require_grads()


def _reentrant_checkpoint(checkpointing_kwargs: dict | None) -> bool:
    """Whether the Trainer's checkpoint is the reentrant one: transformers passes `use_reentrant=False` when it is
    given no checkpoint arguments (after taking out its own `every_n_layers` and `offload`); arguments without
    `use_reentrant` leave torch's default, the reentrant checkpoint."""
    kwargs = {k: v for k, v in (checkpointing_kwargs or {}).items() if k not in ("every_n_layers", "offload")}
    return bool(kwargs.get("use_reentrant", True)) if kwargs else False


def _checkpointing_note(checkpointed: int | None, total: int) -> str:
    if checkpointed is None:
        return ""
    if checkpointed == total:
        return f", activation checkpointing in all {total} decoder layers"
    which = f"layers 0-{checkpointed - 1}" if checkpointed else "no layer"
    return f", activation checkpointing in decoder {which} of {total} (the others keep their activations)"


def configure_step_speedups(model: torch.nn.Module, training_args: Any) -> None:
    """The exact speed-ups of the training step: the loss without full-vocabulary logits and, for packed
    micro-batches on SDPA, the attention that runs each packed sample on its own (flash-attention runs them so
    already; other implementations stay correct through transformers' packed-sequence masks, only slower).
    Checks --gradient_checkpointing_layers, which `Share4VTrainer` applies once training starts
    (`apply_checkpointing`)."""
    model = _unwrapped(model)
    checkpointed = checkpointed_layers(model, training_args)
    model.fused_cross_entropy = training_args.fused_cross_entropy
    if training_args.pack_sequences and model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(PACKED_ATTENTION)
    if training_args.pack_sequences and model.config._attn_implementation not in PACKING_AWARE:
        logger.warning(
            "--pack_sequences with %s attention: correct, but each micro-batch gets a [tokens, tokens] mask; "
            "sdpa or flash-attention run packed samples without one",
            model.config._attn_implementation,
        )
    layers = len(model.get_model().layers)
    compiled = compiles_decoder_layers(training_args, layers)
    if compiled:
        from transformers.integrations import is_deepspeed_zero3_enabled

        combined = {"DeepSpeed ZeRO-3": is_deepspeed_zero3_enabled(),
                    "--gradient_checkpointing_layers": _checkpoints_some_layers(training_args, layers)}  # fmt: skip
        untested = [name for name, on in combined.items() if on]
        if untested:
            logger.warning("--compile_decoder_layers with %s has not been measured or checked for equal losses; "
                           "compare the first steps' loss with a run without it", " and ".join(untested))  # fmt: skip
        for layer in model.get_model().layers:
            layer.compile()
    compile_note = ", compiled decoder layers" if compiled else ""
    if compiled and getattr(training_args, "compile_decoder_layers", None) is None:
        compile_note += " (the default on a CUDA GPU; --compile_decoder_layers False turns it off)"
    logger.info(
        "training step: %s micro-batches, loss %s full-vocabulary logits, attention %s%s%s",
        "packed" if training_args.pack_sequences else "padded",
        "without" if training_args.fused_cross_entropy else "with target-position",
        model.config._attn_implementation,
        compile_note,
        _checkpointing_note(checkpointed, layers),
    )


def _checkpoints_some_layers(training_args: Any, layers: int | None = None) -> bool:
    """Whether --gradient_checkpointing with --gradient_checkpointing_layers N checkpoints some of the `layers`
    decoder layers but not all or none (any N when `layers` is not known): compiled layers with only some layers
    checkpointed were measured under DeepSpeed only (where they recompiled), every layer or none under FSDP2."""
    wanted = getattr(training_args, "gradient_checkpointing_layers", None)
    if not getattr(training_args, "gradient_checkpointing", False) or wanted is None:
        return False
    return layers is None or 0 < wanted < layers


def compiles_decoder_layers(training_args: Any, layers: int | None = None) -> bool:
    """--compile_decoder_layers when given; unset, on where compiled layers were measured (benchmarks/bench_train.py
    on one GPU, FSDP2 on 1, 2 and 4, with every one of the model's `layers` decoder layers checkpointed or none,
    equal losses): training on a CUDA GPU, alone or under FSDP, without DeepSpeed, LoRA or 4/8-bit weights, and
    without --gradient_checkpointing_layers checkpointing only some layers. Under DeepSpeed ZeRO-3 compiled layers
    recompiled and lost their gain; DDP and the others were not measured."""
    wanted = getattr(training_args, "compile_decoder_layers", None)
    if wanted is not None:
        return bool(wanted)
    measured = (
        not getattr(training_args, "deepspeed", None)
        and not _checkpoints_some_layers(training_args, layers)
        and not getattr(training_args, "lora_enable", False)
        and getattr(training_args, "bits", 16) == 16
        and (dist_info().world_size == 1 or bool(getattr(training_args, "fsdp", None)))
        and not getattr(training_args, "torch_compile", False)  # the Trainer compiles the whole model then
    )
    device = getattr(training_args, "device", None) if measured else None  # TrainingArguments': this process's
    return device is not None and device.type == "cuda"
