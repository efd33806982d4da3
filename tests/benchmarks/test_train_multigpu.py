"""benchmarks/train_multigpu_7b.py: a run at a tiny shape on the CPU (through torchrun and DeepSpeed, as on the
GPUs), the recipe's global batch kept by gradient accumulation, and the scaling summary's arithmetic."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "train_multigpu_7b.py"
sys.path.insert(0, str(ROOT / "benchmarks"))

import train_multigpu_7b  # noqa: E402


def _torchrun(world: Path, out: Path, *flags: str) -> dict:
    pytest.importorskip("deepspeed")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]
    command += [str(SCRIPT), "run", str(world), "--cpu", "--out", str(out), *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    train_multigpu_7b.make_world(root, num_rows=24, layers=2, tiny=True)
    return root


def test_accumulation_keeps_the_global_batch_and_its_losses(tiny_world, tmp_path):
    # stage 1 (ViT from half its depth, template plain): 4 samples a step as 2 x 2 and as 4 x 1, the first with
    # the large-bucket ZeRO-3 config (buckets change when parameters move, not the arithmetic)
    flags = ["--stage", "1", "--zero", "3", "--global-batch", "4", "--warmup", "1", "--steps", "2"]
    large = ["--deepspeed-config", str(ROOT / "scripts" / "zero3_large_buckets.json")]
    accumulated = _torchrun(tiny_world, tmp_path / "a.json", *flags, "--micro-batch", "2", *large)
    whole = _torchrun(tiny_world, tmp_path / "b.json", *flags, "--micro-batch", "4")
    assert (accumulated["gradient_accumulation"], whole["gradient_accumulation"]) == (2, 1)
    assert (accumulated["deepspeed_config"], whole["deepspeed_config"]) == ("zero3_large_buckets.json", "zero3.json")
    assert accumulated["zero_optimization"]["stage3_prefetch_bucket_size"] == 5e8
    assert accumulated["stage"] == 1 and accumulated["global_batch"] == 4 and accumulated["gpus"] == 1
    assert len(accumulated["losses"]) == 3
    for ours, theirs in zip(accumulated["losses"], whole["losses"], strict=True):
        assert math.isclose(ours, theirs, rel_tol=1e-4)  # the same samples per step, the same loss
    # the timed steps saw whole samples, each a 576-position-class image plus its caption
    assert accumulated["samples_per_s"] > 0 and accumulated["mean_useful_tokens_per_sample"] > 16
    assert accumulated["epoch_samples"] == train_multigpu_7b.STAGES[1]["samples_per_epoch"]


def test_a_deepspeed_config_of_another_zero_stage_is_refused(tiny_world, tmp_path):
    config = ROOT / "scripts" / "zero3_large_buckets.json"
    with pytest.raises(SystemExit, match="zero3_large_buckets.json is ZeRO-3, not the --zero 2 asked for"):
        train_multigpu_7b.run(tiny_world, tmp_path / "x.json", 2, 2, 2, 4, 1, 1, True, True, deepspeed_config=config)


def test_a_global_batch_the_gpus_cannot_split_is_refused():
    with pytest.raises(SystemExit, match="not a multiple of 4 GPUs x micro-batch 8"):
        train_multigpu_7b._gradient_accumulation(100, 4, 8)


def _result(tmp_path: Path, gpus: int, rate: float, micro_batch: int = 8, zero: int = 3) -> Path:
    path = tmp_path / f"zero{zero}-{gpus}-mb{micro_batch}.json"
    path.write_text(json.dumps({
        "stage": 2, "zero_stage": zero, "llm_layers": 32, "gpus": gpus, "micro_batch": micro_batch,
        "global_batch": 128, "gradient_accumulation": 128 // (gpus * micro_batch), "useful_tokens_per_s_per_gpu": rate,
        "mfu": 0.3, "seconds_per_step": 1.0, "peak_allocated_gib_per_gpu": [40.0] * gpus,
        "epoch_hours_at_this_scale": 1.0, "epoch_samples": 665_000, "mean_useful_tokens_per_sample": 720.0,
    }))  # fmt: skip
    return path


def test_summary_scales_each_series_against_its_fewest_gpus_and_projects(tmp_path):
    paths = [_result(tmp_path, 2, 1000.0), _result(tmp_path, 4, 900.0), _result(tmp_path, 1, 500.0, zero=2)]
    paths += [_result(tmp_path, 2, 600.0, micro_batch=16), _result(tmp_path, 4, 660.0, micro_batch=16)]
    rows, table = train_multigpu_7b.summarize(paths, target_gpus=8)
    by_name = {row["file"]: row for row in rows}
    assert by_name["zero3-4-mb8.json"]["scaling_efficiency"] == 0.9
    assert by_name["zero3-2-mb8.json"]["scaling_efficiency"] == 1.0
    assert by_name["zero3-4-mb16.json"]["scaling_efficiency"] == 1.1  # its own series: micro-batch 16
    # 4 -> 8 GPUs loses what 2 -> 4 lost: 900 * 0.9 per GPU; one epoch = 665K samples x 720 tokens
    projected = by_name["zero3-4-mb8.json"]["projected"]
    assert projected["useful_tokens_per_s_per_gpu"] == pytest.approx(810.0)
    assert projected["epoch_hours"] == pytest.approx(665_000 * 720 / (810 * 8) / 3600, abs=0.01)
    # a doubling that gained is not extrapolated into more gains
    assert by_name["zero3-4-mb16.json"]["projected"]["useful_tokens_per_s_per_gpu"] == pytest.approx(660.0)
    assert "projected" not in by_name["zero2-1-mb8.json"]  # one run: nothing to extrapolate from
    assert "| 2 | 3 | 4 | 32 | 128 (8 x 4 x 4) | 900 |" in table
    # a padded run of the same shape is its own series, and two runs at one GPU count project nothing odd
    padded = tmp_path / "padded-4.json"
    slower = {"packed": False, "useful_tokens_per_s_per_gpu": 1.0}
    padded.write_text(json.dumps(json.loads(paths[1].read_text()) | slower))
    again = tmp_path / "again-4.json"
    again.write_text(paths[1].read_text())
    rows, _ = train_multigpu_7b.summarize([*paths, padded, again], target_gpus=8)
    assert {row["file"]: row["scaling_efficiency"] for row in rows}["padded-4.json"] == 1.0
    (projected,) = [row["projected"] for row in rows if row["file"] in ("again-4.json", "zero3-4-mb8.json")
                    and "projected" in row]  # fmt: skip
    assert projected["useful_tokens_per_s_per_gpu"] == pytest.approx(810.0)
