"""convert/folders.py

Writing a converted checkpoint all at once: the files go to a staging folder beside the destination, which is
renamed into place only when everything is written. A failed conversion leaves nothing that looks like a
checkpoint, and an existing destination is replaced only with `overwrite`, and only if it is a checkpoint.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def check_destination(destination: str | Path, overwrite: bool = False) -> None:
    """Raise `FileExistsError` unless `destination` is free, or an existing checkpoint that may be replaced."""
    destination = Path(destination)
    if destination.exists():
        if not overwrite:
            raise FileExistsError(f"{destination} exists; pass --overwrite to replace it")
        if not (destination / "config.json").is_file():
            raise FileExistsError(f"{destination} exists and is not a checkpoint: refusing to replace it")


@contextlib.contextmanager
def staged_folder(destination: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes `destination`, on failure it is removed."""
    destination = Path(destination)
    check_destination(destination, overwrite)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield staging
        if destination.exists():
            shutil.rmtree(destination)
        staging.rename(destination)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
