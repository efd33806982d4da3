"""mm_utils.py

Pure helpers between raw inputs and the model: image loading and normalisation to RGB, square padding, CLIP
pre-processing driven by `image_aspect_ratio`, tokenization of prompts holding `<image>` placeholders, keyword
stopping for (batched) generation, and the model-name helper of the original API. No model code is imported here.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from transformers import StoppingCriteria

from share4v.constants import DEFAULT_IMAGE_TOKEN, IMAGE_TOKEN_INDEX
from share4v.image_fetch import FetchError, fetch


class ImageLoadError(ValueError):
    """An image could not be read; the message names the file, URL or data that failed."""


def _describe(source: str) -> str:
    """`source` for a one-line error: whole when short, else its start and its end (a long path keeps its file name)."""
    return source if len(source) <= 120 else f"{source[:40]}...{source[-60:]} ({len(source)} chars)"


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode (RGBA, LA, P, L, 1, CMYK, I;16, I, F, ...) to 8-bit RGB.

    High-bit-depth grayscale (`I;16*`, `I`, `F`) is rescaled to its full 0-255 range instead of being clipped.
    Transparent pixels (RGBA, LA, PA, palette transparency) are composited on white, as a viewer shows them,
    instead of taking whatever colour hides under the alpha.
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = float(array.max(initial=0))
        if image.mode == "F":
            full_scale = 1.0 if peak <= 1.0 else peak
        else:
            full_scale = 65535.0 if image.mode.startswith("I;16") or peak > 255 else 255.0
        array = np.clip(array / full_scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    return image.convert("RGB")


def load_image_from_base64(image: str) -> Image.Image:
    """Decode a base64 string (optionally a `data:image/...;base64,` URI) into an RGB PIL image."""
    if image.startswith("data:"):
        _header, comma, payload = image.partition(",")
        if not comma:
            raise ImageLoadError(f"data URI without a comma before its payload: {_describe(image)!r}")
    else:
        payload = image
    try:
        raw = base64.b64decode("".join(payload.split()), validate=True)  # line-wrapped base64 is fine
    except (binascii.Error, ValueError) as err:
        raise ImageLoadError(f"invalid base64 image data {_describe(image)!r}: {err}") from None
    return _open_bytes(raw, f"base64 data {_describe(image)!r}")


def _open_bytes(raw: bytes, what: str) -> Image.Image:
    return _open(io.BytesIO(raw), f"cannot read image from {what}")


def _open(source: Any, failure: str) -> Image.Image:
    """Open, fully decode (so truncation shows now), turn upright (EXIF orientation) and convert to RGB; `failure`
    starts the error message."""
    try:
        with Image.open(source) as img:
            img.load()
            return to_rgb(ImageOps.exif_transpose(img))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as err:
        raise ImageLoadError(f"{failure}: {err}") from None


def load_image(source: str | os.PathLike | Image.Image) -> Image.Image:
    """Load an image from a path, an http(s) URL, a base64 `data:` URI or a PIL image, as 8-bit RGB, upright.

    URLs are fetched within a deadline and a size cap, and never from private or local addresses unless allowed
    (see `share4v.image_fetch`).

    Raises:
        ImageLoadError: one line naming the source when it is missing, unreadable, truncated or not an image.
    """
    if isinstance(source, Image.Image):
        return to_rgb(ImageOps.exif_transpose(source))
    if isinstance(source, str) and source.startswith("data:"):
        return load_image_from_base64(source)
    if isinstance(source, str) and is_fetched(source):
        return _load_url(source)
    path = Path(source)
    if not path.is_file():
        raise ImageLoadError(f"image file not found: {_describe(str(path))}")
    return _open(path, f"cannot read image file {path}")


_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_fetched(source: str) -> bool:
    """Whether `load_image` fetches `source` (a URL) rather than reading a file."""
    return bool(_URL_SCHEME.match(source))


def names_a_file(source: str) -> bool:
    """Whether `load_image` reads `source` from disk (not a `data:` URI or a URL)."""
    return not (source.startswith("data:") or is_fetched(source))


def _load_url(url: str) -> Image.Image:
    try:
        body = fetch(url)
    except FetchError as err:
        raise ImageLoadError(str(err)) from None
    return _open_bytes(body, f"URL {url}")


def expand2square(pil_img: Image.Image, background_color: tuple[int, ...]) -> Image.Image:
    """Pad an image to a square of its longer side, centred, filling with `background_color`."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    result = Image.new(pil_img.mode, (side, side), background_color)
    result.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return result


IMAGE_ASPECT_RATIOS = ("square", "pad")
MAX_ASPECT_RATIO = 100  # longer side / shorter side; beyond this an image is refused (not a picture to look at)
MAX_PAD_SIDE = 8192  # a padded square canvas larger than this is never built: the image is shrunk first


def check_image_size(image: Image.Image, max_aspect_ratio: float = MAX_ASPECT_RATIO) -> None:
    """Raise `ImageLoadError` for an empty image or one of degenerate shape (work would grow with its aspect)."""
    width, height = image.size
    if width == 0 or height == 0:
        raise ImageLoadError(f"image of size {width}x{height} has no pixels")
    if max(width, height) / min(width, height) > max_aspect_ratio:
        raise ImageLoadError(
            f"image of size {width}x{height} is more than {max_aspect_ratio:g} times longer than wide; refusing it"
        )


def _bounded_for_padding(image: Image.Image) -> Image.Image:
    """Shrink (bicubic) an image whose padded square would exceed `MAX_PAD_SIDE`; smaller images are untouched."""
    side = max(image.size)
    if side <= MAX_PAD_SIDE:
        return image
    scale = MAX_PAD_SIDE / side
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BICUBIC)


