"""eval/report.py: one score card from the score files the benchmark scripts write, laid out like the paper's table.

    python -m share4v.eval.report playground/data/eval/scores --out reports/share4v-7b

Every `*.json` under ANSWERS_ROOT (recursively) is read as a score file (`share4v.eval.scores.read_scores`); one that
is not is reported in one line and skipped. The card has one row per checkpoint (the score file's `checkpoint` field,
else the folder it is in: the scripts write `scores/<checkpoint>/<benchmark>.json`) beside the paper's ShareGPT4V-7B
and -13B rows, columns in `BENCHMARKS` order (then any of `OTHER_BENCHMARKS` a score file has), "–" where a
benchmark was not run or not reported, and provenance:
template and decoding settings where the score files or the answer files they name carry them, package versions,
device and git commit of the machine writing the card. Written atomically to `score_card.md`, `score_card.json` and,
when matplotlib is importable, `score_card.png` (bars against the paper's numbers).

From Python: `render_markdown(build_report(score_files))`; the miniature reproduction (`share4v.data.miniature`) writes
its card with `build_report(score_files, benchmarks=["miniature"])`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO

from share4v.eval.scores import BENCHMARKS, OTHER_BENCHMARKS, read_scores

# The paper's published rows (README / ModelZoo of the original; SPEC §9 "Reported results"). POPE is not reported.
PAPER: dict[str, dict[str, float]] = {
    "ShareGPT4V-7B": {
        "llavabench": 72.6, "mme_perception": 1567.4, "mme_cognition": 376.4, "mmbench_en": 68.8,
        "mmbench_cn": 62.2, "seed": 69.7, "mmvet": 37.6, "qbench": 63.4, "sqa": 68.4, "vqav2": 80.6,
        "vizwiz": 57.2, "gqa": 63.3, "textvqa": 60.4,
    },
    "ShareGPT4V-13B": {
        "llavabench": 79.9, "mme_perception": 1618.7, "mme_cognition": 303.2, "mmbench_en": 68.5,
        "mmbench_cn": 63.7, "seed": 70.8, "mmvet": 43.1, "qbench": 65.2, "sqa": 71.2, "vqav2": 81.0,
        "vizwiz": 55.6, "gqa": 64.8, "textvqa": 62.2,
    },
}  # fmt: skip

# A score file with key "mme" holds both MME columns.
_SPLIT_FILES = {"mme": ("mme_perception", "mme_cognition")}
_MISSING = "–"
_COLUMNS = {**BENCHMARKS, **OTHER_BENCHMARKS}  # key -> (column name, headline metric)
_MAX_SCORE_FILE_BYTES = 1 << 20  # a score file is a few hundred bytes; anything this large is something else
_REPORT_NAMES = ("score_card.json",)  # our own output, never collected
# Provenance looked for in score files and in the first line of the answer file they name: label -> keys.
_PROVENANCE_KEYS = {
    "model_path": ("model_path",),
    "model_id": ("model_id",),
    "template": ("conv_mode", "template"),
    "temperature": ("temperature",),
    "top_p": ("top_p",),
    "num_beams": ("num_beams",),
    "max_new_tokens": ("max_new_tokens",),
    "batch_size": ("batch_size",),
    "dtype": ("dtype",),
    "device": ("device",),
}
_NESTED = ("settings", "decoding", "generation", "provenance", "metadata")


def find_score_files(root: str | Path) -> list[Path]:
    """Every `*.json` under `root` (recursively, sorted), except the score cards this module writes.

    Raises:
        FileNotFoundError: when `root` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    return sorted(path for path in root.rglob("*.json") if path.is_file() and path.name not in _REPORT_NAMES)


