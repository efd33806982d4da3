"""share4v/appended_jsonl.py

JSON-lines files that long jobs append to, a line per finished item, and read back to resume: the captioner's
outputs, the benchmark answer files. A kill can tear the last line, even inside a character. Standard library only:
the scorers and the report import it on machines without torch.
"""

from __future__ import annotations

import json
from pathlib import Path


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
