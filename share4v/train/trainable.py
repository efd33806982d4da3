"""train/trainable.py

Which parts of the model a stage trains, as data (`TrainablePlan`), applied by one logged function.

| stage (flags)                                         | LLM | lm_head | projector | ViT                  |
|-------------------------------------------------------|-----|---------|-----------|----------------------|
| projector alignment (`--tune_mm_mlp_adapter`)         |  -  |    -    |   train   |  -                   |
| stage 1 (`--tune_entire_model --tune_vit_from_layer k`)| train | train |   train   | encoder layers >= k* |
| stage 2 (default)                                     | train | train |   train   |  -                   |
| LoRA (`--lora_enable`)                                | adapters | - |   train   | as above             |

Alignment with `--mm_use_im_start_end` also trains the input embeddings (the new tokens' rows).
`--freeze_backbone` freezes the LLM body (not lm_head), `--freeze_mm_mlp_adapter` the projector,
`--tune_vision_tower` unlocks the ViT without `--tune_entire_model`; `--tune_vit_from_layer -1` means the whole ViT.
ViT layers are picked by their index in the encoder's module list, never by parsing parameter names. *The ViT's modules
that the selected feature never passes through (at `mm_vision_select_layer -2`: the last layer and `post_layernorm`)
stay frozen whatever the flags say: no gradient reaches them, so they would not move anyway, and a trainable parameter
without a gradient breaks DDP with gradient checkpointing and FSDP's optimizer-state resume.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainablePlan:
    llm: bool  # the decoder body and input embeddings (with LoRA: the adapters only)
    lm_head: bool
    projector: bool
    vit_from_layer: int | None  # None: frozen; -1: the whole ViT; k: encoder layers k, k+1, ...
    lora: bool = False
    input_embeddings: bool = False  # alignment with <im_start>/<im_end>: their new embedding rows learn


def plan_from_args(model_args: Any, training_args: Any) -> TrainablePlan:
    """The plan the original flags describe (see the module table)."""
    lora = bool(getattr(training_args, "lora_enable", False))
    if model_args.tune_mm_mlp_adapter:
        llm = lm_head = False
    else:
        llm, lm_head = not model_args.freeze_backbone or lora, not lora
    projector = not getattr(training_args, "freeze_mm_mlp_adapter", False)
    vit = None
    if model_args.tune_entire_model:
        if not lora:
            llm = lm_head = projector = True
        vit = model_args.tune_vit_from_layer
    elif model_args.tune_vision_tower:
        vit = model_args.tune_vit_from_layer
    if vit is not None and vit < -1:
        raise ValueError(f"--tune_vit_from_layer must be -1 (whole ViT) or a layer index >= 0, not {vit}")
    embeddings = bool(model_args.tune_mm_mlp_adapter and getattr(model_args, "mm_use_im_start_end", False))
    return TrainablePlan(llm, lm_head, projector, vit, lora, input_embeddings=embeddings)


def _numel(param: nn.Parameter) -> int:
    return getattr(param, "ds_numel", None) or param.numel()  # ZeRO-3 partitions hold ds_numel


def _count(params) -> tuple[int, int]:
    params = list(params)
    return sum(_numel(p) for p in params if p.requires_grad), sum(_numel(p) for p in params)


def _components(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's parameters by component (works through a peft wrapper)."""
    decoder = model.get_model()
    tower = decoder.get_vision_tower()
    tower_ids = {id(p) for p in tower.parameters()} if tower is not None else set()
    projector = getattr(decoder, "mm_projector", None)
    projector_ids = {id(p) for p in projector.parameters()} if projector is not None else set()
    head = model.get_output_embeddings()
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    llm = [p for p in model.parameters() if id(p) not in tower_ids | projector_ids | head_ids]
    return {
        "llm": llm,
        "lm_head": list(head.parameters()) if head is not None else [],
        "projector": list(projector.parameters()) if projector is not None else [],
        "vision_tower": list(tower.parameters()) if tower is not None else [],
    }


def vit_encoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ViT's encoder layers, in order."""
    return model.get_model().get_vision_tower().vision_tower.encoder.layers


def apply_trainable(model: nn.Module, plan: TrainablePlan) -> dict[str, tuple[int, int]]:
    """Set `requires_grad` on every parameter as `plan` says and log each component as trainable or frozen.

    Returns:
        `{component: (trainable parameters, all parameters)}`.
    """
    parts = _components(model)
    # With LoRA the LLM trains what peft marked trainable: the adapters (and biases, as --lora_bias says).
    peft_trainable = {id(p) for p in parts["llm"] if p.requires_grad} if plan.lora else set()
    model.requires_grad_(False)
    for param in parts["llm"]:
        if plan.llm and (not plan.lora or id(param) in peft_trainable):
            param.requires_grad_(True)
    if plan.input_embeddings:
        model.get_input_embeddings().requires_grad_(True)
    for param in parts["lm_head"]:
        param.requires_grad_(plan.lm_head)
    for param in parts["projector"]:
        param.requires_grad_(plan.projector)
    vit_note = "frozen"
    if plan.vit_from_layer is not None:
        if not parts["vision_tower"]:
            raise ValueError("the plan trains the ViT but the model has no vision tower")
        tower, layers = model.get_model().get_vision_tower(), vit_encoder_layers(model)
        if plan.vit_from_layer == -1:
            tower.requires_grad_(True)
        elif plan.vit_from_layer >= len(layers):
            raise ValueError(f"--tune_vit_from_layer {plan.vit_from_layer}: the ViT has {len(layers)} layers")
        else:
            for layer in layers[plan.vit_from_layer :]:
                layer.requires_grad_(True)
        unused = tower.unused_modules()  # the later layers, then post_layernorm
        last = len(layers) - len(unused)  # the last layer that feeds the selected feature
        if plan.vit_from_layer > last:
            raise ValueError(
                f"--tune_vit_from_layer {plan.vit_from_layer}: at mm_vision_select_layer {tower.select_layer} the "
                f"feature comes out of encoder layer {last}, so no later layer can learn"
            )
        for module in unused:
            module.requires_grad_(False)
        first = "embeddings, pre_layrnorm, " if plan.vit_from_layer == -1 else ""
        vit_note = f"{first}encoder layers {max(plan.vit_from_layer, 0)}-{last} (the rest feed nothing)"
    summary = {name: _count(params) for name, params in parts.items()}
    for name, (trainable, total) in summary.items():
        if total:
            status = "TRAINABLE" if trainable else "Frozen"
            extra = f", {vit_note}" if name == "vision_tower" and trainable else ""
            extra += ", LoRA adapters" if name == "llm" and plan.lora and trainable else ""
            logger.info("[%s] %s: %s / %s parameters%s", status, name, f"{trainable:,}", f"{total:,}", extra)
    return summary