def build_report(
    score_files: Iterable[str | Path],
    checkpoints: Sequence[str] | None = None,
    benchmarks: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The score card of `score_files`, as plain JSON data.

    Args:
        score_files: score files (`share4v.eval.scores` format); bad ones are listed under "skipped", not raised.
        checkpoints: keep only these checkpoints, in this order (default: every one found, sorted by name).
        benchmarks: only these columns, in this order (default: the paper's, then any other benchmark found); rows,
            the paper's too, are shown where they have a number in one of them.

    Returns:
        `{"columns": [{"key", "name", "metric"}], "paper": [{"name", "scores"}], "rows": [{"checkpoint", "scores",
        "files", "provenance"}], "environment": {...}, "skipped": [{"file", "reason"}], "notes": [...],
        "generated": ISO time}`; every row's `scores` maps each column key to a number or None (not run).
    """
    found: dict[str, dict[str, tuple[float, Path, float]]] = {}  # checkpoint -> column -> (value, file, mtime)
    details: dict[str, list[tuple[Path, dict]]] = {}
    skipped, notes = [], []
    for path in map(Path, score_files):
        try:
            checkpoint, values, data = _read_one(path)
        except ValueError as err:
            skipped.append({"file": str(path), "reason": str(err)})
            continue
        if checkpoints and checkpoint not in checkpoints:
            continue
        details.setdefault(checkpoint, []).append((path, data))
        mtime = _mtime(path)
        for column, value in values.items():
            previous = found.setdefault(checkpoint, {}).get(column)
            newer = previous is None or mtime >= previous[2]
            if previous is not None:
                kept, dropped = (path, previous[1]) if newer else (previous[1], path)
                notes.append(f"two score files for {checkpoint} {column}: using {kept} (newer), ignoring {dropped}")
            if newer:
                found[checkpoint][column] = (value, path, mtime)
    if benchmarks is not None and (unknown := [key for key in benchmarks if key not in _COLUMNS]):
        raise ValueError(f"unknown benchmark(s) {', '.join(unknown)}; expected some of {', '.join(_COLUMNS)}")
    seen = {key for columns in found.values() for key in columns}
    shown = list(benchmarks) if benchmarks is not None else [*BENCHMARKS, *(k for k in OTHER_BENCHMARKS if k in seen)]
    order = list(checkpoints) if checkpoints else sorted(found)
    without_columns = [name for name in order if name in found and not any(key in found[name] for key in shown)]
    rows = [
        {
            "checkpoint": name,
            "scores": {key: found[name][key][0] if key in found[name] else None for key in shown},
            "files": {key: str(found[name][key][1]) for key in shown if key in found[name]},
            "provenance": _row_provenance(name, details.get(name, [])),
        }
        for name in order
        if name in found and name not in without_columns  # a row with none of the columns is left out
    ]
    notes += [f"no score file for checkpoint {name}" for name in order if name not in found]
    notes += [f"{name} has no score in {', '.join(shown)}" for name in without_columns]
    return {
        "title": "ShareGPT4V score card",
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "columns": [{"key": key, "name": _COLUMNS[key][0], "metric": _COLUMNS[key][1]} for key in shown],
        "paper": [
            {"name": f"{model} (paper)", "scores": {key: values.get(key) for key in shown}}
            for model, values in PAPER.items()
            if any(values.get(key) is not None for key in shown)
        ],
        "rows": rows,
        "environment": environment(),
        "skipped": skipped,
        "notes": notes,
    }


def _read_one(path: Path) -> tuple[str, dict[str, float], dict]:
    """(checkpoint, {column: value}, the file's data) of one score file; ValueError naming the file otherwise."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ValueError(f"{path}: not a readable score file ({err})") from None
    if size > _MAX_SCORE_FILE_BYTES:
        raise ValueError(f"{path}: {size} bytes is too large for a score file")
    data = read_scores(path)
    benchmark = data["benchmark"]
    if benchmark in _SPLIT_FILES:
        columns = _SPLIT_FILES[benchmark]
    elif benchmark in _COLUMNS:
        columns = (benchmark,)
    else:
        raise ValueError(f"{path}: unknown benchmark {benchmark!r}")
    values = {}
    for column in columns:
        metric = _COLUMNS[column][1]
        value = data["scores"].get(metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{path}: {benchmark} needs a number under scores.{metric}, got {value!r}")
        values[column] = float(value)
    checkpoint = data.get("checkpoint")
    if not isinstance(checkpoint, str) or not checkpoint:
        checkpoint = path.parent.name or str(path.parent)
    return checkpoint, values, data


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _row_provenance(checkpoint: str, files: list[tuple[Path, dict]]) -> dict[str, Any]:
    """What the row's score files (and the first line of the answer files they name) say about how it was made:
    each label maps to the distinct values seen, as strings."""
    seen: dict[str, list[str]] = {}
    sources = []
    for _, data in files:
        source = data.get("source")
        places = [data, *(data.get(key) for key in _NESTED)]
        if isinstance(source, str) and source:
            sources.append(source)
            line = _first_json_line(Path(source))
            places += [line, *(line.get(key) for key in _NESTED)]
        for place in places:
            if not isinstance(place, Mapping):
                continue
            for label, keys in _PROVENANCE_KEYS.items():
                for key in keys:
                    value = place.get(key)
                    if value is not None and not isinstance(value, (dict, list)):
                        values = seen.setdefault(label, [])
                        if str(value) not in values:
                            values.append(str(value))
    return {"checkpoint": checkpoint, **seen, "sources": sorted(set(sources))}


def _first_json_line(path: Path) -> dict:
    """The first line of a JSON-lines answer file as a dict; {} when it is absent, unreadable or not JSON lines."""
    try:
        with path.open(encoding="utf-8") as f:
            row = json.loads(f.readline(_MAX_SCORE_FILE_BYTES))
    except (OSError, ValueError):
        return {}
    return row if isinstance(row, dict) else {}


def environment() -> dict[str, Any]:
    """Package versions, Python, platform, device and git commit of this machine; a missing piece is None."""
    versions = {}
    for package in ("share4v", "torch", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": _device(),
        "git": _git_commit(),
    }


def _device() -> str | None:
    """The accelerator this machine offers torch ("cpu" without one), or None without a usable torch."""
    try:
        import torch
    except Exception:  # torch absent or broken: no device to name
        return None
    try:
        if torch.cuda.is_available():
            return f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
    except Exception:  # a driver problem must not stop the report
        return "cpu (CUDA present but unusable)"
    return "cpu"


def _git_commit() -> dict[str, Any] | None:
    """{"commit", "dirty"} of the checkout share4v is imported from, or None outside one (or without git)."""
    folder = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()  # fmt: skip
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10, check=True).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())} if commit else None


def _cell(value: float | None) -> str:
    return _MISSING if value is None else f"{value:.1f}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """The score card as markdown: the table (paper rows first), what each column measures, provenance, the
    environment, and any skipped files."""
    columns = report["columns"]
    lines = [f"# {report.get('title', 'Score card')}", ""]
    lines.append("| Model | " + " | ".join(column["name"] for column in columns) + " |")
    lines.append("|---|" + "---:|" * len(columns))
    for row in [*report["paper"], *({"name": r["checkpoint"], **r} for r in report["rows"])]:
        cells = [_cell(row["scores"].get(column["key"])) for column in columns]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    metrics = ", ".join(f"{column['name']} {column['metric']}" for column in columns)
    lines += ["", f"Each column is the benchmark's headline number ({metrics}); {_MISSING}: not run or not reported."]
    if not report["rows"]:
        lines += ["", "No score files were found."]
    for row in report["rows"]:
        lines += ["", f"## {row['checkpoint']}", ""]
        provenance = row.get("provenance", {})
        for label in _PROVENANCE_KEYS:
            if provenance.get(label):
                lines.append(f"- {label}: {', '.join(provenance[label])}")
        for key, path in row.get("files", {}).items():
            lines.append(f"- {_COLUMNS[key][0]}: `{path}`")
    env = report.get("environment", {})
    versions = ", ".join(f"{name} {version or 'not installed'}" for name, version in env.get("versions", {}).items())
    git = env.get("git")
    commit = f"{git['commit'][:12]}{' (uncommitted changes)' if git.get('dirty') else ''}" if git else "unknown"
    lines += ["", "## Environment (where this card was written)", ""]
    lines += [f"- {versions}", f"- Python {env.get('python')}, {env.get('platform')}"]
    lines += [f"- device: {env.get('device') or 'unknown'}", f"- git commit: {commit}", f"- {report.get('generated')}"]
    if report.get("skipped") or report.get("notes"):
        lines += ["", "## Skipped files and notes", ""]
        lines += [f"- skipped: {item['reason']}" for item in report.get("skipped", [])]
        lines += [f"- {note}" for note in report.get("notes", [])]
    return "\n".join(lines) + "\n"


def plot_report(report: Mapping[str, Any], path: str | Path) -> bool:
    """A bar chart of every row against the paper's rows (MME on its own axis), written atomically to `path`.

    Returns:
        False (nothing written) when matplotlib is not importable or the card has no row to draw.
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Patch
    except ImportError:
        return False
    series = [(row["name"], row["scores"]) for row in report["paper"]]
    series += [(row["checkpoint"], row["scores"]) for row in report["rows"]]
    if not series:  # nothing to draw (a card of some columns that no score file has)
        return False
    names = {column["key"]: column["name"] for column in report["columns"]}
    # percentages on one axis, MME's sums on another (a column wider); a card without one of them has one panel
    percent = [key for key in names if not key.startswith("mme")]
    mme = [key for key in names if key.startswith("mme")]
    candidates = ((percent, "score (%)", 0), (mme, "MME score (sum over subtasks)", 1))
    panels = [(keys, label, max(2, len(keys) + extra)) for keys, label, extra in candidates if keys]
    panels = panels or [([], "score (%)", 2)]
    figure = Figure(figsize=(max(6, len(names) + 2), 5.2), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False, width_ratios=[ratio for *_, ratio in panels])[0]
    width = 0.8 / len(series)
    for ax, (panel, label, _) in zip(axes, panels, strict=True):
        for index, (_, scores) in enumerate(series):
            offset = (index - (len(series) - 1) / 2) * width
            present = [(x, scores[key]) for x, key in enumerate(panel) if scores.get(key) is not None]
            ax.bar([x + offset for x, _ in present], [y for _, y in present], width, color=f"C{index % 10}")
        ax.set_xticks(range(len(panel)), [names[key] for key in panel], rotation=35, ha="right")
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylabel(label)
    handles = [Patch(color=f"C{index % 10}", label=label) for index, (label, _) in enumerate(series)]
    figure.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize="small")
    figure.suptitle(report.get("title", "Score card"))
    _replace(Path(path), lambda f: figure.savefig(f, format="png", dpi=120))
    return True


