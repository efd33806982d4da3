"""convert/folders.py

Writing a converted checkpoint all at once: the files go to a staging folder beside the destination, which is
renamed into place only when everything is written. A failed conversion leaves nothing that looks like a
checkpoint, and an existing destination is replaced only with `overwrite`, and only if it is a checkpoint.
Reading a source's config.json and tokenizer fails with one line naming the folder or file.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_config(src: Path) -> Any:
    """The parsed `src/config.json`.

    Raises:
        FileNotFoundError: when there is none; ValueError: when it is not JSON (with the file and position).
    """
    if not src.is_dir():
        raise FileNotFoundError(
            f"{src} is not a folder: conversions read local folders (a hub model: download it first, "
            "`hf download ID --local-dir DIR`)"
        )
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} has no config.json: not a checkpoint folder")
    return read_json(src / "config.json")


def read_json(path: Path) -> Any:
    """The parsed JSON file `path`; `ValueError` naming the file and position when it is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def load_tokenizer(src: str | Path, name: str | None = None) -> Any:
    """`AutoTokenizer.from_pretrained(src)`, failing with one line that names `src` (or `name`, e.g. the flag that
    gave it: the data checker's `--model-path`)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(src)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{name or src}: cannot load the tokenizer (tokenizer.json or tokenizer.model): {first}"
        ) from None


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
