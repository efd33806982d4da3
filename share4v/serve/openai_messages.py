"""serve/openai_messages.py

OpenAI chat-completion requests → engine chats, with the server's rules for where images may come from.

`messages` alternate user and assistant turns (system messages are dropped: the conversation template brings its
own system prompt) and end with a user turn. A user message's `content` is a string or a list of parts: `text`, and
`image_url` whose `url` is a `data:` URI (always), an http(s) URL (only when remote images are allowed) or a local
path / `file://` URL (only inside the allowed folder). Each image becomes an `<image>` marker where it stood in the
message. Every refusal is a `RequestError` with the HTTP status to answer with.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from PIL import Image

from share4v.constants import DEFAULT_IMAGE_TOKEN
from share4v.inference.engine import Chat
from share4v.mm_utils import load_image


class RequestError(ValueError):
    """A request the server refuses: `status` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImagePolicy:
    allow_remote: bool = False
    allowed_dir: Path | None = None
    max_pixels: int = 4096 * 4096
    max_images: int = 8  # per request


def chat_from_messages(messages: Any, policy: ImagePolicy) -> Chat:
    """The engine `Chat` of an OpenAI `messages` list (images loaded, and checked against `policy`)."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "'messages' must be a non-empty list")
    turns, images = [], []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant"):
            raise RequestError(400, f"messages[{index}] must be an object with role system, user or assistant")
        if message["role"] == "system":
            continue
        expected = "user" if len(turns) % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise RequestError(400, f"messages[{index}] is a {message['role']} turn where a {expected} turn belongs")
        text, message_images = _content(message.get("content"), index, policy, message["role"] == "user")
        turns.append(text)
        images += message_images
        if len(images) > policy.max_images:
            raise RequestError(400, f"more than {policy.max_images} images in one request")
    if not turns or len(turns) % 2 == 0:
        raise RequestError(400, "the messages must end with a user turn")
    return Chat(turns, images)


def _content(content: Any, index: int, policy: ImagePolicy, images_allowed: bool) -> tuple[str, list[Image.Image]]:
    if content is None and not images_allowed:
        return "", []  # an assistant turn with no text
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise RequestError(400, f"messages[{index}].content must be a string or a list of parts")
    pieces, images = [], []
    for part_index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            pieces.append(part["text"])
        elif kind == "image_url" and images_allowed:
            url = part.get("image_url", {}).get("url") if isinstance(part.get("image_url"), dict) else None
            if not isinstance(url, str):
                raise RequestError(400, f"messages[{index}].content[{part_index}].image_url.url must be a string")
            images.append(load_checked_image(url, policy))
            pieces.append(DEFAULT_IMAGE_TOKEN + "\n")
        else:
            raise RequestError(400, f"messages[{index}].content[{part_index}]: unsupported part {kind!r}")
    return "".join(pieces), images


def load_checked_image(url: str, policy: ImagePolicy) -> Image.Image:
    """The image at `url` if `policy` allows its source and size (checked from the header, before decoding)."""
    if url != url.strip() or any(ord(ch) < 32 for ch in url):
        raise RequestError(400, "image URL with surrounding spaces or control characters")
    parsed = urlparse(url)
    scheme = parsed.scheme.lower()
    try:
        if scheme == "data":
            _, comma, payload = url.partition(",")
            if not comma or ";base64" not in url[: url.index(",")].lower():
                raise RequestError(400, "image data URL must be base64 (data:image/...;base64,...)")
            data = base64.b64decode(payload, validate=True)
            _check_pixels(Image.open(io.BytesIO(data)), policy)
            image = load_image(Image.open(io.BytesIO(data)))
        elif scheme in ("http", "https"):
            if not policy.allow_remote:
                raise RequestError(
                    400, "remote image URLs are not accepted (start the server with --allow-remote-images)"
                )
            if not parsed.netloc:
                raise RequestError(400, f"image URL without a host: {url[:80]!r}")
            image = load_image(url)
        else:
            if scheme == "file" and parsed.netloc not in ("", "localhost"):
                raise RequestError(400, "file:// image URLs must name a local file")
            path = _allowed_local_path(unquote(parsed.path) if scheme == "file" else url, policy)
            _check_pixels(Image.open(path), policy)
            image = load_image(path)
    except RequestError:
        raise
    except Exception as err:  # whatever a damaged file or a bad URL raises: this request's error, one line
        raise RequestError(400, f"image could not be read: {err}") from None
    _check_pixels(image, policy)
    return image


def _check_pixels(image: Image.Image, policy: ImagePolicy) -> None:
    if image.width * image.height > policy.max_pixels:
        raise RequestError(
            413, f"image of {image.width}x{image.height} pixels is over the limit of {policy.max_pixels}"
        )


def _allowed_local_path(path: str, policy: ImagePolicy) -> str:
    """`path` (relative ones inside the allowed folder) if it lies inside the allowed folder, links resolved."""
    if policy.allowed_dir is None:
        raise RequestError(400, "local image paths are not accepted (start the server with --allowed-image-dir)")
    root = policy.allowed_dir.resolve()
    resolved = (root / path).resolve()  # an absolute `path` replaces root
    if not resolved.is_relative_to(root):
        raise RequestError(400, f"image path {path!r} is outside the allowed image folder")
    if not resolved.is_file():
        raise RequestError(400, f"image file not found: {path!r}")
    return str(resolved)
