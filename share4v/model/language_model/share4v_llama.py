"""share4v_llama.py

`Share4VConfig` and `Share4VLlamaForCausalLM`: transformers' Llama with ShareGPT4V's vision tower and projector
(`model.vision_tower`, `model.mm_projector`), in the released checkpoint format (model_type `share4v`).

The model adds one thing to Llama: `images=` in `forward` and `generate`. Images are encoded, projected and
spliced in at the `-200` placeholders (see `share4v_arch.merge_image_features`); everything after that — attention,
KV cache, sampling — is transformers' own. Training adds two exact speed-ups: `pack_sequences=True` concatenates
the batch's samples into one row without padding (each sample attends only to itself; see `packed_attention`), and
the loss is computed from the hidden states without full-vocabulary logits (see `causal_lm_loss`).
"""

from __future__ import annotations

import inspect
import logging

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    LlamaPreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from share4v.constants import IMAGE_TOKEN_INDEX
from share4v.mm_utils import IMAGE_ASPECT_RATIOS
from share4v.model.causal_lm_loss import causal_lm_loss
from share4v.model.multimodal_encoder.builder import build_vision_tower
from share4v.model.multimodal_encoder.clip_encoder import SELECT_FEATURES, CLIPVisionTower
from share4v.model.multimodal_projector.builder import (
    KNOWN_PROJECTOR_TYPES,
    build_vision_projector,
    is_known_projector_type,
)
from share4v.model.packed_attention import PACKED_ATTENTION  # importing it registers the implementation
from share4v.model.share4v_arch import MultimodalInputs, infer_padding_side, merge_image_features
from share4v.model.vision_setup import (
    TOWER_STATE_PREFIX,
    initialize_vision_modules,
    initialize_vision_tokenizer,
    tower_state_from_model_state,
)
from share4v.model.vision_setup import save_vision_tower as write_vision_tower
from share4v.model.weights_io import widened_new_safetensors

logger = logging.getLogger(__name__)

# transformers renamed forward's `past_key_values` to `cache` (5.2x; the old name goes in 5.40). Callers written
# against the original (4.31-style decoding loops) pass `past_key_values`: hand it on under the current name.
_CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"

VISION_TOWER_FOLDER = "vision_tower"  # where save_pretrained writes the tower, relative to the checkpoint

# What 4/8-bit loading leaves in full precision (bitsandbytes' `llm_int8_skip_modules`): the vision side, whose
# weights may be loaded after quantization, and the output layer. Full module paths: transformers 5 matches a name
# from its start (or as a suffix), so the original's bare "mm_projector" no longer matches "model.mm_projector.0".
UNQUANTIZED_MODULES = ["model.vision_tower", "model.mm_projector", "lm_head"]


@strict
class Share4VConfig(LlamaConfig):
    """Llama config plus the `mm_*` keys of ShareGPT4V checkpoints; defaults are the original code's fallbacks."""

    model_type = "share4v"

    mm_vision_tower: str | None = None
    mm_hidden_size: int | None = None
    mm_projector_type: str = "linear"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = True
    use_mm_proj: bool | None = None
    image_aspect_ratio: str = "square"
    image_grid_pinpoints: list | str | None = None
    tune_mm_mlp_adapter: bool = False
    freeze_mm_mlp_adapter: bool = False
    tune_entire_model: bool = False
    tune_vision_tower: bool = False
    mm_projector_lr: float | None = None
    vision_tower_lr: float | None = None

    @property
    def is_multimodal(self) -> bool:
        return bool(self.mm_vision_tower)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_multimodal_keys()

    def _check_multimodal_keys(self) -> None:
        """Reject values the model could only fail on later, with a one-line error naming the key."""
        if not is_known_projector_type(self.mm_projector_type):
            known = ", ".join(KNOWN_PROJECTOR_TYPES)
            raise ValueError(f"unknown mm_projector_type {self.mm_projector_type!r}; expected one of {known}")
        if self.mm_vision_select_feature not in SELECT_FEATURES:
            raise ValueError(
                f"unknown mm_vision_select_feature {self.mm_vision_select_feature!r}; expected one of {SELECT_FEATURES}"
            )
        if self.image_aspect_ratio not in IMAGE_ASPECT_RATIOS:
            raise ValueError(
                f"unknown image_aspect_ratio {self.image_aspect_ratio!r}; expected one of {IMAGE_ASPECT_RATIOS}"
            )
        if self.is_multimodal and self.mm_hidden_size is None:
            raise ValueError("mm_vision_tower is set but mm_hidden_size (the vision feature width) is missing")


