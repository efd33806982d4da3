"""train/saving.py

Checkpoints in the released layouts, written from a full state dict (gathered under ZeRO-3 by the Trainer) and
read back for resuming.

| run                          | files                                                                          |
|------------------------------|--------------------------------------------------------------------------------|
| full (stage 1, stage 2)      | config.json + model*.safetensors (no tower tensors) [+ vision_tower/]          |
| projector-only (alignment)   | config.json + mm_projector.safetensors [+ vision_tower/] (*)                   |
| LoRA                         | config.json + adapter_config.json + adapter_model.safetensors                  |
|                              | + non_lora_trainables.safetensors [+ vision_tower/]                            |

(*) with `--mm_use_im_start_end` the file also holds the input embeddings (`model.embed_tokens.weight`, trained
for `<im_start>`/`<im_end>`), as the original's `mm_projector.bin`; resuming and `load_pretrained_model` read them.

`vision_tower/` is written when the ViT was trained (or `--save_vision_tower true`); `mm_vision_tower` in the
saved config then names it relatively, so the folder loads wherever it is moved.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from share4v.model.language_model.share4v_llama import VISION_TOWER_FOLDER
from share4v.model.vision_setup import (
    EMBED_TOKENS_KEY,
    TOWER_STATE_PREFIX,
    load_input_embeddings,
    load_projector_weights,
    load_vision_tower_weights,
    save_vision_tower,
    tower_state_from_model_state,
)
from share4v.model.weights_io import read_model_weights, read_weights, save_file, widened_new_safetensors
from share4v.train.fsdp import is_sharded, load_state

logger = logging.getLogger(__name__)

PROJECTOR_FILE = "mm_projector.safetensors"
NON_LORA_FILE = "non_lora_trainables.safetensors"
_PEFT_PREFIX = "base_model.model."
_ABSENT = object()


def is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if is_peft_model(model) else model


def checkpoint_layout(model: nn.Module) -> str:
    """ "lora", "projector" (alignment runs) or "full"."""
    if is_peft_model(model):
        return "lora"
    return "projector" if getattr(model.config, "tune_mm_mlp_adapter", False) else "full"


def vit_was_trained(model: nn.Module) -> bool:
    tower = base_model(model).get_vision_tower()
    return tower is not None and any(p.requires_grad for p in tower.parameters())


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_training_checkpoint(
    model: nn.Module,
    output_dir: str | Path,
    state_dict: dict[str, torch.Tensor] | None = None,
    save_vision_tower_folder: bool | None = None,
) -> None:
    """Write `model` (a share4v model, possibly wrapped by peft) to `output_dir` in its run's layout (main process).

    Args:
        state_dict: the full state (e.g. gathered under ZeRO-3); default `model.state_dict()`.
        save_vision_tower_folder: write `vision_tower/`; default: when the ViT has trainable parameters.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    full_state = model.state_dict() if state_dict is None else state_dict
    layout = checkpoint_layout(model)
    base = base_model(model)
    if save_vision_tower_folder is None:
        save_vision_tower_folder = vit_was_trained(model)
    if layout == "full":
        base.save_pretrained(output_dir, state_dict=full_state, save_vision_tower=save_vision_tower_folder)
        return

    plain_state = {k.removeprefix(_PEFT_PREFIX): v for k, v in full_state.items()}
    if layout == "projector":
        keep = ("model.mm_projector.",) + ((EMBED_TOKENS_KEY,) if base.config.mm_use_im_start_end else ())
        save_file(_cpu({k: v for k, v in plain_state.items() if k.startswith(keep)}), output_dir / PROJECTOR_FILE)
    else:
        with widened_new_safetensors(output_dir):  # peft writes it owner-only (through safetensors)
            model.save_pretrained(output_dir, state_dict=full_state)  # peft writes the adapter only
        tower_ids = {id(p) for p in base.get_vision_tower().parameters()} if base.get_vision_tower() else set()
        trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
        trainable -= {n for n, p in model.named_parameters() if id(p) in tower_ids}
        save_file(_cpu({k: v for k, v in full_state.items() if k in trainable}), output_dir / NON_LORA_FILE)
    tower_name = base.config.mm_vision_tower
    if save_vision_tower_folder:
        tower = base.get_vision_tower()
        tower_state = tower_state_from_model_state(plain_state)
        expected = {"vision_model." + key for key in tower.vision_tower.state_dict()}
        if set(tower_state) != expected:
            raise RuntimeError(
                f"the weights to save hold {len(tower_state)} of the vision tower's {len(expected)} tensors: "
                "gather the whole model (ZeRO-3) before saving"
            )
        save_vision_tower(tower, output_dir / VISION_TOWER_FOLDER, tower_state)
        base.config.mm_vision_tower = VISION_TOWER_FOLDER
    # a 4/8-bit run (QLoRA) quantized its frozen LLM on loading; the weights saved here are not quantized, and a
    # `quantization_config` in config.json would make loaders read the base model as pre-quantized weights
    quantization = base.config.__dict__.pop("quantization_config", _ABSENT)
    try:
        base.config.save_pretrained(output_dir)
    finally:
        base.config.mm_vision_tower = tower_name
        if quantization is not _ABSENT:
            base.config.quantization_config = quantization


