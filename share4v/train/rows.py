"""train/rows.py

Reading training rows (a JSON list or JSONL of LLaVA conversations) and telling good rows from bad ones, with a
report of every sample that was skipped and why.

A row is `{"id": str, "image": "rel/path.jpg" | [paths] (optional), "conversations": [{"from": "human"|"gpt",
"value": str}, ...]}`. Reading never stops at a bad row: it is named (file, line or index, id) and left out.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from share4v.appended_jsonl import read_appended_jsonl
from share4v.constants import DEFAULT_IMAGE_TOKEN
from share4v.train.preprocess import SampleError, conversation_for_training
from share4v.utils import dist_info

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BadRow:
    """A row that was left out: where it is (`file:line` or `file[index]`), its id if any, and why."""

    where: str
    sample_id: str | None
    reason: str

    def __str__(self) -> str:
        sample = f" (id {self.sample_id})" if self.sample_id is not None else ""
        return f"{self.where}{sample}: {self.reason}"


def _first_line_is_a_row(raw: bytes) -> bool:
    """Whether the first non-blank line is a JSON object by itself (as in JSONL; never in a pretty-printed file)."""
    first = next((line for line in raw.splitlines() if line.strip()), b"")
    try:
        return isinstance(json.loads(first.decode("utf-8", errors="replace")), dict)
    except json.JSONDecodeError:
        return False


def _jsonl_rows(path: Path, lines: Iterable[bytes]) -> tuple[list[tuple[str, Any]], list[BadRow]]:
    rows, bad = [], []
    for number, line in enumerate(lines, start=1):
        if number == 1:
            line = line.removeprefix(codecs.BOM_UTF8)
        if not line.strip():
            continue
        try:
            rows.append((f"{path}:{number}", json.loads(line.decode("utf-8"))))
        except UnicodeDecodeError as err:
            bad.append(BadRow(f"{path}:{number}", None, f"not valid UTF-8 (byte {err.start} of the line)"))
        except json.JSONDecodeError as err:
            bad.append(BadRow(f"{path}:{number}", None, f"not valid JSON: {err.msg} (column {err.colno})"))
    return rows, bad


def _parse_json(text: str) -> tuple[Any, str | None]:
    """`(value, None)`, or `(None, what is wrong and where)` (the error, which holds the text, is not kept)."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as err:
        return None, f"not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}"


ANNOUNCED_FILE_BYTES = 100_000_000  # parsing one this large takes seconds (about 4 s here): the log says so first


def read_rows(path: str | os.PathLike) -> tuple[list[tuple[str, Any]], list[BadRow]]:
    """All rows of a JSON list or JSONL file as `(where, row)`, and the JSONL lines that are not JSON.

    A `.jsonl` file is JSONL; any other is a JSON list when it parses as one, else JSONL when its first line is a
    JSON object by itself (a UTF-8 byte-order mark is allowed in front).

    Raises:
        FileNotFoundError: when the file is missing.
        ValueError: when a JSON (non-JSONL) file is not UTF-8, does not parse or is not a list (one line, with the
            position).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training data file not found: {path}")
    size = path.stat().st_size
    if size >= ANNOUNCED_FILE_BYTES and dist_info().rank == 0:  # one parse, no progress to show: say what it waits on
        logger.info("reading %s (%.2f GB)", path, size / 1e9)
    if path.suffix == ".jsonl":
        with path.open("rb") as handle:
            return _jsonl_rows(path, handle)
    raw = path.read_bytes().removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if _first_line_is_a_row(raw):
            return _jsonl_rows(path, raw.splitlines())
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}: not valid UTF-8 (line {line}, byte {err.start}): {err.reason}") from None
    del raw  # parsing holds one copy of the file's text, not two (the released files are over a gigabyte)
    data, problem = _parse_json(text)
    if problem is not None or (isinstance(data, dict) and "conversations" in data):  # JSONL, or a broken list
        raw = text.encode("utf-8")  # the same bytes again: JSONL lines end where the bytes' line breaks are
        del text, data
        if problem is not None and not _first_line_is_a_row(raw):
            raise ValueError(f"{path}: {problem}")
        return _jsonl_rows(path, raw.splitlines())
    del text  # before the rows' places are written out
    if isinstance(data, dict):
        keys = ", ".join(list(map(str, data))[:5])
        raise ValueError(f"{path}: expected a JSON list of samples, found an object (keys: {keys})")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of samples, found a {type(data).__name__}")
    return [(f"{path}[{index}]", row) for index, row in enumerate(data)], []


def sample_id(row: Any) -> str | None:
    return str(row["id"]) if isinstance(row, dict) and "id" in row else None


def image_paths(row: dict) -> list[str]:
    """The row's image paths (none, one, or several)."""
    image = row.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


