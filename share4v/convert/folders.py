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
import json
import logging
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from share4v.temp_paths import new_temp_folder

try:
    import fcntl
except ImportError:  # not POSIX: no staging lock, no cleanup
    fcntl = None

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


_NAME_MAX = 255  # bytes in one file name (Linux, macOS)
_LOCK = ".staging.lock"  # inside a staging folder: its writer holds an exclusive flock on it while it writes
_ID_DIGITS = 10  # a PID in a staging name: 1 to 10 digits (Linux's largest is 7)


def _host(destination: Path) -> str:
    """This machine's name as `destination`'s staging folders carry it: no `-` (it separates the name's fields), and
    cut so that the longest name, `.NAME.replaced-HOST-PID-RANDOM`, fits in NAME_MAX bytes."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "_"
    fixed = len(os.fsencode(f".{destination.name}.replaced--{'9' * _ID_DIGITS}-{'x' * 8}"))
    if fixed + 1 > _NAME_MAX:
        raise ValueError(f"{destination.name!r} is too long a name for a destination: its staging name would not fit")
    return host[: _NAME_MAX - fixed]


def _is_alive(pid: int) -> bool:
    """Whether process `pid` may exist in this process's PID namespace (a zombie or another user's counts; a number
    `os.kill` does not take counts too: nothing proves it dead; off POSIX, always)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate it on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # PermissionError: it exists, under another user
        return True
    return True


def _lock(folder: Path) -> int | None:
    """An open descriptor of `folder/.staging.lock` holding its exclusive flock, or None when another process holds
    it, there is none (an older version's folder, or not a conversion's), or it cannot be opened."""
    try:
        fd = os.open(folder / _LOCK, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove_locked(folder: Path) -> None:
    """Remove `folder`, whose lock the caller holds, its lock file last: a removal killed midway leaves a folder
    the next conversion can still lock and remove."""
    for entry in folder.iterdir():
        if entry.name == _LOCK:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (folder / _LOCK).unlink(missing_ok=True)
    folder.rmdir()


def _remove_stale_staging(destination: Path) -> None:
    """Remove what a killed conversion to `destination` left beside it (see `staged_folder`). Best effort: a folder
    that cannot be read or removed is named in the warning line and the conversion goes on."""
    if fcntl is None:  # no flock: nothing can prove a staging folder's writer gone
        return
    host = _host(destination)
    pattern = re.compile(
        rf"\.{re.escape(destination.name)}\.(staging|replaced)-([A-Za-z0-9._]+)-(\d{{1,{_ID_DIGITS}}})-[a-z0-9_]+"
    )
    try:
        entries = sorted(destination.parent.iterdir())
    except OSError as err:  # a folder one may write but not list (it was written before the cleanup existed)
        logger.warning("cannot look for staging folders a killed conversion left in %s: %s", destination.parent, err)
        return
    removed, kept = [], []
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if not match or match[2] != host or _is_alive(int(match[3])) or entry.is_symlink() or not entry.is_dir():
            continue
        if match[1] == "replaced" and not destination.exists():
            kept.append(f"{entry.name} (the earlier checkpoint, moved aside)")  # killed between the two renames
            continue
        fd = _lock(entry)
        if fd is None:  # no lock file (not provably ours), or its writer lives (another PID namespace)
            continue
        try:
            _remove_locked(entry)
            removed.append(entry.name)
        except FileNotFoundError:  # removed meanwhile
            pass
        except OSError as err:  # not ours to remove after all (another user's): it does not stop this conversion
            kept.append(f"{entry.name} ({err.strerror or err})")
        finally:
            os.close(fd)
    what = ([f"removed {', '.join(removed)}"] if removed else []) + ([f"kept {', '.join(kept)}"] if kept else [])
    if what:
        logger.warning("%s in %s, left by a killed conversion", "; ".join(what), destination.parent)


def _lock_new_staging(staging: Path) -> int | None:
    """Create `staging/.staging.lock` and take its exclusive flock: the open descriptor (closing it releases the
    lock), or None without fcntl."""
    if fcntl is None:
        return None
    fd = os.open(staging / _LOCK, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def staged_folder(destination: str | Path, overwrite: bool = False, sources: tuple = ()) -> Iterator[Path]:
    """Yield a staging folder (empty but for its hidden lock file); on success it becomes `destination`, on failure
    it is removed.

    The staging folder is `.NAME.staging-HOST-PID-RANDOM` beside `destination` (NAME its name, HOST and PID this
    process's, HOST cut short where the name would pass 255 bytes); an existing checkpoint being replaced is first
    renamed `.NAME.replaced-HOST-PID-RANDOM`. While it writes, and until the old checkpoint is removed, the
    conversion holds an exclusive `flock` on the lock file `.staging.lock` inside the folder (moved into the
    `.replaced` folder before the staging folder is renamed into place, so the checkpoint never holds it).

    A conversion killed outright leaves these folders behind. Before staging, a conversion removes those of its
    destination whose HOST is this machine's, whose PID is no running process here, and whose lock it can take
    (held while removing): the PID test alone could take a live writer for dead in a container sharing the
    hostname but not the PID namespace (`docker --uts=host`, Kubernetes `hostNetwork`). Left alone: folders of
    other machines (a shared file system), of live PIDs (a PID reused since only delays the removal) or with the lock
    held, folders without a lock file (older versions' names, not a conversion's), other names and symlinks. A
    `.replaced` folder is removed only while `destination` exists; without it, it holds the only copy of the earlier
    checkpoint and is kept. One warning line names what was removed or kept, or that the folder could not be listed;
    none of this stops the conversion. Where `fcntl` is missing (not POSIX) there is no lock and no cleanup at all:
    a killed conversion's folders stay until removed by hand.
    """
    destination = Path(os.path.abspath(destination))
    check_destination(destination, overwrite, sources)
    destination.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(destination)
    prefix = f".{destination.name}.staging-"
    staging = new_temp_folder(destination.parent, prefix=f"{prefix}{_host(destination)}-{os.getpid()}-")
    try:
        lock = _lock_new_staging(staging)
    except OSError:
        shutil.rmtree(staging)
        raise
    try:
        yield staging
        old = None
        if destination.exists():  # move the old checkpoint aside first: a crash never leaves neither in place
            old = destination.with_name(f".{destination.name}.replaced-{staging.name.removeprefix(prefix)}")
            destination.rename(old)
        if lock is not None and old is not None:  # the held lock now guards the old checkpoint until it is removed
            (staging / _LOCK).rename(old / _LOCK)
        elif lock is not None:
            (staging / _LOCK).unlink()
        staging.rename(destination)  # its mode is os.mkdir's (new_temp_folder), not mkdtemp's 0o700
        if old is not None:
            _remove_locked(old)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
        if lock is not None:
            os.close(lock)  # releases the lock, once the folders are in place or removed