def process_images(
    images: Sequence[Image.Image], image_processor: Any, model_cfg: Any = None, image_aspect_ratio: str | None = None
) -> torch.Tensor | list[torch.Tensor]:
    """Turn PIL images into CLIP pixel values as the model was trained.

    `image_aspect_ratio` (default: `model_cfg.image_aspect_ratio`, else "square") of `"pad"` pads each image to a
    square filled with the processor's mean colour before resizing; `"square"` resizes the shortest side and
    centre-crops. The work is bounded by the output: images of degenerate shape (aspect above `MAX_ASPECT_RATIO`)
    are refused, and images larger than `MAX_PAD_SIDE` are shrunk before padding.

    Returns:
        A tensor `[num_images, 3, H, W]` when all images end up the same size, else a list of `[3, H, W]` tensors.

    Raises:
        ValueError: an unknown `image_aspect_ratio`; `ImageLoadError` for an empty or degenerate image.
    """
    aspect = image_aspect_ratio or getattr(model_cfg, "image_aspect_ratio", None) or "square"
    if aspect not in IMAGE_ASPECT_RATIOS:
        raise ValueError(f"unknown image_aspect_ratio {aspect!r}; expected one of {IMAGE_ASPECT_RATIOS}")
    for image in images:
        check_image_size(image)
    if aspect == "pad":
        background = tuple(int(x * 255) for x in image_processor.image_mean)
        pixels = [
            image_processor.preprocess(expand2square(_bounded_for_padding(img), background), return_tensors="pt")[
                "pixel_values"
            ][0]
            for img in images
        ]
        if all(p.shape == pixels[0].shape for p in pixels):
            return torch.stack(pixels, dim=0)
        return pixels
    return image_processor(list(images), return_tensors="pt")["pixel_values"]


def tokenizer_image_token(
    prompt: str, tokenizer: Any, image_token_index: int = IMAGE_TOKEN_INDEX, return_tensors: str | None = None
) -> list[int] | torch.Tensor:
    """Tokenize `prompt`, replacing each `<image>` by one `image_token_index` id.

    Each text chunk is tokenized on its own (as the original does, so chunks get the tokenizer's prefix handling);
    one leading BOS is kept when the tokenizer adds it.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split(DEFAULT_IMAGE_TOKEN)]
    bos = tokenizer.bos_token_id
    input_ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and bos is not None and chunks[0][0] == bos:
        offset = 1
        input_ids.append(bos)
    for i, chunk in enumerate(chunks):
        if i > 0:
            input_ids.append(image_token_index)
        input_ids.extend(chunk[offset:])
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"unsupported tensor type: {return_tensors!r} (only 'pt')")


def get_model_name_from_path(model_path: str) -> str:
    """`.../ShareGPT4V-7B` → `ShareGPT4V-7B`; `.../run/checkpoint-100` → `run_checkpoint-100`."""
    parts = model_path.strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1].split("_")[0]


class KeywordsStoppingCriteria(StoppingCriteria):
    """Stop each sequence once its generated text ends with one of `keywords`.

    Works for batches: returns one flag per row. Only generated tokens are judged: unless `start_len` is given,
    generation is taken to start one token before the length seen at the first call (a fresh instance per
    `generate` call), which holds whether `generate` keeps the prompt in its running sequence or, as share4v
    models do, starts from embeddings. `input_ids` is accepted for the original signature and not needed.
    """

    def __init__(
        self, keywords: list[str], tokenizer: Any, input_ids: torch.Tensor | None = None, start_len: int | None = None
    ):
        self.keywords = [k for k in keywords if k]
        self.tokenizer = tokenizer
        self.keyword_ids: list[torch.Tensor] = []
        self.max_keyword_len = 0
        for keyword in self.keywords:
            ids = tokenizer(keyword).input_ids
            if len(ids) > 1 and ids[0] == tokenizer.bos_token_id:
                ids = ids[1:]
            self.max_keyword_len = max(self.max_keyword_len, len(ids))
            self.keyword_ids.append(torch.tensor(ids, dtype=torch.long))
        self._keyword_lists = [ids.tolist() for ids in self.keyword_ids]
        self.start_len = start_len

    def ends(self, generated: torch.Tensor | Sequence[int]) -> bool:
        """Whether generated tokens `generated` (a row's new tokens so far, oldest first) end with a keyword: its
        token ids, or its text within the last tokens' text. Only the last `max_keyword_len` + 2 tokens count."""
        tail = generated[len(generated) - min(len(generated), self.max_keyword_len + 2) :]
        tail = tail.tolist() if isinstance(tail, torch.Tensor) else list(tail)  # plain ints: no tensor op per row
        for ids in self._keyword_lists:
            if ids and len(tail) >= len(ids) and tail[-len(ids) :] == ids:
                return True
        # a keyword may come split over more tokens than its own ids
        text = self.tokenizer.decode(tail, skip_special_tokens=False) if tail else ""
        return any(keyword in text for keyword in self.keywords)

    def _row_done(self, row: torch.Tensor) -> bool:
        return self.ends(row[self.start_len :])

    def __call__(self, output_ids: torch.Tensor, scores: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        if self.start_len is None:
            self.start_len = output_ids.shape[1] - 1
        done = [self._row_done(row) for row in output_ids]
        return torch.tensor(done, dtype=torch.bool, device=output_ids.device)


__all__ = [
    "IMAGE_ASPECT_RATIOS",
    "ImageLoadError",
    "KeywordsStoppingCriteria",
    "check_image_size",
    "expand2square",
    "get_model_name_from_path",
    "load_image",
    "load_image_from_base64",
    "process_images",
    "to_rgb",
    "tokenizer_image_token",
]