class Share4VLlamaModel(LlamaModel):
    """Llama decoder + (when the config names a tower) `vision_tower` and `mm_projector`."""

    config_class = Share4VConfig

    def __init__(self, config: Share4VConfig):
        super().__init__(config)
        if config.is_multimodal:
            self.vision_tower = build_vision_tower(config)
            self.mm_projector = build_vision_projector(config)
            self.post_init()  # initialise the projector like the rest of the model

    def get_vision_tower(self) -> CLIPVisionTower | None:
        return getattr(self, "vision_tower", None)

    def initialize_vision_modules(self, model_args, fsdp=None) -> None:
        """The original's name: attach the tower of `model_args.vision_tower` and a projector (see vision_setup)."""
        initialize_vision_modules(
            self,
            model_args.vision_tower,
            projector_type=getattr(model_args, "mm_projector_type", "linear"),
            select_layer=getattr(model_args, "mm_vision_select_layer", -2),
            select_feature=getattr(model_args, "mm_vision_select_feature", "patch"),
            pretrain_mm_mlp_adapter=getattr(model_args, "pretrain_mm_mlp_adapter", None),
        )


class Share4VLlamaForCausalLM(LlamaForCausalLM):
    """Causal LM that accepts `images=` (pixel values `[N, 3, H, W]`) next to `input_ids` with `-200` placeholders."""

    config_class = Share4VConfig
    # The vision tower is loaded from `mm_vision_tower`, as in the original; tower weights found inside an LLM
    # checkpoint (saved while it was attached) are not read.
    _keys_to_ignore_on_load_unexpected = (r"model\.vision_tower\.",)

    def __init__(self, config: Share4VConfig):
        # Skip LlamaForCausalLM.__init__ so the decoder is built once, as a Share4VLlamaModel.
        LlamaPreTrainedModel.__init__(self, config)
        self.model = Share4VLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        # With labels in training: the loss without full-vocabulary logits (see causal_lm_loss; no logits are
        # returned). Off by default, so outside training loops get transformers' outputs; the trainer turns it on
        # (--fused_cross_entropy). Same loss either way.
        self.fused_cross_entropy = False
        self.post_init()

    def get_model(self) -> Share4VLlamaModel:
        return self.model

    def get_vision_tower(self) -> CLIPVisionTower | None:
        return self.model.get_vision_tower()

    def initialize_vision_tokenizer(self, model_args, tokenizer) -> None:
        """The original's name for adding the optional image tokens (see vision_setup.initialize_vision_tokenizer)."""
        initialize_vision_tokenizer(
            self,
            tokenizer,
            mm_use_im_patch_token=getattr(model_args, "mm_use_im_patch_token", False),
            mm_use_im_start_end=getattr(model_args, "mm_use_im_start_end", False),
            tune_mm_mlp_adapter=getattr(model_args, "tune_mm_mlp_adapter", False),
            pretrain_mm_mlp_adapter=getattr(model_args, "pretrain_mm_mlp_adapter", None),
        )

    def prepare_inputs_labels_for_multimodal(self, input_ids, attention_mask, past_key_values, labels, images):
        """The original's name and return tuple `(None, attention_mask, past_key_values, inputs_embeds, labels)`.

        Without images (or for a one-token decoding step) the inputs come back unchanged with `inputs_embeds`
        None, as in the original.
        """
        if images is None or self.get_vision_tower() is None or input_ids.shape[1] == 1:
            return input_ids, attention_mask, past_key_values, None, labels
        merged = self.prepare_multimodal_inputs(input_ids, images, attention_mask, labels)
        return None, merged.attention_mask, past_key_values, merged.inputs_embeds, merged.labels

    def save_pretrained(self, save_directory, *args, state_dict=None, save_vision_tower: bool | None = None, **kwargs):
        """Save in the released layout: the LLM checkpoint never holds vision-tower tensors.

        With `save_vision_tower` (default: whenever a tower is loaded) the tower goes to `vision_tower/` inside the
        checkpoint and the saved config names it relatively, so the folder loads anywhere it is moved; otherwise
        the config keeps naming the tower the model was built with. `state_dict` (e.g. gathered under ZeRO-3)
        supplies the weights of both parts.
        """
        full_state = self.state_dict() if state_dict is None else state_dict
        llm_state = {k: v for k, v in full_state.items() if not k.startswith("model.vision_tower.")}
        tower = self.get_vision_tower()
        if save_vision_tower is None:
            save_vision_tower = tower is not None and tower.is_loaded
        tower_name = self.config.mm_vision_tower
        if save_vision_tower and state_dict is not None and not state_dict:
            # transformers' "nothing gathered" placeholder (ZeRO-3 without 16-bit gathering): no tower to write
            logger.warning("no weights were gathered: the vision tower folder is not written")
            save_vision_tower = False
        if save_vision_tower:
            if tower is None or not tower.is_loaded:
                raise ValueError("save_vision_tower=True but the model has no loaded vision tower")
            tower_state = tower_state_from_model_state(full_state)
            if not tower_state:  # a state dict without the tower: take the tower's own weights
                if any(hasattr(p, "ds_id") for p in tower.parameters()):
                    raise RuntimeError("the vision tower is partitioned (ZeRO-3): pass a state_dict that holds it")
                tower_state = tower_state_from_model_state(
                    {TOWER_STATE_PREFIX + k: v for k, v in tower.vision_tower.state_dict().items()}
                )
            if kwargs.get("is_main_process", True):
                write_vision_tower(tower, f"{save_directory}/{VISION_TOWER_FOLDER}", tower_state)
            self.config.mm_vision_tower = VISION_TOWER_FOLDER
        try:  # transformers writes the weights owner-only (through safetensors): widen those it writes
            with widened_new_safetensors(save_directory, enabled=kwargs.get("is_main_process", True)):
                super().save_pretrained(save_directory, *args, state_dict=llm_state, **kwargs)
        finally:
            self.config.mm_vision_tower = tower_name

    def encode_images(self, images: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        """Pixel values `[N, 3, H, W]` (or a list of `[3, H, W]`) → projected features `[N, P, D]` (or a list)."""
        if isinstance(images, (list, tuple)):
            if all(image.shape == images[0].shape for image in images):
                images = torch.stack(list(images))
            else:
                return [self.encode_images(image.unsqueeze(0))[0] for image in images]
        features = self.model.vision_tower(images)  # [N, P, C], in the dtype of `images`
        # the projector's own device and dtype (under FSDP mixed precision, its gathered weights are in the compute
        # dtype while other weights keep theirs); an empty projector takes the embeddings'
        reference = next(self.model.mm_projector.parameters(), self.get_input_embeddings().weight)
        return self.model.mm_projector(features.to(device=reference.device, dtype=reference.dtype))  # [N, P, D]

    def prepare_multimodal_inputs(
        self,
        input_ids: torch.Tensor,
        images: torch.Tensor | list[torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        padding_side: str | None = None,
    ) -> MultimodalInputs:
        """Encode `images` and splice them into `input_ids` (padding side kept from the input unless given)."""
        if self.get_vision_tower() is None:
            raise ValueError("images were given to a model without a vision tower (config has no mm_vision_tower)")
        return merge_image_features(
            input_ids,
            self.encode_images(images),
            self.get_input_embeddings(),
            attention_mask=attention_mask,
            labels=labels,
            padding_side=padding_side or infer_padding_side(attention_mask),
        )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        images: torch.Tensor | list[torch.Tensor] | None = None,
        pack_sequences: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ):
        """Llama's forward plus `images=`.

        `pack_sequences=True` (training; needs `input_ids`) drops the padding and runs the batch as one row of
        concatenated samples, each attending only to itself; the loss is the padded batch's loss. With labels, when
        packed or training with `fused_cross_entropy`, the loss comes from `causal_lm_loss` and no logits are
        returned; otherwise it is transformers' own. `logits_to_keep` is Llama's (named here so that `generate` asks
        for the last position's logits only).
        """
        if "past_key_values" in kwargs and _CACHE_KWARG != "past_key_values":
            kwargs[_CACHE_KWARG] = kwargs.pop("past_key_values")
        if isinstance(images, (list, tuple)) and not images:
            images = None  # an empty image list is no images
        if images is not None and labels is None and input_ids is not None and input_ids.shape[-1] == 1:
            if not bool((input_ids == IMAGE_TOKEN_INDEX).any()):
                images = None  # a decoding step of an original-style loop: the images are already in the cache
        sequence_lengths = None
        if pack_sequences and (input_ids is None or inputs_embeds is not None):
            raise ValueError("pack_sequences=True needs input_ids (the batch is packed after the image merge)")
        if (images is not None and inputs_embeds is None) or pack_sequences:
            merged = self._merge(input_ids, images, attention_mask, labels, pack_sequences)
            input_ids, inputs_embeds = None, merged.inputs_embeds
            attention_mask, position_ids, labels = merged.attention_mask, merged.position_ids, merged.labels
            sequence_lengths = merged.sequence_lengths
        elif input_ids is not None and input_ids.shape[-1] > 1 and bool((input_ids == IMAGE_TOKEN_INDEX).any()):
            raise ValueError("input_ids hold <image> placeholders (-200) but no images were given")
        if sequence_lengths is not None:
            kwargs.update(packed_attention_kwargs(sequence_lengths, inputs_embeds.device))
            kwargs["use_cache"] = False
            if self.config._attn_implementation == PACKED_ATTENTION:
                # the attention reads the samples' bounds; an empty 4-D mask keeps transformers from building the
                # [T, T] packed-sequence mask it would otherwise make (and keep alive under checkpointing)
                attention_mask = torch.ones((1, 1, 0, 0), dtype=torch.bool, device=inputs_embeds.device)
        if labels is not None and (sequence_lengths is not None or (self.training and self.fused_cross_entropy)):
            return self._forward_with_loss(
                input_ids, inputs_embeds, attention_mask, position_ids, labels, sequence_lengths, kwargs
            )
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def _merge(self, input_ids, images, attention_mask, labels, pack: bool) -> MultimodalInputs:
        padding_side = "packed" if pack else None
        if images is None:  # a packed text-only batch
            return merge_image_features(input_ids, [], self.get_input_embeddings(), attention_mask, labels, "packed")
        return self.prepare_multimodal_inputs(input_ids, images, attention_mask, labels, padding_side=padding_side)

    def _forward_with_loss(
        self, input_ids, inputs_embeds, attention_mask, position_ids, labels, sequence_lengths, kwargs
    ):
        """Decoder → last hidden states → `causal_lm_loss` (no full-vocabulary logits are formed)."""
        num_items_in_batch = kwargs.pop("num_items_in_batch", None)
        outputs = self.model(
            input_ids=input_ids if inputs_embeds is None else None,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **kwargs,
        )
        loss = causal_lm_loss(
            outputs.last_hidden_state,
            self.lm_head,
            labels,
            sequence_lengths=sequence_lengths,
            num_items_in_batch=num_items_in_batch,
            fused=self.fused_cross_entropy,
        )
        return CausalLMOutputWithPast(loss=loss, logits=None)

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        images: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """transformers' `generate` plus `images=`; returns only the new tokens, with or without images.

        The prompt (`inputs`/`input_ids` with `-200` placeholders, left- or right-padded) is turned into embeddings
        (images spliced in, re-padded on the left) and generation starts from those, as in LLaVA >= 1.2. Stopping
        criteria therefore see the generated tokens only.
        """
        if inputs is None:
            inputs = kwargs.pop("input_ids", None)
        if inputs is None:  # the caller built the embeddings
            return super().generate(attention_mask=attention_mask, **kwargs)
        if images is not None:
            merged = self.prepare_multimodal_inputs(inputs, images, attention_mask, padding_side="left")
            inputs_embeds, attention_mask = merged.inputs_embeds, merged.attention_mask
        elif bool((inputs == IMAGE_TOKEN_INDEX).any()):
            raise ValueError("input_ids hold <image> placeholders (-200) but no images were given")
        else:
            inputs_embeds = self.get_input_embeddings()(inputs)
        return super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)


def packed_attention_kwargs(sequence_lengths: list[int], device: torch.device) -> dict:
    """The boundaries of a packed row's samples, under the names transformers' attention functions read."""
    bounds = [0]
    for length in sequence_lengths:
        bounds.append(bounds[-1] + length)
    cu_seq_lens = torch.tensor(bounds, dtype=torch.int32, device=device)
    longest = max(sequence_lengths)
    return {
        "cu_seq_lens_q": cu_seq_lens,
        "cu_seq_lens_k": cu_seq_lens,
        "max_length_q": longest,
        "max_length_k": longest,
    }


AutoConfig.register("share4v", Share4VConfig, exist_ok=True)
AutoModelForCausalLM.register(Share4VConfig, Share4VLlamaForCausalLM, exist_ok=True)
