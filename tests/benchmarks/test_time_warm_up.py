"""benchmarks/time_warm_up.py on the CPU (tiny fp32 model, dynamo without inductor): it warms the engine up, runs
each request shape twice and writes what it measured."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import time_warm_up  # noqa: E402

from share4v.inference.engine import WARM_UP_SHAPES  # noqa: E402


def test_times_the_warm_up_and_the_first_requests(tmp_path):
    out = tmp_path / "warm-up.json"
    results = time_warm_up.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert results["warm_up_generations"] == 2 * len(WARM_UP_SHAPES) and results["warm_up_s"] > 0
    assert [record["request"] for record in results["requests"]] == [request[0] for request in time_warm_up.REQUESTS]
    for record in results["requests"]:
        assert record["errors"] == [] and record["first_s"] > 0 and record["again_s"] > 0
