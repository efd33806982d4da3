"""benchmarks/bench_eval.py runs model_vqa_loader end to end at a tiny shape on the CPU: both batch sizes answer
every question, greedy answers agree, and its inputs are what the driver reads."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_eval  # noqa: E402

from share4v.eval import model_vqa_loader  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    work = tmp_path_factory.mktemp("work")
    results = bench_eval.main(["--smoke", "--out", str(out), "--work-dir", str(work)])
    return results, out, work


def test_smoke_run_answers_every_question_at_both_batch_sizes(smoke):
    results, out, _ = smoke
    (path,) = out.glob("*-cpu-eval.json")
    written = json.loads(path.read_text())
    assert written == json.loads(json.dumps(results))
    assert {"speedup", "answers_equal_fraction", "checkpoint_write_s", "load_s", "environment", "runs"} <= set(written)
    assert set(written["environment"]) >= {"device", "torch", "transformers"}
    assert written["batch_sizes"] == [1, 16] and set(written["runs"]) == {"1", "16"}
    for run in written["runs"].values():
        assert run["questions"] == written["questions"] == 20 and run["questions_per_s"] > 0
        assert run["answer_tokens_mean"] == written["max_new_tokens"] == 8  # random weights: no end of sequence
        assert run["empty_answers"] == 0  # the tokenizer decodes every id the model can write
        assert run["graphs_compiled"] == 0
    assert written["runs"]["16"]["warmup"]["questions"] == 16 + 4  # a full batch and the last partial one
    assert written["answers_compared"] == 20 and written["answers_equal_fraction"] == 1.0  # fp32: the same answers
    assert written["first_token_equal_fraction"] == 1.0 and written["common_prefix_tokens_mean"] == 8
    assert written["speedup"] > 0


def test_questions_are_what_the_driver_reads(smoke):
    _, _, work = smoke
    bench = work / "vqa"
    questions, problems = model_vqa_loader.read_questions(bench / "questions.jsonl", bench / "images", strict=True)
    assert problems == [] and len(questions) == 20
    assert len({q.question_id for q in questions}) == 20 and len({q.images for q in questions}) == 5
    for question in questions:
        assert question.prompt.startswith("<image>\n") and question.prompt.endswith(bench_eval.SUFFIX)
        assert Path(question.images[0]).is_file()
    checkpoint = work / "share4v-tiny-random"
    config = json.loads((checkpoint / "config.json").read_text())
    assert config["model_type"] == "share4v" and config["mm_vision_tower"] == "vision_tower"
    assert (checkpoint / "tokenizer.model").is_file() and (checkpoint / "vision_tower" / "config.json").is_file()


def test_compare_counts_equal_texts_first_tokens_and_common_prefixes():
    single = {"1": ("a b", [5, 6]), "2": ("c d", [7, 8]), "3": ("e", [9])}
    batched = {"1": ("a b", [5, 6]), "2": ("c x", [7, 4]), "3": ("f", [3])}
    assert bench_eval.compare(single, batched) == {
        "answers_compared": 3, "answers_equal": 1, "answers_equal_fraction": 0.3333,
        "first_token_equal_fraction": 0.6667, "common_prefix_tokens_mean": 1.0,
    }  # fmt: skip


def test_warmup_covers_a_full_batch_and_the_last_partial_one():
    assert bench_eval.warmup_count(500, 16) == 16 + 4
    assert bench_eval.warmup_count(32, 16) == 16
    assert bench_eval.warmup_count(10, 16) == 10
    assert bench_eval.warmup_count(500, 1) == 2 and bench_eval.warmup_count(1, 1) == 1
