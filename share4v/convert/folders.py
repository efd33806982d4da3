"""convert/folders.py

Writing a converted checkpoint all at once: the files go to a staging folder beside the destination, which is
renamed into place only when everything is written. A failed conversion leaves nothing that looks like a
checkpoint, and an existing destination is replaced only with `overwrite`, and only if it is a checkpoint. A
conversion killed outright (`kill -9`) leaves its hidden staging folder; the next conversion to that destination
removes it (see `staged_folder`). Destinations are taken as their absolute paths, so `.`, `./out` and `out/` behave
as the absolute folder does. Reading a source's config.json and tokenizer fails with one line naming the folder or
file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from share4v.temp_paths import new_temp_folder

logger = logging.getLogger(__name__)


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
    that neither holds nor lies inside any of the `sources` being read. `destination` is taken as its absolute path:
    `.`, `./out` and `out/` are the folders they name."""
    destination = Path(os.path.abspath(destination))
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


def _host() -> str:
    """This machine's name as staging folders carry it (no `-`: it separates the name's fields)."""
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())


# the bytes of a staging name besides NAME and HOST, with the longer `.replaced-` and a PID of the most digits
_FIXED_BYTES = len(".") + len(".replaced-") + len("-") + 10 + len("-") + 8


def _cut(text: str, limit: int) -> str:
    """`text` if its file-system bytes (UTF-8) number at most `limit`, else a prefix of it cut at a character
    boundary, `_` and 12 hex digits of its hash: `limit` bytes, and another text sharing the prefix differs."""
    raw = os.fsencode(text)
    if len(raw) <= limit:
        return text
    end = max(limit - 13, 0)
    while end and (raw[end] & 0xC0) == 0x80:  # a UTF-8 continuation byte: the cut would split a character
        end -= 1
    return f"{os.fsdecode(raw[:end])}_{hashlib.sha256(raw).hexdigest()[:12]}"


def _staging_parts(destination: Path) -> tuple[str, str]:
    """The NAME and HOST that `destination`'s staging names carry: its name and this machine's, or, where these
    would make a name longer than the file system's limit, the name cut (`_cut`), and the host too if it is longer
    than half of what is left."""
    try:
        name_max = os.pathconf(destination.parent, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no os.pathconf (Windows), or a file system that does not say
        name_max = -1
    budget = (name_max if name_max > 0 else 255) - _FIXED_BYTES
    name, host = destination.name, _host()
    host = _cut(host, max(budget - len(os.fsencode(name)), budget // 2))
    return _cut(name, budget - len(host)), host


# a killed conversion's staging is removed only when nothing in it has changed for this long: a live writer keeps
# writing its files, also one whose PID this process cannot see (a container with this machine's name but a PID
# namespace of its own)
STALE_AFTER_SECONDS = 3600


def _is_alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (a zombie or another user's counts; off POSIX, always)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # another user's (PermissionError), or no PID at all: leave it
        return True
    return True


def _last_change(folder: Path) -> float:
    """The latest modification time of `folder` and of everything in it (links not followed)."""
    latest = folder.lstat().st_mtime
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            latest = max(latest, os.lstat(os.path.join(root, name)).st_mtime)
    return latest


def _remove_stale_staging(destination: Path) -> None:
    """Remove what a killed conversion to `destination` on this machine left beside it (see `staged_folder`)."""
    name, host = _staging_parts(destination)
    pattern = re.compile(rf"\.{re.escape(name)}\.(staging|replaced)-([A-Za-z0-9._]+)-(\d{{1,10}})-[a-z0-9_]+")
    removed, kept = [], []
    try:
        entries = sorted(destination.parent.iterdir())
    except OSError as err:  # a parent this process may write but not list: no cleanup, the conversion goes on
        logger.warning("cannot look for a killed conversion's leftovers in %s: %s", destination.parent, err)
        return
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or match[2] != host or _is_alive(int(match[3])) or entry.is_symlink() or not entry.is_dir():
            continue
        if match[1] == "replaced" and not destination.exists():
            kept.append(f"{entry.name} (the earlier checkpoint, moved aside)")  # killed between the two renames
            continue
        try:
            if time.time() - _last_change(entry) < STALE_AFTER_SECONDS:
                kept.append(f"{entry.name} (changed in the last {STALE_AFTER_SECONDS // 60} minutes)")
                continue
            shutil.rmtree(entry)
            removed.append(entry.name)
        except FileNotFoundError:  # another conversion removed it meanwhile
            pass
        except OSError as err:  # not ours to remove after all (another user's): it does not stop this conversion
            kept.append(f"{entry.name} ({err.strerror or err})")
    what = ([f"removed {', '.join(removed)}"] if removed else []) + ([f"kept {', '.join(kept)}"] if kept else [])
    if what:
        logger.warning("%s in %s, left by a killed conversion", "; ".join(what), destination.parent)


def _remove_replaced(old: Path) -> None:
    """Remove `old`, the checkpoint a conversion replaced (the new one already in place): a symbolic link is removed
    itself, its target left alone; what cannot be removed stays, with a warning (the next conversion removes it)."""
    try:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old)
    except FileNotFoundError:  # a cleanup beside it got there first
        pass
    except OSError as err:
        logger.warning("the new checkpoint is in place, but %s (the one it replaced) stays: %s", old, err)


@contextlib.contextmanager
def staged_folder(destination: str | Path, overwrite: bool = False, sources: tuple = ()) -> Iterator[Path]:
    """Yield an empty staging folder; on success it becomes `destination`, on failure it is removed.

    The staging folder is `.NAME.staging-HOST-PID-RANDOM` beside `destination` (NAME its name, HOST and PID this
    process's); an existing checkpoint being replaced is first renamed `.NAME.replaced-HOST-PID-RANDOM`. Where such a
    name (with a 10-digit PID) would pass the file system's limit (PC_NAME_MAX bytes, 255 where it does not say), NAME
    and if need be HOST are cut to a prefix and a hash of the whole (`_staging_parts`), the same in every conversion to
    `destination`. A conversion killed outright leaves these behind. Before staging, a conversion removes those of
    its destination whose HOST is this machine, whose PID is no running process and in which nothing changed for
    `STALE_AFTER_SECONDS` (an hour): only their writer wrote them, and it is gone (a PID reused since only delays
    the removal; a writer alive in another PID namespace under this machine's name keeps changing its files).
    Folders of other machines (a shared file system) or of live processes, other names (those of older versions
    included) and symlinks are left alone. A `.replaced` folder is removed only while `destination` exists; without
    it, it holds the only copy of the earlier checkpoint and is kept. One warning line names what was removed (or
    kept). The new checkpoint in place, a failure to remove the one it replaced is a warning, not an error (the next
    conversion removes it); a destination that was a symbolic link loses the link only, not what it pointed to.
    """
    destination = Path(os.path.abspath(destination))
    check_destination(destination, overwrite, sources)
    destination.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(destination)
    name, host = _staging_parts(destination)
    prefix = f".{name}.staging-"
    staging = new_temp_folder(destination.parent, prefix=f"{prefix}{host}-{os.getpid()}-")  # mode as os.mkdir's
    try:
        yield staging
        old = None
        if destination.exists():  # move the old checkpoint aside first: a crash never leaves neither in place
            old = destination.with_name(f".{name}.replaced-{staging.name.removeprefix(prefix)}")
            destination.rename(old)
        staging.rename(destination)
        if old is not None:
            _remove_replaced(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
