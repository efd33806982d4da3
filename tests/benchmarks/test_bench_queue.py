"""benchmarks/bench_queue.py runs at tiny shapes on the CPU: the queue and static batches give every request the
same tokens (fp32), each its whole budget, and the queue runs fewer compiled steps."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_queue  # noqa: E402


def test_smoke_run_answers_alike_in_fewer_steps():
    results = bench_queue.main(["--smoke", "--requests", "20"])
    assert results["answers_equal"] == results["answers_written_in_full"] == 20
    assert results["runs"]["queue"]["compiled_steps"] < results["runs"]["static"]["compiled_steps"]
    assert results["new_tokens"] == sum(results["budgets"]) and results["queue_speedup"] > 0


def test_a_mix_of_settings_decodes_in_one_queue_on_the_engines_loop(tmp_path, monkeypatch):
    from share4v.model import Share4VLlamaForCausalLM

    def no_generate(*args, **kwargs):
        raise AssertionError("a request went to generate()")

    monkeypatch.setattr(Share4VLlamaForCausalLM, "generate", no_generate)
    results = bench_queue.main(["--smoke", "--sample", "--requests", "20", "--out", str(tmp_path / "queue.json")])
    assert len({tuple(setting) for setting in results["settings"]}) > 2 and 0 < results["greedy_answers"] < 20
    assert results["answers_equal"] == results["greedy_answers"]  # greedy rows beside sampled ones: as alone
    # one continuous batch for all settings, against fixed batches of equal settings
    assert results["runs"]["queue"]["compiled_steps"] < results["runs"]["static"]["compiled_steps"]
    assert (tmp_path / "queue.json").exists()
