"""inference/requests.py

The CPU half of generation, kept apart from the model so it can run anywhere (DataLoader workers, a server's
request handlers): `RequestEncoder.encode(chat) -> Request` fills the conversation template, tokenizes with image
placeholders, loads and pre-processes the images. It holds no model and pickles. A chat that cannot be encoded (a
corrupt image, too many image markers, a prompt past the context) gives a `Request` carrying its `error` instead of
raising, so one bad request never fails a batch. What generation returns per request is a `Completion`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from share4v.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN, DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from share4v.conversation import Conversation, get_conv_template
from share4v.mm_utils import ImageLoadError, load_image, process_images, tokenizer_image_token

FINISH_STOP, FINISH_LENGTH, FINISH_ERROR = "stop", "length", "error"


@dataclass
class Request:
    """One chat, ready for the model: prompt token ids (one -200 per image) and the images' pixel values (CPU)."""

    prompt_ids: list[int] = field(default_factory=list)
    pixel_values: torch.Tensor | list[torch.Tensor] | None = None  # [images, 3, H, W] (or a list), float32
    num_images: int = 0
    stop_str: str = ""
    prompt_tokens: int = 0  # the prompt's length in the language model: text + patches of every image
    error: str | None = None  # why this chat could not be encoded (then nothing else is set)


@dataclass
class Completion:
    """What generation gave for one request."""

    text: str
    token_ids: list[int]  # the new tokens, up to and without the end-of-sequence token
    finish_reason: str  # "stop" (end of sequence or stop string), "length" (max_new_tokens) or "error"
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None

    @classmethod
    def failed(cls, request: Request) -> Completion:
        return cls("", [], FINISH_ERROR, 0, 0, request.error)


@dataclass
class RequestEncoder:
    """Template + tokenizer + image pre-processing of one model; everything `encode` needs, and no model."""

    tokenizer: Any
    image_processor: Any  # None for a text-only model
    conv_mode: str
    image_aspect_ratio: str
    image_tokens: int  # positions one image takes in the language model
    max_positions: int  # prompt + new tokens may not exceed this (the model's position embeddings)
    wrap_image_tokens: bool = False  # mm_use_im_start_end checkpoints

    def conversation(self, turns: list[str], num_images: int) -> Conversation:
        """The filled template for alternating user/assistant `turns`, with the assistant slot left open."""
        if not turns or len(turns) % 2 == 0:
            raise ValueError(f"a chat needs alternating user/assistant turns ending with a user turn; got {len(turns)}")
        turns = list(turns)
        if any(DEFAULT_IMAGE_TOKEN in turn for turn in turns[1::2]):  # it would become an image slot with no image
            raise ValueError(f"an assistant turn holds {DEFAULT_IMAGE_TOKEN}: images go in user turns")
        markers = sum(turn.count(DEFAULT_IMAGE_TOKEN) for turn in turns[::2])
        if markers == 0 and num_images:
            turns[0] = (DEFAULT_IMAGE_TOKEN + "\n") * num_images + turns[0]
        elif markers != num_images:
            raise ValueError(
                f"the prompt has {markers} {DEFAULT_IMAGE_TOKEN} markers but {num_images} images were given"
            )
        if num_images and self.image_processor is None:
            raise ValueError("images were given but the model has no vision tower")
        if self.wrap_image_tokens:
            wrapped = DEFAULT_IM_START_TOKEN + DEFAULT_IMAGE_TOKEN + DEFAULT_IM_END_TOKEN
            turns = [turn.replace(DEFAULT_IMAGE_TOKEN, wrapped) for turn in turns]
        conv = get_conv_template(self.conv_mode)
        for i, turn in enumerate(turns):
            conv.append_message(conv.roles[i % 2], turn)
        conv.append_message(conv.roles[1], None)
        return conv

    def encode(self, chat: Any) -> Request:
        """`chat` (an engine `Chat`: `turns` and `images`) → `Request`; a chat that cannot be encoded gives a
        Request with its `error` (the one-line reason) rather than an exception."""
        try:
            return self._encode(chat)
        except Exception as err:  # whatever one chat's text or images raise stays that chat's error
            return Request(error=str(err) or type(err).__name__)

    def _encode(self, chat: Any) -> Request:
        conv = self.conversation(list(chat.turns), len(chat.images))
        prompt_ids = tokenizer_image_token(conv.get_prompt(), self.tokenizer)
        slots = prompt_ids.count(IMAGE_TOKEN_INDEX)
        if slots != len(chat.images):  # the template's own text (a system message, say) holds a marker
            raise ValueError(f"the prompt has {slots} {DEFAULT_IMAGE_TOKEN} slots but {len(chat.images)} images")
        images = [load_image(image) for image in chat.images]
        pixels = process_images(images, self.image_processor, None, self.image_aspect_ratio) if images else None
        prompt_tokens = len(prompt_ids) + len(images) * (self.image_tokens - 1)
        if prompt_tokens >= self.max_positions:
            limit = self.max_positions
            raise ValueError(f"the prompt takes {prompt_tokens} tokens with its images; the context is {limit}")
        return Request(prompt_ids, pixels, len(images), conv.stop_str, prompt_tokens)


def stack_pixels(requests: list[Request]) -> torch.Tensor | list[torch.Tensor] | None:
    """All requests' images in placeholder order: one tensor when they share a size, else a list."""
    images = []
    for request in requests:
        if request.pixel_values is not None:
            images += list(request.pixel_values)
    if not images:
        return None
    if all(image.shape == images[0].shape for image in images):
        return torch.stack(images)
    return images


__all__ = ["FINISH_ERROR", "FINISH_LENGTH", "FINISH_STOP", "Completion", "ImageLoadError", "Request", "RequestEncoder"]
