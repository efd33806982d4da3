"""multimodal_encoder/clip_encoder.py

`CLIPVisionTower`: transformers' `CLIPVisionModel` plus ShareGPT4V's feature selection (hidden state of
`mm_vision_select_layer`, patch tokens only or CLS + patches). The weights are loaded after the language model,
from the folder that `mm_vision_tower` names, exactly as the original does.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPImageProcessorPil, CLIPVisionModel

SELECT_FEATURES = ("patch", "cls_patch")


def check_select_layer(select_layer: int, num_layers: int, tower: str) -> None:
    """The feature layer must name one of the tower's `num_layers + 1` hidden states (embeddings + each layer)."""
    if not -(num_layers + 1) <= select_layer <= num_layers:
        raise ValueError(
            f"mm_vision_select_layer {select_layer} is outside the {num_layers}-layer vision tower {tower} "
            f"(valid: {-(num_layers + 1)} to {num_layers})"
        )


class CLIPVisionTower(nn.Module):
    """Wraps a CLIP vision encoder; `forward(images [N, 3, H, W]) -> features [N, num_patches(+1), C]`."""

    def __init__(self, vision_tower: str, select_layer: int = -2, select_feature: str = "patch"):
        super().__init__()
        if select_feature not in SELECT_FEATURES:
            raise ValueError(f"unknown mm_vision_select_feature {select_feature!r}; expected one of {SELECT_FEATURES}")
        self.vision_tower_name = vision_tower
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.vision_tower: CLIPVisionModel | None = None
        self.image_processor: CLIPImageProcessorPil | None = None

    @property
    def is_loaded(self) -> bool:
        return self.vision_tower is not None

    def load_model(
        self,
        path: str | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        attn_implementation: str | None = None,
    ) -> None:
        """Load the image processor and the frozen CLIP vision model from `path` (default: the configured name)."""
        path = path or self.vision_tower_name
        # The PIL backend reproduces the original (PIL bicubic) pre-processing on every machine, GPU or not.
        self.image_processor = CLIPImageProcessorPil.from_pretrained(path)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        self.vision_tower = CLIPVisionModel.from_pretrained(path, **kwargs)
        self.vision_tower.requires_grad_(False)
        if device is not None:
            self.vision_tower.to(device)

    def unused_modules(self) -> list[nn.Module]:
        """The modules the selected hidden state never passes through: the encoder layers after it and the pooled
        output's `post_layernorm`. No gradient reaches them, so training keeps them frozen."""
        layers = self.vision_tower.encoder.layers
        check_select_layer(self.select_layer, len(layers), self.vision_tower_name)
        used = self.select_layer % (len(layers) + 1)  # hidden_states[k] is the output of the first k layers
        return [*layers[used:], self.vision_tower.post_layernorm]

    def feature_select(self, hidden_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
        features = hidden_states[self.select_layer]  # [N, 1 + P, C]
        return features[:, 1:] if self.select_feature == "patch" else features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """No `torch.no_grad()` here on purpose: stage-1 training fine-tunes the later ViT blocks."""
        if self.vision_tower is None:
            raise RuntimeError(f"vision tower {self.vision_tower_name!r} is not loaded; call load_model() first")
        outputs = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(outputs.hidden_states).to(images.dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.vision_tower.dtype

    @property
    def device(self) -> torch.device:
        return self.vision_tower.device

    @property
    def config(self):
        return self.vision_tower.config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches(self) -> int:
        return (self.config.image_size // self.config.patch_size) ** 2
