"""train/preprocess.py

One routine turns a LLaVA-format conversation into `input_ids` and `labels` for every template (plain, v0, v1,
llama_2, ...). The template renders the conversation as `(text, is_target)` pieces (`Conversation.get_segments`);
the whole prompt is tokenized exactly as at inference (`tokenizer_image_token`) and a token is trained on when its
characters fall inside a target piece. Prompt and labels cannot drift apart, and no per-round length arithmetic
is involved (the original's was off by one per round with transformers 5 tokenizers and masked whole samples).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from share4v.constants import (
    DEFAULT_IM_END_TOKEN,
    DEFAULT_IM_START_TOKEN,
    DEFAULT_IMAGE_TOKEN,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
)
from share4v.conversation import Conversation, SeparatorStyle, conv_templates, get_conv_template

# `--version` values that are not template names but that the original accepted.
_VERSION_ALIASES = {"v0.5": "vicuna_v1"}
_ROLE_INDEX = {"human": 0, "user": 0, "gpt": 1, "assistant": 1}


class SampleError(ValueError):
    """A training sample that cannot be used (malformed turns, answer not found, ...); the message says why."""


def conv_mode_for_version(version: str) -> str:
    """The conversation template `--version` selects (`plain`, `v1` → vicuna_v1, `llama_2`, `v0`, any name)."""
    mode = _VERSION_ALIASES.get(version, version)
    get_conv_template(mode)  # ValueError listing the known templates
    return mode


def preprocess_multimodal(sources: Sequence[list[dict]], data_args: Any) -> Sequence[list[dict]]:
    """Put each turn's `<image>` markers in front of its text, as the original does (in place, returns `sources`).

    `"a <image> b"` becomes `"<image>\\na  b"`; mmtag templates wrap the marker as `<Image><image></Image>`, and
    `mm_use_im_start_end` surrounds it with `<im_start>`/`<im_end>`.
    """
    if not getattr(data_args, "is_multimodal", True):
        return sources
    conv_mode = getattr(data_args, "conv_mode", "vicuna_v1")
    mmtag = "mmtag" in conv_templates[conv_mode].version
    start_end = bool(getattr(data_args, "mm_use_im_start_end", False))
    for source in sources:
        for sentence in source:
            count = sentence["value"].count(DEFAULT_IMAGE_TOKEN)
            if not count:
                continue
            text = sentence["value"].replace(DEFAULT_IMAGE_TOKEN, "").strip()
            marker = f"<Image>{DEFAULT_IMAGE_TOKEN}</Image>" if mmtag else DEFAULT_IMAGE_TOKEN
            if start_end:
                marker = DEFAULT_IM_START_TOKEN + marker + DEFAULT_IM_END_TOKEN
            sentence["value"] = ((marker + "\n") * count + text).strip()
    return sources


def conversation_for_training(turns: Sequence[dict], conv_mode: str) -> Conversation:
    """The template `conv_mode` filled with the LLaVA turns `[{"from": "human"|"gpt", "value": str}, ...]`.

    A leading non-human turn is dropped (as the original); roles must then alternate, starting with the human, and
    no turn may be empty. The plain template keeps only the images of the first turn (the original's
    `preprocess_plain`).

    Raises:
        SampleError: when the turns do not alternate, a turn is empty or a plain sample is not one round.
    """
    conv = get_conv_template(conv_mode)
    conv.messages = []  # templates with canned few-shot turns (v0) train on the sample's own turns only
    turns = list(turns)
    if turns and _ROLE_INDEX.get(str(turns[0].get("from")).lower()) != 0:
        turns = turns[1:]
    if not turns:
        raise SampleError("no human turn in the conversation")
    for i, turn in enumerate(turns):
        role = _ROLE_INDEX.get(str(turn.get("from")).lower())
        if role != i % 2:
            expected = "human" if i % 2 == 0 else "gpt"
            raise SampleError(f"turn {i} is from {turn.get('from')!r}, expected {expected!r} (turns must alternate)")
        if not turn["value"].strip():
            raise SampleError(f"turn {i} ({turn.get('from')}) is empty")
        conv.append_message(conv.roles[role], turn["value"])
    if len(turns) % 2:
        raise SampleError(f"the conversation ends with a human turn (turn {len(turns) - 1}): nothing to learn")
    if conv.sep_style is SeparatorStyle.PLAIN:
        if len(turns) != 2:
            raise SampleError(f"the plain template takes one (image, caption) pair, not {len(turns) // 2} rounds")
        # The caption prompt is dropped: only the images (if any) come before the caption.
        conv.messages[0][1] = DEFAULT_IMAGE_TOKEN * turns[0]["value"].count(DEFAULT_IMAGE_TOKEN) or None
    return conv


def tokenize_segments(
    segments: Sequence[tuple[str, bool]], tokenizer: Any, has_image: bool = True
) -> tuple[list[int], list[int]]:
    """Token ids of the joined segments (as `tokenizer_image_token`, or plain tokenization without images) and
    labels that keep the tokens overlapping target text and are `IGNORE_INDEX` elsewhere.

    Raises:
        SampleError: when a target piece with visible text gets no token (its answer cannot be located).
    """
    prompt = "".join(text for text, _ in segments)
    is_target = bytearray(len(prompt))
    target_spans, position = [], 0
    for text, target in segments:
        if target:
            is_target[position : position + len(text)] = b"\x01" * len(text)
            target_spans.append((position, position + len(text)))
        position += len(text)

    chunks = prompt.split(DEFAULT_IMAGE_TOKEN) if has_image else [prompt]
    encodings = [_encode_with_offsets(tokenizer, chunk) for chunk in chunks]
    bos = tokenizer.bos_token_id
    drop_first = int(bool(encodings[0][0]) and bos is not None and encodings[0][0][0] == bos)
    input_ids: list[int] = [bos] if drop_first else []
    labels: list[int] = [IGNORE_INDEX] if drop_first else []
    trained = bytearray(len(prompt))
    chunk_start = 0
    for index, (ids, offsets) in enumerate(encodings):
        if index > 0:
            input_ids.append(IMAGE_TOKEN_INDEX)
            labels.append(IGNORE_INDEX)
            chunk_start += len(DEFAULT_IMAGE_TOKEN)
        for token, (begin, end) in zip(ids[drop_first:], offsets[drop_first:], strict=True):
            span = slice(chunk_start + begin, chunk_start + end)
            hit = begin < end and any(is_target[span])
            input_ids.append(token)
            labels.append(token if hit else IGNORE_INDEX)
            if hit:
                trained[span] = b"\x01" * (end - begin)
        chunk_start += len(chunks[index])

    for begin, end in target_spans:
        if prompt[begin:end].strip() and not any(trained[begin:end]):
            raise SampleError(f"answer {prompt[begin:end][:40]!r} got no tokens: cannot locate it in the prompt")
    return input_ids, labels


def _encode_with_offsets(tokenizer: Any, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    try:
        encoding = tokenizer(text, return_offsets_mapping=True)
    except NotImplementedError:
        raise TypeError(
            f"{type(tokenizer).__name__} gives no character offsets; training needs a tokenizers-backed tokenizer"
        ) from None
    return list(encoding["input_ids"]), [tuple(span) for span in encoding["offset_mapping"]]


def preprocess(
    sources: Sequence[list[dict]], tokenizer: Any, has_image: bool = False, conv_mode: str = "vicuna_v1"
) -> dict[str, torch.Tensor]:
    """Tokenize one conversation (`[turns]`, `<image>` markers normalised by `preprocess_multimodal`).

    Returns:
        `dict(input_ids=[1, L] long, labels=[1, L] long)`, one `IMAGE_TOKEN_INDEX` per image in `input_ids`;
        labels keep each answer and the end text the template puts after it, and mask everything else.

    Raises:
        SampleError: for malformed turns or an answer that cannot be located.
    """
    if len(sources) != 1:
        raise ValueError(f"preprocess takes one conversation per call ([turns]), got {len(sources)}")
    conv = conversation_for_training(sources[0], conv_mode)
    input_ids, labels = tokenize_segments(conv.get_segments(), tokenizer, has_image=has_image)
    return {
        "input_ids": torch.tensor([input_ids], dtype=torch.long),
        "labels": torch.tensor([labels], dtype=torch.long),
    }
