"""benchmarks/bench_generate.py runs end to end at a tiny shape on the CPU, both sides write the same tokens, and its
results keep whatever was measured when a batch size is skipped or fails."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_generate  # noqa: E402


def test_smoke_run_writes_results_with_equal_tokens(tmp_path):
    results = bench_generate.main(["--smoke", "--out", str(tmp_path)])
    (out,) = tmp_path.glob("*-cpu-generate.json")
    written = json.loads(out.read_text())
    assert written["decode_bs1_speedup"] == results["decode_bs1_speedup"] > 0
    assert written["caption_speedup"] > 0 and written["generate_bs1_speedup"] > 0
    assert written["caption_best"]["share4v"]["batch"] in (1, 3)
    assert written["roofline_bs1_tokens_per_s"] > 0 and set(written["roofline_fraction_bs1"]) == {"baseline", "share4v"}
    for side in ("baseline", "share4v"):
        assert set(written["runs"][side]) == {"1", "3"}
        for run in written["runs"][side].values():
            assert run["tokens_per_row"] == written["new_tokens"] == 8  # no end-of-sequence token: every row runs
            assert run["seconds"] > 0 and run["ttft_s"] > 0 and run["tokens_per_s"] > 0  # (a shared CPU: no order)
    assert written["runs"]["share4v"]["3"]["static_cache"] == [3, 256]  # the engine's own cache, one bucket
    for equality in written["equality"]["share4v"].values():  # fp32: the same tokens, row by row
        assert equality["rows_fully_equal"] == equality["rows"] and equality["common_prefix_min"] == 8
    assert written["errors"] == written["skipped"] == []


def test_the_fp8_kv_cache_side_replaces_the_default_and_writes_its_own_keys(tmp_path):
    results = bench_generate.main(["--smoke", "--kv-cache-dtype", "fp8", "--batch-sizes", "3", "--out", str(tmp_path)])
    (out,) = tmp_path.glob("*-cpu-generate-fp8-kv.json")
    written = json.loads(out.read_text())
    assert set(written["runs"]) == {"baseline", "share4v_fp8_kv"} and written["kv_cache_dtype"] == "fp8"
    assert written["fp8_kv_caption_speedup"] == results["fp8_kv_caption_speedup"] > 0
    assert "caption_speedup" not in written and written["errors"] == []
    assert written["equality"]["share4v_fp8_kv"]["3"]["first_token_equal_rows"] == 3  # the unrounded prompt pass


def test_batch_sizes_that_would_end_past_the_deadline_are_skipped_and_listed():
    results = bench_generate.main(["--smoke", "--deadline-s", "0", "--batch-sizes", "2"])
    assert results["skipped"] == [{"batch": 2, "reason": "expected to end past the 0 s deadline"}]
    assert "caption_speedup" not in results and results["runs"]["share4v"] == {}
    args = bench_generate.argparse.Namespace(warmup=2, repeats=3)
    run = {"first_call_s": 60.0, "seconds": 1.0, "ttft_s": 0.1}
    after_one = bench_generate._expected_seconds({"1": run}, 64, args)  # a compilation, longer calls
    assert after_one == pytest.approx(60.0 + 4 * 4.0 + 3 * 6.4)
    run_64 = {"first_call_s": 70.0, "seconds": 4.0, "ttft_s": 1.0}
    after_64 = bench_generate._expected_seconds({"1": run, "64": run_64}, 16, args)  # the batch graph serves 16
    assert after_64 == pytest.approx(5 * 4.0 + 3 * 1.0)
    assert bench_generate._expected_seconds({}, 64, args) == 0.0


def test_each_side_captions_at_its_best_batch_size_that_the_baseline_tried():
    def run(images_per_s):
        return {"images_per_s": images_per_s}

    results = {
        "runs": {"baseline": {"64": run(20.0), "128": run(25.0)},
                 "share4v": {"64": run(24.0), "128": run(30.0), "256": run(40.0)}},
        "skipped": [{"batch": 256, "side": "baseline", "reason": "out of memory"}],
    }  # fmt: skip
    bench_generate._summarize(results)  # the baseline could not fit 256: each at its own best
    assert results["caption_best"] == {"share4v": {"batch": 256, "images_per_s": 40.0},
                                       "baseline": {"batch": 128, "images_per_s": 25.0}}  # fmt: skip
    assert results["caption_speedup"] == 1.6
    results["skipped"] = [{"batch": 256, "reason": "expected to end past the 510 s deadline"}]
    bench_generate._summarize(results)  # not tried on the baseline's side: it might have done better there
    assert results["caption_best"]["share4v"]["batch"] == 128 and results["caption_speedup"] == 1.2


def test_llava_inputs_expand_each_image_to_its_patches():
    shape = bench_generate.TINY
    requests = bench_generate.share4v_requests(3, shape, 10)
    inputs = bench_generate.llava_inputs(3, shape, 10, "cpu", torch.float32)
    assert len({len(request.prompt_ids) for request in requests}) == 3  # the rows need left padding
    for row, request in enumerate(requests):
        assert int(inputs["attention_mask"][row].sum()) == request.prompt_tokens
        assert int((inputs["input_ids"][row] == shape.image_token_id).sum()) == shape.patches
        assert inputs["attention_mask"][row, -1] == 1  # left-padded
    assert torch.equal(inputs["pixel_values"][1], requests[1].pixel_values[0])
    assert bench_generate.share4v_requests(1, shape, 10)[0].prompt_ids == requests[0].prompt_ids  # same row prompt


def test_headline_keys_come_from_what_was_measured():
    run = {"decode_tokens_per_s": 100.0, "tokens_per_s": 90.0, "images_per_s": 0.7}
    results = {"runs": {"baseline": {"1": run, "64": {**run, "images_per_s": 10.0}}, "share4v": {"1": run}}}
    results["roofline_bs1_tokens_per_s"] = 200.0
    bench_generate._summarize(results)
    assert results["decode_bs1_speedup"] == 1.0 and results["roofline_fraction_bs1"]["share4v"] == 0.5
    assert results["caption_speedup"] == 1.0  # only batch sizes that both sides measured are compared
    results["runs"]["share4v"]["64"] = {**run, "images_per_s": 12.0}
    bench_generate._summarize(results)
    assert results["caption_best"]["baseline"] == {"batch": 64, "images_per_s": 10.0}
    assert results["caption_speedup"] == 1.2
    assert bench_generate.compare([[1, 2, 3], [4, 5]], [[1, 2, 9], [7, 5]]) == {
        "rows": 2, "first_token_equal_rows": 1, "rows_fully_equal": 0, "common_prefix_min": 0,
        "common_prefix_mean": 1.0,
    }  # fmt: skip


def test_the_fused_and_unfused_engines_write_the_baselines_tokens():
    results = bench_generate.main(["--smoke", "--unfused-projections", "--batch-sizes", "3"])
    assert results["fused_projections"] is True and results["errors"] == []
    for side in ("share4v", "share4v_unfused"):  # fp32: the same tokens as transformers' Llava
        (equality,) = results["equality"][side].values()
        assert equality["rows_fully_equal"] == equality["rows"] == 3 and equality["common_prefix_min"] == 8
    assert results["unfused_caption_speedup"] > 0 and "3" in results["runs"]["share4v_unfused"]


def test_a_sampled_run_times_the_engines_own_sampling_loop(tmp_path, monkeypatch):
    from share4v.model import Share4VLlamaForCausalLM

    def no_generate(*args, **kwargs):
        raise AssertionError("the engine sampled through generate")

    monkeypatch.setattr(Share4VLlamaForCausalLM, "generate", no_generate)  # the baseline is transformers' Llava
    results = bench_generate.main(["--smoke", "--sample", "--batch-sizes", "2", "--out", str(tmp_path)])
    (out,) = tmp_path.glob("*-cpu-generate-sampled.json")
    assert json.loads(out.read_text())["sampling"] == bench_generate.SAMPLED == results["sampling"]
    assert results["errors"] == []
    for side in ("baseline", "share4v"):
        assert results["runs"][side]["2"]["tokens_per_row"] == 8
    assert results["caption_speedup"] > 0
    # fp32, each timed call from the same random state: the engine's draws are transformers' Llava's draws
    (equality,) = results["equality"]["share4v"].values()
    assert equality["rows_fully_equal"] == equality["rows"] == 2
