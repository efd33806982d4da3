"""train/lengths.py

Every training sample's merged length (text tokens + images × image tokens, capped at `model_max_length`; negative
for text-only samples, as the original's `modality_lengths`), measured before training for length grouping.

Measuring tokenizes each rendered prompt once, in batches. Under torch.distributed each rank measures its share
and the shares are gathered, so no rank waits long at a barrier; the result is cached per data file, tokenizer
and settings (`$SHARE4V_CACHE`, default `~/.cache/share4v/lengths`; written by each machine's first process), and
later runs read it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from share4v.constants import DEFAULT_IMAGE_TOKEN
from share4v.train.preprocess import SampleError, conversation_for_training
from share4v.train.rows import image_paths
from share4v.utils import dist_info

logger = logging.getLogger(__name__)

BATCH_ROWS = 256


def cache_file(dataset: Any) -> Path:
    stat = os.stat(dataset.data_path)
    args = dataset.data_args
    key = json.dumps([
        os.path.abspath(dataset.data_path), stat.st_size, stat.st_mtime_ns, dataset.tokenizer.name_or_path,
        len(dataset.tokenizer), dataset.conv_mode, args.image_tokens_per_image, dataset.model_max_length,
        bool(args.is_multimodal), len(dataset),
    ])  # fmt: skip
    root = Path(os.environ.get("SHARE4V_CACHE", Path.home() / ".cache" / "share4v"))
    return root / "lengths" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".npy")


def measure(dataset: Any, indices: Sequence[int], progress: bool = True) -> list[int]:
    """Merged lengths of `dataset`'s samples at `indices` (1 for a sample that will be reported and skipped)."""
    tokenizer, args = dataset.tokenizer, dataset.data_args
    bos = tokenizer.bos_token_id
    out: list[int] = []
    bar = tqdm(total=len(indices), desc="measuring samples", unit="row", disable=not progress)
    for start in range(0, len(indices), BATCH_ROWS):
        rows = []  # (chunks or None, has_image)
        for index in indices[start : start + BATCH_ROWS]:
            row = dataset.list_data_dict[index]
            has_image = bool(image_paths(row)) and args.is_multimodal
            try:
                prompt = conversation_for_training(dataset.sample_turns(row, has_image), dataset.conv_mode).get_prompt()
            except SampleError:
                rows.append((None, has_image))
                continue
            rows.append((prompt.split(DEFAULT_IMAGE_TOKEN) if has_image else [prompt], has_image))
        encoded = iter(tokenizer([c for chunks, _ in rows if chunks for c in chunks])["input_ids"])
        for chunks, has_image in rows:
            if chunks is None:
                out.append(1)
                continue
            pieces = [next(encoded) for _ in chunks]
            drop = int(bool(pieces[0]) and pieces[0][0] == bos)
            length = drop + sum(len(ids) - drop for ids in pieces)
            length += (len(chunks) - 1) * (args.image_tokens_per_image or 1)
            out.append(min(length, dataset.model_max_length) * (1 if has_image else -1))
        bar.update(len(rows))
    bar.close()
    return out


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def dataset_lengths(dataset: Any) -> np.ndarray:
    """The lengths of every sample, from the cache or measured (shared out over the ranks of a distributed run).

    In a distributed run every rank must call this (it is collective when any rank lacks the cache).
    """
    cache = cache_file(dataset)
    cached = np.load(cache) if cache.is_file() else None
    if cached is not None and cached.shape != (len(dataset),):
        cached = None
    rank, world = _distributed()
    if world > 1:
        nccl = torch.distributed.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else None
        missing = torch.tensor([int(cached is None)], device=device)
        torch.distributed.all_reduce(missing, op=torch.distributed.ReduceOp.MAX)
        if not missing.item():
            return cached
        share = measure(dataset, range(rank, len(dataset), world), progress=rank == 0)
        shares: list = [None] * world
        torch.distributed.all_gather_object(shares, share)
        lengths = np.empty(len(dataset), dtype=np.int64)
        for index, values in enumerate(shares):
            lengths[index::world] = values
    elif cached is not None:
        return cached
    else:
        lengths = np.array(measure(dataset, range(len(dataset))), dtype=np.int64)
    if dist_info().local_rank == 0:  # one writer per machine (the cache folder may be its own)
        write_cache(cache, lengths)
    return lengths


def write_cache(cache: Path, lengths: np.ndarray) -> None:
    """Save `lengths` to `cache` atomically; machines sharing the folder may write it at the same time (the same
    values): each stages its own file (host, process and a random part in the name) and the last rename wins.
    A cache that cannot be written is a warning: the lengths are known, only the next run measures again."""
    staging = cache.with_name(f"{cache.stem}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp.npy")
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(staging, lengths)
        os.replace(staging, cache)
    except OSError as err:
        with contextlib.suppress(OSError):  # not there, or its folder could not be made
            staging.unlink()
        logger.warning("could not write the sample length cache %s: %s", cache, err)
