"""model/weights_io.py

Reading and writing weight files: one `.safetensors` / pickled `.bin` file (read with `weights_only=True`), a
checkpoint folder's weights whether single or sharded with an index, and sharded safetensors with their index.
Every `.safetensors` the package writes gets the mode of a plain `open(path, "w")`: the default (0o666 less the
umask) for a new file, the mode it had for a file written over. Through `save_file` here, or by running a transformers
or peft `save_pretrained` inside `widened_new_safetensors(folder)`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save_file as _safetensors_save_file

from share4v.temp_paths import widen_to_default_mode

logger = logging.getLogger(__name__)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def read_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `.safetensors` file, or a pickled `.bin` read with `weights_only=True`.

    Raises:
        FileNotFoundError: when there is no such file; ValueError: naming the file, in one line, when it cannot be
            read (truncated, corrupt, or a pickle holding more than plain tensors).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except SafetensorError as err:  # a truncated or corrupt file: name it, in one line
            raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as err:  # truncated or corrupt; refused pickle
        raise ValueError(f"{path} is not a readable PyTorch weights file: {_first_line(err)}") from None


def _read_index(index: Path) -> dict[str, str]:
    """The `weight_map` of a sharded checkpoint's `*.index.json`; `ValueError` naming the file when it has none."""
    try:
        values: Any = json.loads(index.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{index} is not valid JSON: {err}") from None
    weight_map = values.get("weight_map") if isinstance(values, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index} has no weight_map (tensor name -> shard file): not a sharded checkpoint's index")
    return weight_map


def read_model_weights(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All weights of a checkpoint folder: `model.safetensors`, `pytorch_model.bin`, or either sharded with an index.

    Raises:
        FileNotFoundError: when the folder holds none of these (or a shard its index names);
            ValueError: naming the file, when a weights file or the index cannot be read.
    """
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(_read_index(index).values())):
                state.update(read_weights(folder / shard))
            return state
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return read_weights(folder / name)
    raise FileNotFoundError(f"{folder} holds no model weights (model.safetensors, pytorch_model.bin or an index)")


def _regular_file(path: str | os.PathLike) -> os.stat_result | None:
    """`lstat(path)` when it is a regular file (not a symlink), else None."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    return info if stat.S_ISREG(info.st_mode) else None


def save_file(
    tensors: dict[str, torch.Tensor], filename: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """`safetensors.torch.save_file`, then the file gets the mode a plain `open(filename, "w")` gives instead of
    safetensors' owner-only 0o600 (safetensors/safetensors#782): a new file the default (0o644 under umask 0o022),
    so that teammates and serving processes of other users read the weights as they read the config beside them; a
    regular file written over keeps exactly the mode it had (one the user restricted stays restricted). Also when the
    write raises (a full disk, an interrupt): what it left gets that mode (a warning if not), the error propagates.
    """
    existing = _regular_file(filename)
    try:
        _safetensors_save_file(tensors, filename, metadata=metadata)
    except BaseException:
        # kept, not removed: safetensors >= 0.8 renames a finished temporary into place (a file here is whole weights)
        try:
            _give_plain_write_mode_or_warn(filename, existing)
        except Exception:
            logger.exception("cannot give %s the mode of a plain write", filename)
        raise
    _give_plain_write_mode(filename, existing)


def _give_plain_write_mode(path: str | os.PathLike, before: os.stat_result | None) -> None:
    """Give `path`, just written through safetensors, the mode a plain write would have left: the default where no
    regular file was there (`before` None), else the mode of the one it replaced (a file it left as it was, the same
    inode, is not touched)."""
    if before is None:
        widen_to_default_mode(path)
        return
    now = os.stat(path)
    if now.st_ino != before.st_ino and stat.S_IMODE(now.st_mode) != stat.S_IMODE(before.st_mode):
        os.chmod(path, stat.S_IMODE(before.st_mode))


def _give_plain_write_mode_or_warn(path: str | os.PathLike, before: os.stat_result | None) -> None:
    """`_give_plain_write_mode` when `path` is a regular file (not a symlink); an `OSError` is a warning naming it."""
    try:
        if _regular_file(path) is not None:
            _give_plain_write_mode(path, before)
    except OSError as err:
        logger.warning("cannot give %s the mode of a plain write: %s", path, err)


def _give_plain_write_modes(folder: Path, before: dict[str, os.stat_result]) -> None:
    """`_give_plain_write_mode_or_warn` for each regular `*.safetensors` directly in `folder`."""
    for path in sorted(folder.glob("*.safetensors")):
        _give_plain_write_mode_or_warn(path, before.get(path.name))


@contextlib.contextmanager
def widened_new_safetensors(folder: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
    """Run a `save_pretrained` of transformers or peft (which write through safetensors, owner-only) in this block:
    afterwards each `*.safetensors` directly in `folder` that the block created gets the mode of a plain write, and
    each one it replaced (a new inode) gets back the mode it had, as `save_file` above does for its file. Files the
    block left as they were, symlinks and other non-regular files are not touched; a file whose mode cannot be set
    is named in a warning, never raised (another process may have put it there). `enabled=False` (a process that does
    not write, under distributed training) does nothing. When the block raises (a full disk after some shards, an
    interrupt), the shards it wrote get their modes all the same and its exception propagates unchanged: an error
    while giving them is logged, never raised in its place.
    """
    folder = Path(folder)
    before = {}
    if enabled and folder.is_dir():
        before = {p.name: info for p in folder.glob("*.safetensors") if (info := _regular_file(p))}
    try:
        yield
    except BaseException:
        if enabled:
            try:
                _give_plain_write_modes(folder, before)
            except Exception:
                logger.exception("cannot give the safetensors in %s the mode of a plain write", folder)
        raise
    if enabled:
        _give_plain_write_modes(folder, before)


def write_safetensors_shards(state: dict[str, torch.Tensor], folder: str | os.PathLike, max_shard_size: str = "5GB"):
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` when large."""
    folder = Path(folder)
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n].contiguous() for n in names}, folder / filename, metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
