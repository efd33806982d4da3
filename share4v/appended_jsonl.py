"""share4v/appended_jsonl.py

JSON-lines files that long jobs append to, a line per finished item, and read back to resume: the captioner's
outputs, the benchmark answer files. A kill can tear the last line, even inside a character. Standard library only:
the scorers and the report import it on machines without torch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_TAIL_BLOCK = 1 << 16  # bytes read at a time from a file's end


def cut_torn_line(path: str | Path) -> None:
    """Before appending to a JSON-lines file a kill may have torn: cut its last line if it lacks the newline and does
    not parse (it may end inside a character), or give it the newline if it is whole, so that the next line appended
    starts on a fresh line and every line left is whole. Reads only the file's last line."""
    path = Path(path)
    if not path.is_file() or not path.stat().st_size:
        return
    with path.open("rb+") as f:
        end = f.seek(0, os.SEEK_END)
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        start, tail = end, b""
        while start > 0 and b"\n" not in tail:  # back to the last newline, a block at a time
            step = min(_TAIL_BLOCK, start)
            start -= step
            f.seek(start)
            tail = f.read(step) + tail
        if b"\n" in tail:
            cut = tail.rindex(b"\n") + 1
            start, tail = start + cut, tail[cut:]
        try:
            json.loads(tail)
        except ValueError:  # UnicodeDecodeError too
            f.truncate(start)
            return
        f.seek(0, os.SEEK_END)
        f.write(b"\n")


def read_appended_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The objects of an append-only JSON-lines file (none if it does not exist); a line torn by a kill is
    skipped. See `cut_torn_line` for the writer's side."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):  # a kill can split a character
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def values_in_jsonl(path: str | Path, key: str) -> set[str]:
    """The `key` values (as strings) of an append-only JSON-lines output; a line torn by a kill is ignored."""
    return {str(row[key]) for row in read_appended_jsonl(path) if key in row}