def _replace(path: Path, write: Callable[[BinaryIO], Any]) -> Path:
    """Write `path` atomically: `write` fills a temporary file beside it, which then replaces `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("wb") as f:
            write(f)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _to_json(report: Mapping[str, Any]) -> str:
    return json.dumps(report, indent=1, ensure_ascii=False, allow_nan=False) + "\n"


def write_report(report: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path | None]:
    """`score_card.md`, `score_card.json` and (matplotlib permitting; else None) `score_card.png` in `out_dir`."""
    out_dir = Path(out_dir)
    return {
        "markdown": _replace(out_dir / "score_card.md", lambda f: f.write(render_markdown(report).encode())),
        "json": _replace(out_dir / "score_card.json", lambda f: f.write(_to_json(report).encode())),
        "png": out_dir / "score_card.png" if plot_report(report, out_dir / "score_card.png") else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("answers_root", metavar="ANSWERS_ROOT", help="folder searched for score files (recursively)")
    parser.add_argument("--out", default=None, help="folder for score_card.{md,json,png} (default: ANSWERS_ROOT)")
    parser.add_argument("--checkpoint", nargs="+", default=None,
                        help="only these checkpoints, in this order (default: all found)")  # fmt: skip
    args = parser.parse_args(argv)
    try:
        report = build_report(find_score_files(args.answers_root), args.checkpoint)
        paths = write_report(report, args.out or args.answers_root)
    except OSError as err:
        sys.exit(f"error: {err}")
    for item in report["skipped"]:
        print(f"skipped {item['reason']}", file=sys.stderr)
    print(render_markdown(report), end="")
    if paths["png"] is None:
        print("note: matplotlib is not installed, so no bar chart was drawn (pip install matplotlib)", file=sys.stderr)
    print("wrote " + ", ".join(str(path) for path in paths.values() if path is not None), file=sys.stderr)
    return 0


__all__ = ["PAPER", "build_report", "environment", "find_score_files", "plot_report", "render_markdown", "write_report"]

if __name__ == "__main__":
    sys.exit(main())
