"""Where a benchmark's results JSON goes and how it is written: shared by every script in `benchmarks/`."""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def results_path(out: Path | None, device: torch.device, kind: str) -> Path | None:
    """`out` itself when it names a .json file, else `out/DATE-GPU-KIND.json` (GPU: h100, h200, ... or cpu)."""
    if out is None or out.suffix == ".json":
        return out
    name = device_name(device)
    match = re.search(r"\b([A-Z]\d{2,4})\b", name)
    gpu = match.group(1).lower() if match else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu"
    return out / f"{time.strftime('%Y-%m-%d')}-{gpu}-{kind}.json"


def write_results(out: Path | None, results: dict) -> None:
    """Writes `results` to `out` whole or not at all (a partial file renamed into place); nothing when `out` is
    None."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".json.part")
    partial.write_text(json.dumps(results, indent=1) + "\n")
    partial.replace(out)


def report_checks(out: Path, results: dict) -> None:
    """Print `results`, write them to `out` (see `write_results`) and exit with the names of the failed entries of
    `results["checks"]` (name → passed), if any: the ending of every `check_*.py` script."""
    print(json.dumps(results, indent=1))
    write_results(out, results)
    failed = [name for name, passed in results["checks"].items() if not passed]
    if failed:
        raise SystemExit(f"failed: {failed}")
