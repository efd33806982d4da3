"""benchmarks/bench_train.py runs end to end at a tiny shape on the CPU, and its two models compute one loss."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_train  # noqa: E402


def test_tiny_run_writes_results_with_equal_losses(tmp_path):
    results = bench_train.main(
        ["--tiny", "--micro-batch", "3", "--warmup", "1", "--steps", "1", "--max-length", "200", "--out", str(tmp_path)]
    )
    (out,) = tmp_path.glob("*-train.json")  # a folder gets DATE-GPU-train.json, like the other benchmarks
    written = json.loads(out.read_text())
    assert written["train_speedup"] == results["train_speedup"] > 0
    assert 0 < written["padding_fraction"] < 1  # of the timed batches, right-padded
    assert written["equality"]["equal"] and written["equality"]["max_relative_difference"] < 1e-4
    assert len(written["share4v"]["losses"]) == len(written["baseline"]["losses"]) == 2
    # same samples, same initial weights, same optimizer: the two runs train alike, step after step
    for ours, theirs in zip(written["share4v"]["losses"], written["baseline"]["losses"], strict=True):
        assert abs(ours - theirs) < 1e-3 * abs(theirs)


def test_compiled_layers_build_with_the_benchmarks_flags(tmp_path):
    """The compiled model (the trainer's default on a GPU): the trainer's step settings read every flag they need
    from the bench's namespace; on the CPU the default leaves the layers eager."""
    tower = tmp_path / "tower"
    bench_train.save_tower(bench_train.TINY, tower, "cpu")
    model = bench_train.build_share4v(bench_train.TINY, tower, "cpu", compile_layers=True)
    assert all(layer._compiled_call_impl is not None for layer in model.get_model().layers)
    default = bench_train.build_share4v(bench_train.TINY, tower, "cpu")
    assert all(layer._compiled_call_impl is None for layer in default.get_model().layers)
    assert model.fused_cross_entropy


def test_llava_batch_expands_each_image_to_its_patches():
    shape = bench_train.TINY
    samples = bench_train.make_samples(4, shape, max_length=300, seed=3)
    ours = bench_train.share4v_batch(samples, shape, "cpu")
    theirs = bench_train.llava_batch(samples, shape, "cpu")
    for row, sample in enumerate(samples):
        assert int(theirs["attention_mask"][row].sum()) == bench_train.merged_length(sample, shape)
        assert int(ours["attention_mask"][row].sum()) == len(sample.tokens)
    assert int((theirs["labels"] != -100).sum()) == int((ours["labels"] != -100).sum())


def test_the_mix_pads_about_a_third_of_a_batch_with_long_text_only_rows():
    shape = bench_train.Shape()  # lengths only, with the 576 patches of an image at 336 pixels
    samples = bench_train.make_samples(4000, shape, max_length=2048, seed=1)
    lengths = [bench_train.merged_length(sample, shape) for sample in samples]
    text_only = [length for length, sample in zip(lengths, samples, strict=True) if not sample.has_image]
    with_image = [length for length, sample in zip(lengths, samples, strict=True) if sample.has_image]
    assert 0.04 < len(text_only) / len(samples) < 0.08  # LLaVA-665K's share of ShareGPT conversations: 6%
    # the ShareGPT rows are the long ones, image and all
    assert sum(text_only) / len(text_only) > 1.5 * sum(with_image) / len(with_image)
    assert max(lengths) == 2048
    batches = [lengths[i : i + 8] for i in range(0, len(lengths), 8)]
    padding = 1 - sum(lengths) / sum(max(batch) * len(batch) for batch in batches)
    assert 0.28 < padding < 0.38  # the anchor mix pads 36%
