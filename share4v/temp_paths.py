"""share4v/temp_paths.py

Temporary files and folders that outputs are written into before being renamed into place, created with the mode a
plain `open(path, "w")` or `os.mkdir(path)` gives (0o666 / 0o777 less the process umask), so that the renamed output
is as readable to teammates and serving processes as any other file the user writes. `tempfile.mkstemp`,
`NamedTemporaryFile` and `mkdtemp` create theirs owner-only (0o600 / 0o700), a mode the rename keeps. The kernel
applies the umask here (no `os.umask` round trip, which is not thread-safe). `widen_to_default_mode` gives a file
that a library wrote owner-only (safetensors' `save_file`) that same mode afterwards. Standard library only: the
scorers' submission writer imports it on machines without torch.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789_"  # tempfile's alphabet: names stay what they were
_NAME_LENGTH = 8
_ATTEMPTS = 10000  # tempfile.TMP_MAX


def _random_name() -> str:
    return "".join(secrets.choice(_LETTERS) for _ in range(_NAME_LENGTH))


def _create(make: Callable[[str], None], directory: str | Path, prefix: str, suffix: str) -> Path:
    """`directory/PREFIX RANDOM SUFFIX`, made by `make`, which raises FileExistsError when the name is taken."""
    for _ in range(_ATTEMPTS):
        path = os.path.join(directory, f"{prefix}{_random_name()}{suffix}")
        try:
            make(path)
        except FileExistsError:
            continue
        return Path(path)
    raise FileExistsError(f"no free temporary name {prefix}XXXXXXXX{suffix} in {directory}")


def _make_file(path: str) -> None:
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))


def _make_folder(path: str) -> None:
    os.mkdir(path, 0o777)


def new_temp_file(directory: str | Path, prefix: str = "tmp", suffix: str = "") -> Path:
    """Create an empty file `directory/PREFIX + 8 random characters + SUFFIX` (as `tempfile.mkstemp` names them)
    with the mode `open(path, "w")` gives, and return its path. The caller writes it, renames it and removes it on
    failure."""
    return _create(_make_file, directory, prefix, suffix)


def new_temp_folder(directory: str | Path, prefix: str = "tmp", suffix: str = "") -> Path:
    """Create an empty folder `directory/PREFIX + 8 random characters + SUFFIX` (as `tempfile.mkdtemp` names them)
    with the mode `os.mkdir(path)` gives, and return its path. The caller fills it, renames it and removes it on
    failure."""
    return _create(_make_folder, directory, prefix, suffix)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file beside `path` (`new_temp_file`: a plain write's mode); when the block ends without an
    error it replaces `path`, otherwise (a full disk, an interrupt) it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = new_temp_file(path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def widen_to_default_mode(path: str | Path) -> None:
    """Add to `path`'s permission bits those a plain `open(path, "w")` beside it would give (0o666 less the umask,
    or what the folder's default ACL says), so that a file a library wrote owner-only (safetensors >= 0.8 writes
    0o600, safetensors/safetensors#782) is as readable as the user's other files. Bits are only ever added: a file
    already at least that open is left alone, and under umask 0o077 an owner-only file stays so.

    Meant for a file just created: one written over keeps the mode it had, as with a plain write (weights_io's
    `save_file` and `widened_new_safetensors` restore it instead of calling this).

    The default mode is read from a probe file created beside `path` and removed again: the kernel applies the
    umask (no thread-unsafe `os.umask` round trip) and the folder's default ACL, as it did for a plain write.
    """
    path = Path(path)
    probe = new_temp_file(path.parent, prefix=f".{path.name}.", suffix=".mode")
    try:
        default = stat.S_IMODE(probe.stat().st_mode)
    finally:
        probe.unlink()
    current = stat.S_IMODE(path.stat().st_mode)
    if current | default != current:
        os.chmod(path, current | default)