def load_training_checkpoint(model: nn.Module, checkpoint_dir: str | Path) -> None:
    """Restore the weights a `save_training_checkpoint` folder holds into `model` (for resuming).

    Raises:
        ValueError: when the checkpoint's tensors do not fit the model.
    """
    folder = Path(checkpoint_dir)
    base = base_model(model)
    if is_sharded(base):
        _load_sharded(base, folder)
        return
    if (folder / "adapter_config.json").is_file():
        from peft import set_peft_model_state_dict

        adapter = read_weights(next(folder.glob("adapter_model.*")))
        result = set_peft_model_state_dict(model, adapter)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{folder}: adapter tensors the model lacks: {result.unexpected_keys[:5]}")
        _load_partial(model, read_weights(folder / NON_LORA_FILE), folder / NON_LORA_FILE, complete=False)
    elif (projector_file := _projector_file(folder)) is not None:
        load_projector_weights(base.get_model().mm_projector, projector_file)
        load_input_embeddings(base, projector_file)
    else:
        _load_partial(base, read_model_weights(folder), folder, complete=True)
    if (folder / VISION_TOWER_FOLDER / "model.safetensors").is_file():
        load_vision_tower_weights(base.get_vision_tower(), folder / VISION_TOWER_FOLDER)


def _projector_file(folder: Path) -> Path | None:
    return next((folder / name for name in (PROJECTOR_FILE, "mm_projector.bin") if (folder / name).is_file()), None)


def _load_sharded(model: nn.Module, folder: Path) -> None:
    """The full and projector-only layouts into a model that FSDP2 shards: one state dict of whole tensors (the
    tower's included), from which each rank keeps its shards."""
    if (folder / "adapter_config.json").is_file():
        raise ValueError(f"{folder}: resuming a LoRA run under FSDP is not supported; resume it under DeepSpeed")
    projector_file = _projector_file(folder)
    if projector_file is not None:
        state = {k: v for k, v in read_weights(projector_file).items() if "mm_projector." in k or k == EMBED_TOKENS_KEY}
        if not state:
            raise ValueError(f"{projector_file} holds no mm_projector weights")
    else:
        state = read_model_weights(folder)
    tower_file = folder / VISION_TOWER_FOLDER / "model.safetensors"
    if tower_file.is_file():
        state |= {TOWER_STATE_PREFIX + k.removeprefix("vision_model."): v for k, v in read_weights(tower_file).items()}
    _load_partial(model, state, folder, complete=projector_file is None)


def _load_partial(model: nn.Module, state: dict[str, torch.Tensor], where: Any, complete: bool) -> None:
    """Load `state` into `model`; with `complete`, every weight but the vision tower's must be in it."""
    result = load_state(model, state)
    if result.unexpected_keys:
        raise ValueError(f"{where}: tensors the model does not have: {result.unexpected_keys[:5]}")
    missing = [k for k in result.missing_keys if ".vision_tower." not in k]
    if complete and missing:
        raise ValueError(f"{where}: the checkpoint lacks tensors of the model: {missing[:5]}")
