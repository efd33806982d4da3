"""eval/scores.py: the score file a scorer writes (`--scores-file`) and `share4v.eval.report` collects.

One JSON object per benchmark run: `{"benchmark": <key>, "scores": {<metric>: <number>, ...}, "source": <the scored
file>}`, written atomically. Benchmark keys are the paper's columns (`BENCHMARKS`) or this project's own benchmarks
(`OTHER_BENCHMARKS`); scores are as the benchmark reports them (percent where the paper prints percent, MME's summed
scores as they are).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from share4v.eval.submission import write_json

# The paper's table, in its order (+ POPE, which LLaVA-1.5 users expect): key -> (column name, headline metric).
BENCHMARKS: dict[str, tuple[str, str]] = {
    "llavabench": ("LLaVA-Bench-Wild", "overall"),
    "mme_perception": ("MME-P", "perception"),
    "mme_cognition": ("MME-C", "cognition"),
    "mmbench_en": ("MMBench", "accuracy"),
    "mmbench_cn": ("MMBench-CN", "accuracy"),
    "seed": ("SEED-Image", "image_accuracy"),
    "mmvet": ("MM-Vet", "total"),
    "qbench": ("Q-Bench", "accuracy"),
    "sqa": ("SQA-IMG", "img_accuracy"),
    "vqav2": ("VQAv2", "accuracy"),
    "vizwiz": ("VizWiz", "accuracy"),
    "gqa": ("GQA", "accuracy"),
    "textvqa": ("TextVQA", "accuracy"),
    "pope": ("POPE", "f1"),
}

# This project's own benchmarks, beyond the paper's table: a score card shows their columns where a score file has one.
OTHER_BENCHMARKS: dict[str, tuple[str, str]] = {
    "miniature": ("Miniature", "overall"),  # the synthetic world's held-out benchmark (`share4v.data.miniature`)
}


def write_scores(path: str | Path, benchmark: str, scores: Mapping[str, Any], source: str | Path = "") -> Path:
    """Write one benchmark's scores to `path` (atomically); `benchmark` must be a key of `BENCHMARKS` or
    `OTHER_BENCHMARKS` (MME writes one file with key "mme", holding both totals)."""
    if benchmark not in BENCHMARKS and benchmark not in OTHER_BENCHMARKS and benchmark != "mme":
        known = ", ".join([*BENCHMARKS, *OTHER_BENCHMARKS])
        raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {known}")
    return write_json({"benchmark": benchmark, "scores": dict(scores), "source": str(source)}, path)


def read_scores(path: str | Path) -> dict[str, Any]:
    """A score file, checked: one line naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable score file ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("scores"), dict) or "benchmark" not in data:
        raise ValueError(f"{path}: a score file needs 'benchmark' and a 'scores' object")
    return data


__all__ = ["BENCHMARKS", "OTHER_BENCHMARKS", "read_scores", "write_scores"]
