"""scripts/miniature/reproduce.sh end to end at the smoke recipe's sizes: SIZE picks the recipe (quick without a GPU),
RECIPE's settings come after it, every arm lands in both score cards, and DOCS_DIR gets copies of them."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "miniature" / "reproduce.sh"
SMOKE = ("--set num_images=12 num_bench_images=2 vision_hidden=32 vision_layers=3 llm_hidden=32 llm_layers=2 "
         "vocab_size=400 batch_size=4 tower_steps=2 align_steps=2 stage1_steps=2 stage2_steps=2")  # fmt: skip


def run_script(*args: str, **env: str) -> subprocess.CompletedProcess:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"  # `python` is this interpreter
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PATH": path, "CUDA_VISIBLE_DEVICES": "", **env})  # fmt: skip


def test_the_script_runs_every_arm_and_copies_the_cards(tmp_path):
    result = run_script(str(tmp_path / "out"), "0", RECIPE=SMOKE, DOCS_DIR=str(tmp_path / "docs"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("recipe: quick --quick --set")
    card = json.loads((tmp_path / "out" / "score_card.json").read_text())
    assert [run["arm"] for run in card["runs"]] == ["detailed", "brief", "none"]
    # --quick's steps where RECIPE leaves them (llm_steps 20), RECIPE's sizes where it sets them
    assert card["recipe"]["llm_steps"] == 20 and card["recipe"]["num_images"] == 12
    report = (tmp_path / "out" / "report" / "score_card.md").read_text()
    assert all(f"| seed0-{arm} |" in report for arm in ("detailed", "brief", "none"))
    copied = sorted(path.name for path in (tmp_path / "docs").iterdir())
    drawn = ["quick-score_card.png"] if importlib.util.find_spec("matplotlib") else []  # the PNG needs matplotlib
    assert copied == ["quick-report-score_card.md", "quick-score_card.json", "quick-score_card.md", *drawn]
    assert (tmp_path / "docs" / "quick-score_card.md").read_text() == (tmp_path / "out" / "score_card.md").read_text()


def test_an_unknown_size_is_refused_in_one_line(tmp_path):
    result = run_script(str(tmp_path / "out"), "0", SIZE="huge")
    assert result.returncode == 2 and result.stderr.strip() == "error: SIZE must be quick or full, not 'huge'"
    assert not (tmp_path / "out").exists()


def test_help_prints_the_usage_and_runs_nothing(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and "bash scripts/miniature/reproduce.sh [OUT_DIR] [SEEDS...]" in result.stdout
    assert "SIZE=full" in result.stdout and "DOCS_DIR" in result.stdout and not list(tmp_path.iterdir())
