"""One training run of a `check_*.py` script: the command in a subprocess, its output in a log beside the run's
folder, its logged losses read back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_training(command: list[str], out: Path, env: dict[str, str], timeout: int = 600) -> list[float]:
    """Run `command` (a training entry writing to the folder `out`) from the repository root, its output in
    `OUT.log` beside `out`; returns the losses its `trainer_state.json` logged. A failed run ends the script with the
    log's tail."""
    log = out.parent / f"{out.name}.log"
    with log.open("w") as stream:
        done = subprocess.run(command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{out.name} failed (exit {done.returncode}):\n{log.read_text()[-3000:]}")
    state = json.loads((out / "trainer_state.json").read_text())
    return [entry["loss"] for entry in state["log_history"] if "loss" in entry]


def merge_lora(run: Path, base: Path, *flags: str) -> tuple[int, str]:
    """`scripts/merge_lora_weights.py` on the LoRA folder `run` over `base`, into `RUN-merged` beside it (the script
    reloads what it wrote and checks its logits); returns its exit status and its last line of output."""
    command = [sys.executable, "scripts/merge_lora_weights.py", "--model-path", str(run), "--model-base", str(base),
               "--save-model-path", str(run.parent / f"{run.name}-merged"), *flags]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    report = done.stdout.strip().splitlines() or done.stderr.strip().splitlines() or [""]
    return done.returncode, report[-1]
