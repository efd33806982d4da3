"""train/sampler.py

`ModalityLengthGroupedSampler`: the original's `group_by_modality_length` order. Image and text-only samples are
not mixed in a batch, except in the last one or two megabatches, which hold both modalities' leftovers. Within each
modality, random "megabatches" of `world_size × batch_size` samples are sorted
by length and dealt to the ranks so that each rank's batch has a similar total length; megabatches of both kinds
are then shuffled together. The order is seeded by (seed, epoch), so a resumed run sees the same order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def split_evenly(indices: list[int], lengths: Sequence[int], parts: int) -> list[list[int]]:
    """Deal `indices` (longest first) into `parts` equal-sized lists with balanced total length."""
    if len(indices) % parts:
        return [indices[i::parts] for i in range(parts)]
    size = len(indices) // parts
    chunks: list[list[int]] = [[] for _ in range(parts)]
    totals = [0] * parts
    for index in indices:
        open_chunks = [k for k in range(parts) if len(chunks[k]) < size]
        target = min(open_chunks, key=lambda k: totals[k])
        chunks[target].append(index)
        totals[target] += lengths[index]
    return chunks


def length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """A random order in which each megabatch (`world_size × batch_size`) is sorted and balanced across ranks."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    megabatch = world_size * batch_size
    out: list[int] = []
    for start in range(0, len(order), megabatch):
        block = sorted(order[start : start + megabatch], key=lambda i: lengths[i], reverse=True)
        for chunk in split_evenly(block, lengths, world_size):
            out.extend(chunk)
    return out


def modality_length_grouped_indices(
    lengths: Sequence[int], batch_size: int, world_size: int, generator: torch.Generator
) -> list[int]:
    """`lengths` positive for image samples, negative for text-only ones (the dataset's `modality_lengths`)."""
    if all(length > 0 for length in lengths) or all(length < 0 for length in lengths):
        return length_grouped_indices([abs(x) for x in lengths], batch_size, world_size, generator)
    megabatch = world_size * batch_size
    groups = []
    for members in ([i for i, x in enumerate(lengths) if x > 0], [i for i, x in enumerate(lengths) if x < 0]):
        member_lengths = [abs(lengths[i]) for i in members]
        ordered = [members[i] for i in length_grouped_indices(member_lengths, batch_size, world_size, generator)]
        groups.append([ordered[i : i + megabatch] for i in range(0, len(ordered), megabatch)])
    leftover = [i for megabatches in groups for i in megabatches[-1]]
    full = [mb for megabatches in groups for mb in megabatches[:-1]]
    shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
    if leftover:
        shuffled.append(sorted(leftover, key=lambda i: abs(lengths[i]), reverse=True))
    return [i for megabatch_indices in shuffled for i in megabatch_indices]


class ModalityLengthGroupedSampler(Sampler[int]):
    """Samples in modality- and length-grouped order; call `set_epoch` for a new order each epoch."""

    def __init__(self, batch_size: int, world_size: int, lengths: Sequence[int], seed: int = 0):
        super().__init__()
        self.batch_size = batch_size
        self.world_size = world_size
        self.lengths = list(lengths)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(modality_length_grouped_indices(self.lengths, self.batch_size, self.world_size, generator))
