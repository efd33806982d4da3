"""benchmarks/greedy_step_options.py: each option set runs in its own process and, in fp32 on the CPU, writes the
same greedy tokens (freezing folds and concatenates weights; it must not change what is computed)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import greedy_step_options  # noqa: E402


def test_tiny_runs_write_equal_tokens_under_default_and_freezing(tmp_path):
    out = tmp_path / "options.json"
    results = greedy_step_options.main(["--tiny", "--option-sets", "default", "freezing", "--out", str(out)])
    assert json.loads(out.read_text()) == results and results["errors"] == []
    default, freezing = results["runs"]
    assert (default["option_set"], freezing["option_set"]) == ("default", "freezing")
    assert len(default["first_tokens"]) == 8 and default["first_tokens"] == freezing["first_tokens"]
    assert default["decode_tokens_per_s"] > 0 and default["seconds"] > default["prompt_s"] > 0


def test_an_unknown_option_set_is_refused():
    with pytest.raises(SystemExit, match="unknown option set 'fast'"):
        greedy_step_options._compile_config("fast")
