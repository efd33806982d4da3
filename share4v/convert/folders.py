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


def check_destination(destination: str | Path, overwrite: bool = False, sources: tuple = ()) -> None:
    """Raise `FileExistsError` unless `destination` is free, or an existing checkpoint that may be replaced and
    that neither holds nor lies inside any of the `sources` being read."""
    destination = Path(destination)
    target = destination.resolve()
    for source in sources:
        source = Path(source).resolve()
        if target == source or target in source.parents or source in target.parents:
            raise FileExistsError(f"{destination} overlaps the input {source}: write the conversion elsewhere")
    if destination.exists():
        if not overwrite:
            raise FileExistsError(f"{destination} exists; pass --overwrite to replace it")
        if not (destination / "config.json").is_file():
            raise FileExistsError(f"{destination} exists and is not a checkpoint: refusing to replace it")


@contextlib.contextmanager
def staged_folder(destination: str | Path, overwrite: bool = False, sources: tuple = ()) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes `destination`, on failure it is removed."""
    destination = Path(destination)
    check_destination(destination, overwrite, sources)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield staging
        old = None
        if destination.exists():  # move the old checkpoint aside first: a crash never leaves neither in place
            old = destination.with_name(f".{destination.name}.replaced-{staging.name.rsplit('.', 1)[-1]}")
            destination.rename(old)
        staging.rename(destination)
        if old is not None:
            shutil.rmtree(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
