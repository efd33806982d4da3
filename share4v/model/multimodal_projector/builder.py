"""multimodal_projector/builder.py

The vision→language projector: `linear`, `mlp{N}x_gelu` (N linear layers with GELU between) or `identity`.
Layer indices match the released checkpoints (`mm_projector.0.*`, `mm_projector.2.*` for `mlp2x_gelu`).
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")
KNOWN_PROJECTOR_TYPES = ("linear", "mlp{N}x_gelu", "identity")


class IdentityMap(nn.Module):
    """Passes features through unchanged (for towers whose width already equals the LLM's)."""

    def forward(self, x, *args, **kwargs):
        return x

    @property
    def config(self) -> dict[str, str]:
        return {"mm_projector_type": "identity"}


def is_known_projector_type(projector_type: str) -> bool:
    return projector_type in ("linear", "identity") or _MLP_GELU.match(projector_type) is not None


def projector_linear_layers(projector_type: str) -> int:
    """How many linear layers a projector of this type has (0 for `identity`).

    Raises:
        ValueError: for an unknown projector type.
    """
    if projector_type in ("linear", "identity"):
        return int(projector_type == "linear")
    match = _MLP_GELU.match(projector_type)
    if match is None:
        raise ValueError(
            f"unknown mm_projector_type {projector_type!r}; expected one of {', '.join(KNOWN_PROJECTOR_TYPES)}"
        )
    return int(match.group(1))


def build_vision_projector(config: Any) -> nn.Module:
    """Build the projector named by `config.mm_projector_type` from `mm_hidden_size` to `hidden_size`.

    Raises:
        ValueError: for an unknown projector type.
    """
    depth = projector_linear_layers(config.mm_projector_type)
    if depth == 0:
        return IdentityMap()
    if config.mm_projector_type == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    layers: list[nn.Module] = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
    for _ in range(1, depth):
        layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
    return nn.Sequential(*layers)
