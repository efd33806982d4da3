"""utils.py

Small process-level helpers: the device/dtype defaults of the original loaders, and where this process stands among
those a launcher started (`dist_info`; append-only JSON-lines outputs: `share4v.appended_jsonl`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

logger = logging.getLogger("share4v")


def disable_torch_init() -> None:
    """Kept for scripts written against the original API.

    The original replaced `reset_parameters` of `nn.Linear`/`nn.LayerNorm` process-wide to speed up loading.
    transformers 5 already builds models on the meta device before loading weights, so there is nothing left to
    skip, and share4v changes no library class: this function deliberately does nothing.
    """


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None`/"auto" → CUDA when available, else CPU; "cuda" without a GPU falls back to CPU with a warning.

    Raises:
        ValueError: for a name torch does not know as a device.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.warning("CUDA was asked for but is not available: running on the CPU instead")
        return torch.device("cpu")
    return device


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Default float16 on CUDA (as the released models were served), float32 elsewhere."""
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float16": torch.float16,
        "fp16": torch.float16,
        "half": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float32": torch.float32,
        "fp32": torch.float32,
        "float": torch.float32,
    }
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(names)}")
    return names[dtype]


@dataclass(frozen=True)
class DistInfo:
    rank: int  # among all processes
    local_rank: int  # among this machine's
    world_size: int
    launched: bool = False  # a launcher set LOCAL_RANK (a process started alone is also local rank 0)


def dist_info(environ: Mapping[str, str] | None = None) -> DistInfo:
    """This process's place among the processes a launcher (torchrun, deepspeed, accelerate) started, from the
    variables it sets (default `os.environ`); a process started alone is rank 0 of 1, not `launched`."""
    env = os.environ if environ is None else environ
    return DistInfo(
        int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)), "LOCAL_RANK" in env
    )