def check_row(row: Any, conv_mode: str) -> None:
    """Raise `SampleError` saying what is wrong with a row (images are checked when loaded)."""
    check_row_structure(row)
    check_image_markers(row)
    conversation_for_training(row["conversations"], conv_mode)


def check_image_markers(row: dict) -> int:
    """How many `<image>` markers the row's text holds; none (the images go in front) or one per image.

    Raises:
        SampleError: when there are markers but no `image`, or as many markers as images neither.
    """
    markers = sum(turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in row["conversations"])
    images = len(image_paths(row))
    if markers and not images:
        raise SampleError(f"{markers} {DEFAULT_IMAGE_TOKEN} markers in the text but no 'image' in the row")
    if markers and markers != images:
        raise SampleError(f"{markers} {DEFAULT_IMAGE_TOKEN} markers in the text but {images} images")
    return markers


def check_row_structure(row: Any) -> None:
    """Raise `SampleError` when a row is not `{"conversations": [{"from", "value"}...], "image"?: ...}`."""
    if not isinstance(row, dict):
        raise SampleError(f"a sample must be a JSON object, not {type(row).__name__}")
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise SampleError("missing or empty 'conversations' list")
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str) or "from" not in turn:
            raise SampleError(f"conversations[{index}] must be an object with 'from' and a string 'value'")
    image = row.get("image")
    if image is not None and not (
        (isinstance(image, str) and image)
        or (isinstance(image, list) and image and all(isinstance(p, str) for p in image))
    ):
        raise SampleError("'image' must be a non-empty path or a list of paths")


def _read_entries(file: Path) -> list[dict]:
    """The skip entries of one report file (unreadable lines, e.g. one cut by a crash, are passed over)."""
    return [entry for entry in read_appended_jsonl(file) if "where" in entry]


@dataclass
class SkipReport:
    """Where skipped samples are told: a warning and, when `path` is set, a JSONL line, once per row and rank.

    Each rank appends to its own file (`skipped_samples.jsonl`, `skipped_samples.rank1.jsonl`, ...), its DataLoader
    workers included; a process new to the report (a worker, forked again each epoch) first reads what its rank
    wrote, so a row met again in a later epoch is not told again. Two workers meeting the same row in the same epoch
    may both tell it, and a row met on several ranks is told by each; `entries()` lists each row once.
    """

    path: str | None = None
    seen: set = field(default_factory=set)  # rows (`where`) this rank has told
    _seen_in: int | None = field(default=None, repr=False)  # the process whose file reading `seen` holds

    def _file(self) -> Path | None:
        if not self.path:
            return None
        path = Path(self.path)
        return path if dist_info().rank == 0 else path.with_name(f"{path.stem}.rank{dist_info().rank}{path.suffix}")

    def _files(self) -> list[Path]:
        path = Path(self.path)
        return [path, *sorted(path.parent.glob(f"{path.stem}.rank*{path.suffix}"))]

    def clear(self) -> None:
        """Start afresh (a run that does not resume): this rank's file goes, and on rank 0 those of ranks beyond
        `WORLD_SIZE` (left by an earlier, larger run); the other ranks clear their own."""
        self.seen.clear()
        if not self.path:
            return
        self._file().unlink(missing_ok=True)
        if dist_info().rank == 0:
            world = dist_info().world_size
            for file in self._files()[1:]:
                rank = file.stem.rpartition(".rank")[2]
                if not rank.isdigit() or int(rank) >= world:
                    file.unlink(missing_ok=True)

    def _told(self, where: str) -> bool:
        if self._seen_in != os.getpid():
            target = self._file()
            self.seen |= {entry["where"] for entry in _read_entries(target)} if target is not None else set()
            self._seen_in = os.getpid()
        return where in self.seen

    def skip(self, bad: BadRow, announce: bool = True) -> None:
        """Report `bad` (logged unless `announce` is False, e.g. the same start-up finding on every rank)."""
        if self._told(bad.where):
            return
        self.seen.add(bad.where)
        if announce:
            logger.warning("skipping sample %s", bad)
        target = self._file()
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"where": bad.where, "id": bad.sample_id, "reason": bad.reason}) + "\n"
            with open(target, "a", encoding="utf-8") as handle:
                handle.write(line)

    def entries(self) -> list[dict]:
        """Every rank's skips, one dict per row (the first reason told for it)."""
        if not self.path:
            return []
        unique: dict[str, dict] = {}
        for file in self._files():
            for entry in _read_entries(file):
                unique.setdefault(entry["where"], entry)
        return list(unique.values())
