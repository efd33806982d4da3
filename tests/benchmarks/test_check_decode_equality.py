"""benchmarks/check_decode_equality.py runs end to end at a tiny shape on the CPU: the forced path follows the given
tokens, and the comparison it reports catches logits that differ."""

import json
import sys
from pathlib import Path

import torch
from transformers import LlamaConfig, StaticCache

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import check_decode_equality  # noqa: E402


def test_smoke_run_compares_fast_eager_and_fp32(tmp_path):
    results = check_decode_equality.main(["--smoke", "--rows", "3", "--fp32-rows", "2", "--out", str(tmp_path)])
    (out,) = tmp_path.glob("*-cpu-decode-equality.json")
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    forced = results["teacher_forced"]
    assert forced["positions"] == 3 * results["new_tokens"] and list(forced["fast_path_static_cache"]) == [3, 256]
    for pair in ("fast_vs_eager", "eager_vs_fp32", "fast_vs_fp32"):  # fp32 on the CPU, compiled as eager graphs
        assert forced[pair]["top1_agreement"] == 1.0 and forced[pair]["max_abs_logit_difference"] < 1e-4
    assert results["free_running"]["rows_equal"] == 2 and results["free_running"]["common_prefix"] == [8, 8]
    # the pass writing its keys and values into an allocated cache itself writes what the cache's `update` writes
    assert results["prompt_pass"]["cache_equal_to_one_group_update"] is True


def test_the_cache_digest_sees_a_changed_or_moved_value():
    cache = StaticCache(config=LlamaConfig(num_hidden_layers=1, num_attention_heads=2, hidden_size=8), max_cache_len=4)
    keys = torch.randn(2, 2, 3, 4)
    cache.update(keys, keys + 1, 0)
    digest = check_decode_equality.cache_digest(cache, 3, rows_at_once=1)
    assert check_decode_equality.cache_digest(cache, 3) == digest  # the same however many rows at once
    cache.layers[0].values[1, 0, 2, 3] += 1  # one value changed
    assert check_decode_equality.cache_digest(cache, 3) != digest
    cache.layers[0].values[1, 0, 2, 3] -= 1
    cache.layers[0].keys[[0, 1]] = cache.layers[0].keys[[1, 0]].clone()  # two rows swapped: the same bytes, moved
    assert check_decode_equality.cache_digest(cache, 3) != digest


def test_the_fp8_option_feeds_the_engines_loop_the_same_tokens(tmp_path):
    results = check_decode_equality.main(["--smoke", "--rows", "3", "--fp32-rows", "1", "--kv-cache-dtype", "fp8"])
    forced = results["teacher_forced"]
    # the loop over its default cache, teacher-forced, computes the eager path's fp32 logits: the forcing is right
    assert forced["loop_vs_fp32"]["top1_agreement"] == 1.0 and forced["loop_vs_fp32"]["max_abs_logit_difference"] < 1e-4
    rounded = forced["loop_fp8_kv_vs_fp32"]  # keys and values rounded to e4m3: close, not equal
    assert 1e-4 < rounded["max_abs_logit_difference"] < forced["logit_std"]


def test_force_tokens_picks_the_given_token_at_each_step():
    force = check_decode_equality.ForceTokens(torch.tensor([[4, 1], [0, 2]]))
    scores = torch.randn(2, 5)
    assert force(None, scores).argmax(-1).tolist() == [4, 0]
    assert force(None, scores).argmax(-1).tolist() == [1, 2]


def test_agreement_counts_top1_flips_and_differences():
    reference = torch.tensor([[[0.0, 1.0, 0.5], [2.0, 0.0, 0.0]]])
    moved = reference.clone()
    moved[0, 1, 1] = 2.5  # the second position's first choice changes
    got = check_decode_equality.agreement(moved, reference)
    assert got == {"top1_agreement": 0.5, "max_abs_logit_difference": 2.5, "mean_abs_logit_difference": 0.41667}
