"""utils.py

Small process-level helpers: the device/dtype defaults of the original loaders, and reading and repairing an
append-only JSON-lines output after a kill.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

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


def cut_torn_line(path: str | Path) -> None:
    """Before appending to a JSON-lines file a kill may have torn: cut its last line if it lacks the newline and does
    not parse (it may end inside a character), or give it the newline if it is whole, so that the next line appended
    starts on a fresh line and every line left is whole."""
    path = Path(path)
    if not path.is_file() or not path.stat().st_size:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    start = data.rfind(b"\n") + 1
    try:
        json.loads(data[start:])
    except ValueError:  # UnicodeDecodeError too
        with path.open("rb+") as f:
            f.truncate(start)
        return
    with path.open("ab") as f:
        f.write(b"\n")


def values_in_jsonl(path: str | Path, key: str) -> set[str]:
    """The `key` values (as strings) of an append-only JSON-lines output; a line torn by a kill is ignored."""
    path, values = Path(path), set()
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):  # a torn character
            try:
                values.add(str(json.loads(line)[key]))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return values
