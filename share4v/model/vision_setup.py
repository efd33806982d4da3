"""model/vision_setup.py

Attaching the vision side to a language model for training, and writing it back to disk.

`initialize_vision_modules` builds (or reuses) the CLIP tower and the projector on a Llama decoder, records the
`mm_*` keys in its config and optionally starts the projector from a pre-trained `mm_projector` file.
`save_vision_tower` writes a tower in the released layout (`config.json`, `preprocessor_config.json`,
`model.safetensors` with `vision_model.*` names), the folder `mm_vision_tower` can name.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from share4v.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_PATCH_TOKEN
from share4v.model.multimodal_encoder.builder import resolve_vision_tower_path
from share4v.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from share4v.model.multimodal_projector.builder import build_vision_projector
from share4v.model.weights_io import read_weights, save_file

TOWER_STATE_PREFIX = "model.vision_tower.vision_tower."  # where a tower's weights sit in the full model's state


def gathered_for_update(params: list[nn.Parameter]):
    """Full parameters to modify under DeepSpeed ZeRO-3 (partitioned ones carry `ds_id`), else a no-op context.

    Every rank must enter it; the changes made on rank 0 are kept.
    """
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=0)
    return contextlib.nullcontext()


def load_projector_weights(projector: nn.Module, path: str | Path) -> None:
    """Load `mm_projector` weights (keys `...mm_projector.<name>`) from `path` into `projector`.

    Raises:
        ValueError: when the file holds no projector weights or they do not fit.
    """
    state = {k.split("mm_projector.", 1)[1]: v for k, v in read_weights(path).items() if "mm_projector." in k}
    if not state:
        raise ValueError(f"{path} holds no mm_projector weights")
    params = list(projector.parameters())
    with gathered_for_update(params):
        try:
            projector.load_state_dict({k: v.to(params[0].dtype) for k, v in state.items()}, strict=True)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0]
            raise ValueError(f"projector weights in {path} do not fit the projector: {first}") from None


def initialize_vision_modules(
    decoder: nn.Module,
    vision_tower: str,
    projector_type: str = "linear",
    select_layer: int = -2,
    select_feature: str = "patch",
    pretrain_mm_mlp_adapter: str | None = None,
    tower_path: str | None = None,
) -> CLIPVisionTower:
    """Give `decoder` (the Llama model inside the causal LM) a loaded vision tower and a projector.

    The tower is (re)built from `vision_tower` (loaded from `tower_path` when given) and stays frozen; an existing
    projector is kept (a stage-2 run continues stage 1's), a missing one is built. The config gets the `mm_*` keys.

    Returns:
        The loaded tower.
    """
    config = decoder.config
    weight = decoder.get_input_embeddings().weight
    tower = CLIPVisionTower(vision_tower, select_layer=select_layer, select_feature=select_feature)
    tower.load_model(tower_path or resolve_vision_tower_path(vision_tower), dtype=weight.dtype, device=weight.device)
    decoder.vision_tower = tower

    config.mm_vision_tower = vision_tower
    config.use_mm_proj = True
    config.mm_projector_type = projector_type
    config.mm_hidden_size = tower.hidden_size
    config.mm_vision_select_layer = select_layer
    config.mm_vision_select_feature = select_feature
    if getattr(decoder, "mm_projector", None) is None:
        decoder.mm_projector = build_vision_projector(config).to(device=weight.device, dtype=weight.dtype)
    decoder.mm_projector.requires_grad_(True)
    if pretrain_mm_mlp_adapter:
        load_projector_weights(decoder.mm_projector, pretrain_mm_mlp_adapter)
    return tower


def tower_state_from_model_state(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tower's weights out of a full model state dict, under the released `vision_model.*` names."""
    return {
        "vision_model." + key.removeprefix(TOWER_STATE_PREFIX).removeprefix("vision_model."): value
        for key, value in state_dict.items()
        if key.startswith(TOWER_STATE_PREFIX)
    }


def save_vision_tower(tower: CLIPVisionTower, folder: str | Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Write the tower folder (`config.json`, `preprocessor_config.json`, `model.safetensors`) to `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = tower.config.to_dict()
    config.pop("_name_or_path", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if tower.image_processor is not None:
        tower.image_processor.save_pretrained(folder)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def load_vision_tower_weights(tower: CLIPVisionTower, folder: str | Path) -> None:
    """Load a tower folder's weights (released `vision_model.*` names or bare ones) into a loaded tower."""
    state = read_weights(Path(folder) / "model.safetensors")
    state = {k.removeprefix("vision_model."): v for k, v in state.items()}
    params = list(tower.vision_tower.parameters())
    with gathered_for_update(params):
        tower.vision_tower.load_state_dict({k: v.to(params[0].dtype) for k, v in state.items()}, strict=True)


def resize_embeddings_to_mean(model: nn.Module, size: int) -> None:
    """Grow the input (and output) embeddings to `size` rows, the new rows set to the mean of the old ones."""
    old = model.get_input_embeddings().weight.shape[0]
    if getattr(model.get_input_embeddings().weight, "ds_numel", None):
        old = model.get_input_embeddings().weight.ds_shape[0]
    model.resize_token_embeddings(size, mean_resizing=False)
    for embeddings in (model.get_input_embeddings(), model.get_output_embeddings()):
        if embeddings is not None:
            with gathered_for_update([embeddings.weight]), torch.no_grad():
                embeddings.weight[old:] = embeddings.weight[:old].mean(dim=0, keepdim=True)


# The input embeddings a projector-only run saves next to its projector when `<im_start>`/`<im_end>` were added
# (their rows train with it), under the name the original's `get_mm_adapter_state_maybe_zero_3` gives them.
EMBED_TOKENS_KEY = "model.embed_tokens.weight"


def initialize_vision_tokenizer(
    model: nn.Module,
    tokenizer: Any,
    mm_use_im_patch_token: bool = False,
    mm_use_im_start_end: bool = False,
    tune_mm_mlp_adapter: bool = False,
    pretrain_mm_mlp_adapter: str | None = None,
) -> int:
    """Add the optional image tokens (`<im_patch>`, `<im_start>`/`<im_end>`) and size the embeddings to match.

    New rows start at the mean of the old ones. With `tune_mm_mlp_adapter` the input embeddings become trainable
    (the output ones frozen); `pretrain_mm_mlp_adapter` may carry trained rows for `<im_start>`/`<im_end>`.

    Returns:
        How many tokens were added.
    """
    new_tokens = [DEFAULT_IMAGE_PATCH_TOKEN] if mm_use_im_patch_token else []
    new_tokens += [DEFAULT_IM_START_TOKEN, DEFAULT_IM_END_TOKEN] if mm_use_im_start_end else []
    added = tokenizer.add_tokens(new_tokens, special_tokens=True) if new_tokens else 0
    if added:
        resize_embeddings_to_mean(model, len(tokenizer))
    if mm_use_im_start_end and tune_mm_mlp_adapter:
        model.get_input_embeddings().requires_grad_(True)
        if model.get_output_embeddings() is not None:
            model.get_output_embeddings().requires_grad_(False)
    if mm_use_im_start_end and pretrain_mm_mlp_adapter:
        load_input_embeddings(model, pretrain_mm_mlp_adapter, added)
    return added


def load_input_embeddings(model: nn.Module, projector_file: str | Path, added: int = 0) -> bool:
    """The input embeddings a projector-only run saved beside its projector (`EMBED_TOKENS_KEY`, when it trained
    `<im_start>`/`<im_end>`) into `model`: every row, or, with `added`, the `added` newest rows when the file holds
    only those. False when the file holds none.

    Raises:
        ValueError: when the file's rows fit neither.
    """
    trained = read_weights(projector_file).get(EMBED_TOKENS_KEY)
    if trained is None:
        return False
    weight = model.get_input_embeddings().weight
    with gathered_for_update([weight]), torch.no_grad():
        if trained.shape == weight.shape:
            weight.copy_(trained.to(weight.dtype))
        elif added and trained.shape[1:] == weight.shape[1:] and trained.shape[0] == added:
            weight[-added:] = trained.to(weight.dtype)
        else:
            expected = f"{tuple(weight.shape)}" + (f" or the {added} new rows" if added else "")
            raise ValueError(f"{projector_file}: {EMBED_TOKENS_KEY} has shape {tuple(trained.shape)}, not {expected}")
    return True


def image_tokens_per_image(tower: CLIPVisionTower) -> int:
    """How many positions one image takes in the language model's sequence."""
    return tower.num_patches + (1 if tower.select_feature == "cls_patch" else 0)


__all__ = [
    "gathered_for_update",
    "image_tokens_per_image",
    "initialize_vision_modules",
    "initialize_vision_tokenizer",
    "load_projector_weights",
    "load_vision_tower_weights",
    "resize_embeddings_to_mean",
    "save_vision_tower",
    "tower_state_from_model_state",
]
