"""eval/jsonl.py: reading the answer and question files of the evaluation tools, with one-line errors, and appending
to JSON-lines outputs that survive a kill (no torch: the judge and scorers import it)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from share4v.appended_jsonl import cut_torn_line


def read_jsonl(path: str | Path, required: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The rows of a JSON-lines file (blank lines skipped).

    Raises:
        FileNotFoundError / ValueError: naming the file, and the line and field that do not parse or are missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        missing = [key for key in required if key not in row]
        if missing:
            raise ValueError(f"{path}:{number}: missing field {missing[0]!r}")
        rows.append(row)
    return rows


def read_json_list(path: str | Path, what: str = "entries") -> list[Any]:
    """A JSON file holding one list (question files such as ScienceQA's and Q-Bench's).

    Raises:
        FileNotFoundError / ValueError: naming the file, and where it does not parse or what it holds instead.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")
    return data


def prepare_append(path: str | Path) -> Path:
    """Make `path`'s folder and cut a last line torn by a kill (`share4v.utils.cut_torn_line`), so that the next
    appended line starts on a fresh line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cut_torn_line(path)
    return path


def append_jsonl(path: Path, row: Mapping[str, Any]) -> None:
    """One line appended and flushed (the file is closed after each line: a kill loses at most that line)."""
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
