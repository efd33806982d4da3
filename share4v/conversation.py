"""conversation.py

Conversation templates of ShareGPT4V and the prompt strings they render.

Templates are looked up by name with `get_conv_template(name)` (or `conv_templates[name]`), which always hands
out a fresh copy: there is no module-level "default conversation" to reassign, and no caller can change a template
for everybody else. Prompts are byte-identical to the original code's `Conversation.get_prompt()`.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from collections.abc import Callable, Iterator, Mapping
from enum import Enum, auto
from typing import Any

from share4v.constants import DEFAULT_CONV_MODE, DEFAULT_IMAGE_TOKEN
from share4v.mm_utils import expand2square


class SeparatorStyle(Enum):
    """How turns are joined into one prompt string."""

    SINGLE = auto()
    TWO = auto()
    PLAIN = auto()
    LLAMA_2 = auto()


Message = list  # [role, content]; content is a str, None (the generation slot) or (text, PIL image, mode)


@dataclasses.dataclass
class Conversation:
    """A chat in one template: system text, role names, separators and the messages so far."""

    system: str
    roles: tuple[str, str]
    messages: list[Message]
    offset: int
    sep_style: SeparatorStyle = SeparatorStyle.SINGLE
    sep: str = "###"
    sep2: str | None = None
    version: str = "Unknown"
    skip_next: bool = False

    @property
    def stop_str(self) -> str:
        """The string that ends an assistant answer (what generation stops on)."""
        return self.sep2 if self.sep_style == SeparatorStyle.TWO else self.sep

    def append_message(self, role: str, message: Any) -> None:
        self.messages.append([role, message])

    def copy(self) -> Conversation:
        return dataclasses.replace(self, messages=[[role, msg] for role, msg in self.messages])

    def get_prompt(self) -> str:
        """Render all messages as one prompt string; a `None` message leaves the slot open for generation."""
        return "".join(text for text, _is_target in self.get_segments())

    def get_segments(self) -> list[tuple[str, bool]]:
        """The prompt as `(text, is_target)` pieces whose concatenation is `get_prompt()`.

        A target piece is exactly what the model generates after the prompt that ends at the assistant's slot: the
        answer with the text the template puts after it (`" A</s>"` for v1, `" A###"` for v0, `" A </s>"` for
        llama_2, `"A\n"` for plain). Training labels keep the tokens of target pieces and mask the rest, so the
        prompt and its masks come from one renderer.
        """
        return [
            (text, is_target)
            for text, is_target in _SEGMENTERS[self.sep_style](self, self._messages_for_prompt())
            if text
        ]

    def _messages_for_prompt(self) -> list[tuple[str, Any]]:
        messages = [(role, msg) for role, msg in self.messages]
        if messages and isinstance(messages[0][1], tuple):
            init_role, (init_text, *_rest) = messages[0]
            init_text = init_text.replace(DEFAULT_IMAGE_TOKEN, "").strip()
            if "mmtag" in self.version:
                messages[0] = (init_role, init_text)
                messages[0:0] = [(self.roles[0], "<Image><image></Image>"), (self.roles[1], "Received.")]
            else:
                messages[0] = (init_role, DEFAULT_IMAGE_TOKEN + "\n" + init_text)
        return messages

    def get_images(self, return_pil: bool = False) -> list:
        """Images attached to user turns, pre-processed as the demo does (`Pad`/`Resize`/`Crop`/`Default`)."""
        images = []
        for i, (_role, msg) in enumerate(self.messages[self.offset :]):
            if i % 2 == 0 and isinstance(msg, tuple):
                _text, image, mode = msg
                image = _prepare_demo_image(image, mode)
                images.append(image if return_pil else _png_base64(image))
        return images

    def to_gradio_chatbot(self) -> list[list[str | None]]:
        """Pairs of (user, assistant) strings for a gradio Chatbot, images inlined as data URIs."""
        rows: list[list[str | None]] = []
        for i, (_role, msg) in enumerate(self.messages[self.offset :]):
            if i % 2 == 0:
                if isinstance(msg, tuple):
                    text, image, mode = msg
                    b64 = _png_base64(_prepare_demo_image(image, mode))
                    msg = (
                        f'<img src="data:image/png;base64,{b64}" alt="user upload image" />'
                        + text.replace(DEFAULT_IMAGE_TOKEN, "").strip()
                    )
                rows.append([msg, None])
            else:
                rows[-1][-1] = msg
        return rows

    def dict(self) -> dict[str, Any]:
        messages = [[r, m[0] if isinstance(m, tuple) else m] for r, m in self.messages]
        return {
            "system": self.system,
            "roles": self.roles,
            "messages": messages,
            "offset": self.offset,
            "sep": self.sep,
            "sep2": self.sep2,
        }


def _text_of(message: Any) -> str:
    return message[0] if isinstance(message, tuple) else message


Segments = list[tuple[str, bool]]


def _segments_single(conv: Conversation, messages: list[tuple[str, Any]]) -> Segments:
    out: Segments = [(conv.system + conv.sep, False)]
    for i, (role, message) in enumerate(messages):
        if not message:
            out.append((f"{role}:", False))
        elif i % 2 == 0:
            out.append((f"{role}: {_text_of(message)}{conv.sep}", False))
        else:
            out += [(f"{role}:", False), (f" {_text_of(message)}{conv.sep}", True)]
    return out


def _segments_two(conv: Conversation, messages: list[tuple[str, Any]]) -> Segments:
    seps = (conv.sep, conv.sep2)
    out: Segments = [(conv.system + seps[0], False)]
    for i, (role, message) in enumerate(messages):
        if not message:
            out.append((f"{role}:", False))
        elif i % 2 == 0:
            out.append((f"{role}: {_text_of(message)}{seps[0]}", False))
        else:
            out += [(f"{role}:", False), (f" {_text_of(message)}{seps[1]}", True)]
    return out


def _segments_plain(conv: Conversation, messages: list[tuple[str, Any]]) -> Segments:
    # Roles are not written. The separator after a user text marks where generation starts, so it is written
    # only when no answer follows: a training sample renders as "<image>" + caption + "\n" (the original's
    # preprocess_plain) and a generation prompt as "<image>\nquestion\n" (the original's get_prompt; it could
    # not render answers at all, sep2 being None).
    answer_sep = conv.sep2 if conv.sep2 is not None else conv.sep
    out: Segments = [(conv.system, False)]
    for i, (_role, message) in enumerate(messages):
        if not message:
            continue
        if i % 2 == 1:
            out.append((_text_of(message) + answer_sep, True))
            continue
        answer_follows = i + 1 < len(messages) and bool(messages[i + 1][1])
        out.append((_text_of(message) + ("" if answer_follows else conv.sep), False))
    return out


def _segments_llama_2(conv: Conversation, messages: list[tuple[str, Any]]) -> Segments:
    if not messages or not messages[0][1]:
        raise ValueError("a llama_2 prompt must start with a non-empty user message")
    out: Segments = []
    for i, (_role, message) in enumerate(messages):
        if not message:
            continue
        text = _text_of(message)
        if i % 2 == 1:
            out.append((f" {text} {conv.sep2}", True))
            continue
        if i == 0 and conv.system:
            text = f"<<SYS>>\n{conv.system}\n<</SYS>>\n\n" + text
        # The original strips the leading sep (a character set, as str.lstrip) from the finished prompt.
        opening = conv.sep + f"[INST] {text} [/INST]"
        out.append((opening.lstrip(conv.sep) if i == 0 else opening, False))
    return out


_SEGMENTERS: dict[SeparatorStyle, Callable[[Conversation, list[tuple[str, Any]]], Segments]] = {
    SeparatorStyle.SINGLE: _segments_single,
    SeparatorStyle.TWO: _segments_two,
    SeparatorStyle.PLAIN: _segments_plain,
    SeparatorStyle.LLAMA_2: _segments_llama_2,
}


def _prepare_demo_image(image, mode: str):
    if mode == "Pad":
        image = expand2square(image, (122, 116, 104))
    elif mode == "Resize":
        image = image.resize((336, 336))
    elif mode not in ("Default", "Crop"):
        raise ValueError(f"invalid image process mode: {mode!r} (expected Pad, Resize, Crop or Default)")
    max_hw, min_hw = max(image.size), min(image.size)
    aspect_ratio = max_hw / min_hw
    shortest_edge = int(min(800 / aspect_ratio, 400, min_hw))
    longest_edge = int(shortest_edge * aspect_ratio)
    w, h = image.size
    new_w, new_h = (longest_edge, shortest_edge) if w > h else (shortest_edge, longest_edge)
    return image.resize((new_w, new_h))


def _png_base64(image) -> str:
    buffered = io.BytesIO()
    image.save(buffered, format="PNG")
    return base64.b64encode(buffered.getvalue()).decode()


# fmt: off
_VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                  "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_HUMAN_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
_MMTAG_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant is able to understand the visual content that the user provides, "
                 "and assist the user with a variety of tasks using natural language."
                 "The visual content will be provided with the following format: <Image>visual content</Image>.")
_LLAMA_2_SYSTEM = ("You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
                   "while being safe.  Your answers should not include any harmful, unethical, racist, sexist, toxic, "
                   "dangerous, or illegal content. Please ensure that your responses are socially unbiased and "
                   "positive in nature.\n\nIf a question does not make any sense, or is not factually coherent, "
                   "explain why instead of answering something not correct. If you don't know the answer to a "
                   "question, please don't share false information.")
_SHARE4V_LLAMA_2_SYSTEM = ("You are a helpful language and vision assistant. You are able to understand the visual "
                           "content that the user provides, and assist the user with a variety of tasks using "
                           "natural language.")
_V0_FEW_SHOT = [
    ["Human", "What are the key differences between renewable and non-renewable energy sources?"],
    ["Assistant",
     "Renewable energy sources are those that can be replenished naturally in a relatively short amount of time, "
     "such as solar, wind, hydro, geothermal, and biomass. Non-renewable energy sources, on the other hand, are "
     "finite and will eventually be depleted, such as coal, oil, and natural gas. Here are some key differences "
     "between renewable and non-renewable energy sources:\n"
     "1. Availability: Renewable energy sources are virtually inexhaustible, while non-renewable energy sources "
     "are finite and will eventually run out.\n"
     "2. Environmental impact: Renewable energy sources have a much lower environmental impact than "
     "non-renewable sources, which can lead to air and water pollution, greenhouse gas emissions, "
     "and other negative effects.\n"
     "3. Cost: Renewable energy sources can be more expensive to initially set up, but they typically have "
     "lower operational costs than non-renewable sources.\n"
     "4. Reliability: Renewable energy sources are often more reliable and can be used in more remote "
     "locations than non-renewable sources.\n"
     "5. Flexibility: Renewable energy sources are often more flexible and can be adapted to different "
     "situations and needs, while non-renewable sources are more rigid and inflexible.\n"
     "6. Sustainability: Renewable energy sources are more sustainable over the long term, while "
     "non-renewable sources are not, and their depletion can lead to economic and social instability.\n"],
]

_S, _T, _P, _L = SeparatorStyle.SINGLE, SeparatorStyle.TWO, SeparatorStyle.PLAIN, SeparatorStyle.LLAMA_2
_VICUNA_V0 = Conversation(_HUMAN_SYSTEM, ("Human", "Assistant"), _V0_FEW_SHOT, 2, _S, "###")
_VICUNA_V1 = Conversation(_VICUNA_SYSTEM, ("USER", "ASSISTANT"), [], 0, _T, " ", "</s>", "v1")
_LLAMA_2 = Conversation(_LLAMA_2_SYSTEM, ("USER", "ASSISTANT"), [], 0, _L, "<s>", "</s>", "llama_v2")
_PLAIN = Conversation("", ("", ""), [], 0, _P, "\n")
_SHARE4V_V0 = Conversation(_HUMAN_SYSTEM, ("Human", "Assistant"), [], 0, _S, "###")
_SHARE4V_V0_MMTAG = Conversation(_MMTAG_SYSTEM, ("Human", "Assistant"), [], 0, _S, "###", version="v0_mmtag")
_SHARE4V_V1 = Conversation(_HUMAN_SYSTEM, ("USER", "ASSISTANT"), [], 0, _T, " ", "</s>", "v1")
_SHARE4V_V1_MMTAG = Conversation(_MMTAG_SYSTEM, ("USER", "ASSISTANT"), [], 0, _T, " ", "</s>", "v1_mmtag")
_SHARE4V_LLAMA_2 = Conversation(_SHARE4V_LLAMA_2_SYSTEM, ("USER", "ASSISTANT"), [], 0, _L, "<s>", "</s>", "llama_v2")

_TEMPLATES: dict[str, Conversation] = {
    "default": _VICUNA_V0, "v0": _VICUNA_V0,
    "v1": _VICUNA_V1, "vicuna_v1": _VICUNA_V1,
    "llama_2": _LLAMA_2,
    "plain": _PLAIN, "v0_plain": _PLAIN,
    "share4v_v0": _SHARE4V_V0, "v0_mmtag": _SHARE4V_V0_MMTAG,
    "share4v_v1": _SHARE4V_V1, "v1_mmtag": _SHARE4V_V1_MMTAG,
    "share4v_llama_2": _SHARE4V_LLAMA_2,
}
# fmt: on


class _TemplateRegistry(Mapping[str, Conversation]):
    """Read-only name → template mapping whose lookups return fresh copies."""

    def __getitem__(self, name: str) -> Conversation:
        if name not in _TEMPLATES:
            raise KeyError(_unknown_template(name))
        return _TEMPLATES[name].copy()

    def __iter__(self) -> Iterator[str]:
        return iter(_TEMPLATES)

    def __len__(self) -> int:
        return len(_TEMPLATES)


conv_templates: Mapping[str, Conversation] = _TemplateRegistry()


def get_conv_template(name: str) -> Conversation:
    """A fresh copy of the template called `name`; raises ValueError listing the known names otherwise."""
    if name not in _TEMPLATES:
        raise ValueError(_unknown_template(name))
    return _TEMPLATES[name].copy()


def _unknown_template(name: str) -> str:
    return f"unknown conversation template {name!r}; known templates: {', '.join(sorted(_TEMPLATES))}"


def default_conv_mode(model_name: str | None) -> str:
    """The template a model was most likely tuned with, from its name (the one use of names SPEC allows).

    Llama-2-chat based models get `share4v_llama_2`; everything else (all released ShareGPT4V models were trained
    with `--version v1`) gets `vicuna_v1`.
    """
    if model_name and re.search(r"llama[-_]?2", model_name, flags=re.IGNORECASE):
        return "share4v_llama_2"
    return DEFAULT_CONV_MODE


def __getattr__(name: str) -> Conversation:
    """`default_conversation` for scripts written against the original: a fresh vicuna_v1 copy on every access,
    so no caller can change what another one gets (the original reassigned a module global)."""
    if name == "default_conversation":
        return get_conv_template(DEFAULT_CONV_MODE)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Conversation", "SeparatorStyle", "conv_templates", "default_conv_mode", "get_conv_template"]
