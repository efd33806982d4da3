"""share4v_arch.py

The image/text merge of ShareGPT4V as small pure functions.

A prompt is tokenized with one `IMAGE_TOKEN_INDEX` (-200) id per image. `merge_image_features` replaces each such
id by that image's projected features (`num_patches` rows), marks those positions `IGNORE_INDEX` in the labels, and
re-pads the batch on the requested side — or, for training, packs the rows into one row without padding
(`padding_side="packed"`, position ids restarting per sample, the samples' lengths kept for the attention). Images
are matched to placeholders in reading order (row by row); a training batch (with labels) that gives one image per
row, as the collator does with blank images for text-only rows, is accepted too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from share4v.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX


@dataclass
class MultimodalInputs:
    """What the language model consumes after the merge."""

    inputs_embeds: torch.Tensor  # [B, L, D]
    attention_mask: torch.Tensor | None  # [B, L], long, 1 = real token; None for a packed row
    position_ids: torch.Tensor  # [B, L]
    labels: torch.Tensor | None  # [B, L] or None
    sequence_lengths: list[int] | None = None  # a packed row's samples, in order; None when padded


def assign_images(
    image_tokens_per_row: Sequence[int], num_images: int, allow_blank_images: bool = False
) -> list[list[int]]:
    """Which image indices fill each row's placeholders, in order.

    `allow_blank_images` (training batches only) also accepts one image per row, the training collator's blank
    image standing for a text-only row: it is assigned to its row but fills no placeholder (the merge keeps it in
    the graph with none of its positions, so that the tower and projector get a zero gradient rather than none);
    anywhere else an image without a placeholder is an error.

    Raises:
        ValueError: when the number of images fits no convention.
    """
    total = sum(image_tokens_per_row)
    if num_images == total:
        assignment, start = [], 0
        for count in image_tokens_per_row:
            assignment.append(list(range(start, start + count)))
            start += count
        return assignment
    one_per_row = num_images == len(image_tokens_per_row) and all(count <= 1 for count in image_tokens_per_row)
    if allow_blank_images and one_per_row:
        return [[row] for row in range(len(image_tokens_per_row))]
    raise ValueError(
        f"image tokens and images do not match: the prompts hold {total} <image> tokens "
        f"(per row: {list(image_tokens_per_row)}) but {num_images} images were given"
    )


def merge_image_features(
    input_ids: torch.Tensor,
    image_features: torch.Tensor | Sequence[torch.Tensor],
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    padding_side: str = "right",
) -> MultimodalInputs:
    """Splice image features into the embedded text.

    Args:
        input_ids: `[B, S]` token ids with `IMAGE_TOKEN_INDEX` placeholders, padded on either side.
        image_features: `[N, P, D]` (or N tensors `[P_i, D]`), one entry per image, already projected.
        embed_tokens: the language model's input embedding.
        attention_mask: `[B, S]`; padding positions (0) are dropped before re-padding. Default: all ones.
        labels: `[B, S]` or None.
        padding_side: side of the re-padding, "right" (training) or "left" (generation); "packed" concatenates
            the rows into one (training; see `pack_merged`).

    Returns:
        `MultimodalInputs` whose length is the longest merged row (the sum of the rows' lengths when packed).
    """
    if padding_side not in ("left", "right", "packed"):
        raise ValueError(f"padding_side must be 'left', 'right' or 'packed', not {padding_side!r}")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    keep = attention_mask.bool()
    is_image = input_ids == IMAGE_TOKEN_INDEX
    counts = (is_image & keep).sum(dim=1).tolist()
    assignment = assign_images(counts, len(image_features), allow_blank_images=labels is not None)
    text_embeds = embed_tokens(input_ids.masked_fill(is_image, 0))  # [B, S, D]

    rows_embeds, rows_labels = [], []
    for row, image_ids in enumerate(assignment):
        ids, embeds = input_ids[row][keep[row]], text_embeds[row][keep[row]]
        row_labels = labels[row][keep[row]] if labels is not None else None
        positions = torch.nonzero(ids == IMAGE_TOKEN_INDEX).flatten().tolist()
        embed_parts, label_parts, start = [], [], 0
        placed = image_ids if positions else []  # a text-only row's blank is assigned to it, not placed
        for position, image_id in zip(positions, placed, strict=True):
            features = image_features[image_id].to(device=embeds.device, dtype=embeds.dtype)
            embed_parts += [embeds[start:position], features]
            if row_labels is not None:
                ignore = row_labels.new_full((features.shape[0],), IGNORE_INDEX)
                label_parts += [row_labels[start:position], ignore]
            start = position + 1
        embed_parts.append(embeds[start:])
        if not positions and image_ids:  # a text-only row's blank: in the graph, so every rank of a sharded
            # run (FSDP, ZeRO-3) reduces the same gradients whatever its batch holds
            embed_parts.append(image_features[image_ids[0]][:0].to(device=embeds.device, dtype=embeds.dtype))
        rows_embeds.append(torch.cat(embed_parts, dim=0))
        if row_labels is not None:
            label_parts.append(row_labels[start:])
            rows_labels.append(torch.cat(label_parts, dim=0))
    if padding_side == "packed":
        return pack_merged(rows_embeds, rows_labels if labels is not None else None)
    return pad_merged(rows_embeds, rows_labels if labels is not None else None, padding_side)


def pack_merged(rows_embeds: Sequence[torch.Tensor], rows_labels: Sequence[torch.Tensor] | None) -> MultimodalInputs:
    """Concatenate variable-length rows `[L_i, D]` into one row `[1, sum L_i, D]` with no padding.

    Position ids restart at 0 for every sample, so each sample sees the positions it would see alone; keeping the
    samples apart in attention is the attention's job (`sequence_lengths` tells it where each one ends).
    """
    lengths = [row.shape[0] for row in rows_embeds]
    embeds = torch.cat(list(rows_embeds), dim=0).unsqueeze(0)
    position_ids = torch.cat([torch.arange(length, device=embeds.device) for length in lengths]).unsqueeze(0)
    labels = torch.cat(list(rows_labels), dim=0).unsqueeze(0) if rows_labels is not None else None
    return MultimodalInputs(embeds, None, position_ids, labels, sequence_lengths=lengths)


def pad_merged(
    rows_embeds: Sequence[torch.Tensor], rows_labels: Sequence[torch.Tensor] | None, padding_side: str
) -> MultimodalInputs:
    """Stack variable-length rows `[L_i, D]` into a padded batch with mask and position ids."""
    max_len = max(row.shape[0] for row in rows_embeds)
    first = rows_embeds[0]
    batch = len(rows_embeds)
    embeds = first.new_zeros((batch, max_len, first.shape[1]))
    mask = torch.zeros((batch, max_len), dtype=torch.long, device=first.device)
    labels = torch.full((batch, max_len), IGNORE_INDEX, dtype=torch.long, device=first.device)
    for row, row_embeds in enumerate(rows_embeds):
        length = row_embeds.shape[0]
        span = slice(max_len - length, max_len) if padding_side == "left" else slice(0, length)
        embeds[row, span] = row_embeds
        mask[row, span] = 1
        if rows_labels is not None:
            labels[row, span] = rows_labels[row]
    position_ids = (mask.cumsum(dim=-1) - 1).clamp(min=0)
    return MultimodalInputs(embeds, mask, position_ids, labels if rows_labels is not None else None)


def infer_padding_side(attention_mask: torch.Tensor | None) -> str:
    """ "left" when some row starts with padding, else "right" (the training default)."""
    if attention_mask is not None and bool((attention_mask[:, 0] == 0).any()):
        return "left"
    return "right"
