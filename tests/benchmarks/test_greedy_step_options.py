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


def test_a_child_killed_by_a_signal_runs_again_and_a_raising_child_is_reported_by_its_exception(monkeypatch):
    import subprocess

    line = json.dumps({"option_set": "default", "first_tokens": [1, 2]})
    outcomes = [
        subprocess.CompletedProcess([], -11, "", "w.py:1: UserWarning: slow\n  return forward_call(*args, **kwargs)\n"),
        subprocess.CompletedProcess([], 0, line + "\n", ""),
        subprocess.CompletedProcess([], 1, "", "Traceback (most recent call last):\nRuntimeError: boom\n  warn(x)\n"),
    ]
    calls = []

    def run(command, **_):
        calls.append(command)
        return outcomes.pop(0)

    monkeypatch.setattr(greedy_step_options.subprocess, "run", run)
    results = greedy_step_options.main(["--tiny", "--option-sets", "default", "freezing"])
    assert [command[3] for command in calls] == ["default", "default", "freezing"]  # the killed one ran twice
    assert results["runs"] == [json.loads(line)]
    death = "exit status -11:   return forward_call(*args, **kwargs)"
    assert results["retried"] == [{"option_set": "default", "error": death}]
    assert results["errors"] == [{"option_set": "freezing", "error": "exit status 1: RuntimeError: boom"}]
