"""train/optim.py

Optimizer parameter groups: weight decay on everything but biases and norms (as transformers' Trainer decides),
and separate learning rates for the projector (`--mm_projector_lr`) and the vision tower (`--vision_tower_lr`),
each taking effect on its own (the original applied `vision_tower_lr` only when `mm_projector_lr` was set too).
"""

from __future__ import annotations

from typing import Any

from torch import nn


def param_groups(
    model: nn.Module,
    decay_names: set[str] | list[str],
    weight_decay: float,
    mm_projector_lr: float | None = None,
    vision_tower_lr: float | None = None,
) -> list[dict[str, Any]]:
    """Groups of trainable parameters; a group without `lr` uses the optimizer's (the run's learning rate).

    An lr of None or 0 means "the run's learning rate" (the original treated 0 as unset too).
    """
    decoder = model.get_model()
    tower = decoder.get_vision_tower()
    projector = getattr(decoder, "mm_projector", None)
    special: dict[int, float] = {}
    if mm_projector_lr and projector is not None:
        special.update(dict.fromkeys((id(p) for p in projector.parameters()), mm_projector_lr))
    if vision_tower_lr and tower is not None:
        special.update(dict.fromkeys((id(p) for p in tower.parameters()), vision_tower_lr))
    decay_names = set(decay_names)
    buckets: dict[tuple[float | None, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            buckets.setdefault((special.get(id(param)), name in decay_names), []).append(param)
    groups = []
    for (lr, decay), params in sorted(buckets.items(), key=lambda item: (item[0][0] or 0.0, item[0][1])):
        group: dict[str, Any] = {"params": params, "weight_decay": weight_decay if decay else 0.0}
        if lr is not None:
            group["lr"] = lr
        groups.append(group)
    return groups
