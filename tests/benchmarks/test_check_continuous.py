"""benchmarks/check_continuous.py runs on the CPU: every queued answer equals the answer alone, in fewer steps."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import check_continuous  # noqa: E402


def test_the_queue_answers_as_alone_in_fewer_steps(tmp_path):
    out = tmp_path / "continuous.json"
    results = check_continuous.main(["--cpu", "--requests", "20", "--out", str(out)])  # 4 past one batch
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert results["answers_equal"] == 20 and results["differing"] == [] == results["fixed_batch_differing"]
    assert results["tokens"] == sum(results["budgets"])  # the tiny model does not end early: every budget is used
    assert results["queue_steps"] < results["alone_steps_at_most"]


def test_greedy_answers_stay_as_alone_beside_sampled_neighbours(monkeypatch):
    from share4v.inference.sampling import RowSampling

    mixed_steps = []
    draw = RowSampling.draw
    monkeypatch.setattr(RowSampling, "draw", lambda self, logits: mixed_steps.append(1) or draw(self, logits))
    results = check_continuous.main(["--cpu", "--requests", "12", "--sampled-neighbours", "6"])
    assert results["answers_equal"] == 12 and results["differing"] == []
    assert results["sampled_answers_written"] == 6
    assert mixed_steps  # greedy and sampled rows drew in the same steps


def test_answers_ended_by_stop_strings_are_generates_and_the_queues():
    results = check_continuous.main(["--cpu", "--stops", "--requests", "10"])
    assert results["answers_equal"] == 10 and results["differing"] == [] == results["generate_differing"]
    assert results["ended_by_stop_string"] >= 5  # most answers end on their stop string, before their budget
    assert results["fixed_batch_differing"] == [] == results["fixed_batch_with_stops_differing"]
    assert results["fixed_batch_with_stops_ended"] >= 3  # rows of the fixed batch that a stop string ended
