"""The benchmark scripts (scripts/sharegpt4v/eval/*.sh): every one parses; pope.sh runs end to end on the tiny
checkpoint over a 3-question fixture in POPE's real layout under a temporary EVAL_ROOT, sharded over two fake "GPUs"
and merged to the same answers, in the same order, as one chunk; missing data and failed chunks stop the script with
a message saying what to do."""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from share4v.eval import report
from share4v.eval.scores import read_scores
from tests.helpers import random_image

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts" / "sharegpt4v" / "eval"
BENCHMARKS = ["vqav2", "gqa", "vizwiz", "textvqa", "sqa", "mme", "mmbench_en", "mmbench_cn", "seed", "llavabench",
              "mmvet", "qbench", "pope"]  # fmt: skip
# A greedy answer of the tiny model is a few random tokens; 6 are enough to tell answers apart, and quick.
FAST = "--max_new_tokens 6 --num-workers 0 --device cpu"


def run_script(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPTS / name), *args], env=environment, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def pope_root(tmp_path) -> Path:
    """EVAL_ROOT with pope/{llava_pope_test.jsonl, coco/coco_pope_<category>.json, val2014/*.jpg}: 3 questions."""
    pope = tmp_path / "eval" / "pope"
    (pope / "coco").mkdir(parents=True)
    (pope / "val2014").mkdir()
    categories = ["adversarial", "popular", "random"]
    questions = []
    for index, (category, label) in enumerate(zip(categories, ["yes", "no", "yes"], strict=True), start=1):
        image = f"COCO_val2014_{index:012d}.jpg"
        random_image(index).save(pope / "val2014" / image)
        question = {"question_id": index, "image": image, "text": f"Is there a thing {index} in the image?"}
        questions.append({**question, "category": category})
        (pope / "coco" / f"coco_pope_{category}.json").write_text(json.dumps({**question, "label": label}) + "\n")
    (pope / "llava_pope_test.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return tmp_path / "eval"


@pytest.mark.parametrize("name", [*BENCHMARKS, "lib"])
def test_every_script_parses(name):
    result = subprocess.run(["bash", "-n", str(SCRIPTS / f"{name}.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_scripts_are_the_benchmarks_and_pass_shellcheck():
    assert sorted(path.stem for path in SCRIPTS.glob("*.sh")) == sorted([*BENCHMARKS, "lib"])
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(["shellcheck", "-x", *sorted(str(p.relative_to(REPO)) for p in SCRIPTS.glob("*.sh"))],
                            cwd=REPO, capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_pope_end_to_end_two_gpus_merge_to_the_answers_of_one(tiny_ckpt, pope_root):
    pope = pope_root / "pope"
    ckpt, ckpt_dir = tiny_ckpt.name, str(tiny_ckpt.parent)
    two = run_script("pope.sh", ckpt, ckpt_dir, CUDA_VISIBLE_DEVICES="0,1", EVAL_ROOT=str(pope_root), EVAL_ARGS=FAST)
    assert two.returncode == 0, two.stderr[-3000:]
    chunks = pope / "answers" / ckpt
    assert [row["question_id"] for row in lines(chunks / "2_0.jsonl")] == [1, 2]  # contiguous ceil(3 / 2) chunks
    assert [row["question_id"] for row in lines(chunks / "2_1.jsonl")] == [3]
    merged_two = lines(pope / "answers" / f"{ckpt}.jsonl")

    one = run_script("pope.sh", ckpt, ckpt_dir, CUDA_VISIBLE_DEVICES="0", EVAL_ROOT=str(pope_root), EVAL_ARGS=FAST)
    assert one.returncode == 0, one.stderr[-3000:]
    merged_one = lines(pope / "answers" / f"{ckpt}.jsonl")
    assert [row["question_id"] for row in merged_one] == [1, 2, 3]
    assert [(row["question_id"], row["text"]) for row in merged_two] == [
        (row["question_id"], row["text"]) for row in merged_one
    ]
    assert all(row["model_id"] == ckpt and row["prompt"].startswith("<image>\n") for row in merged_two)

    scores = read_scores(pope_root / "scores" / ckpt / "pope.json")  # the scorer's file, where the report looks
    assert scores["benchmark"] == "pope" and 0 <= scores["scores"]["f1"] <= 100
    assert "Category: random" in one.stdout
    card = report.build_report(report.find_score_files(pope_root / "scores"))
    [row] = card["rows"]
    assert row["checkpoint"] == ckpt and row["scores"]["pope"] == scores["scores"]["f1"]


def test_missing_data_stops_with_one_line_saying_what_to_download(tmp_path):
    (tmp_path / "ckpts" / "tiny").mkdir(parents=True)
    result = run_script("pope.sh", "tiny", str(tmp_path / "ckpts"), EVAL_ROOT=str(tmp_path / "empty"))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: ") and "llava_pope_test.jsonl not found" in line and "docs/Evaluation.md" in line
    (tmp_path / "empty" / "textvqa").mkdir(parents=True)
    (tmp_path / "empty" / "textvqa" / "share4v_textvqa_val_v051_ocr.jsonl").write_text("")
    result = run_script("textvqa.sh", "tiny", str(tmp_path / "ckpts"), EVAL_ROOT=str(tmp_path / "empty"))
    assert result.returncode == 2 and "TextVQA_0.5.1_val.json not found: download" in result.stderr


def test_a_missing_local_checkpoint_and_bad_arguments_are_one_line(tmp_path):
    result = run_script("pope.sh", "no-such-ckpt", str(tmp_path), EVAL_ROOT=str(tmp_path))
    assert result.returncode == 2 and f"no checkpoint at {tmp_path}/no-such-ckpt" in result.stderr
    result = run_script("pope.sh", "a", str(tmp_path), "extra")
    assert result.returncode == 2 and "usage: bash scripts/sharegpt4v/eval/pope.sh" in result.stderr
    result = run_script("pope.sh", "a", str(tmp_path), BATCH_SIZE="0")
    assert result.returncode == 2 and "BATCH_SIZE must be a positive integer" in result.stderr


def test_a_failed_chunk_fails_the_script_and_shows_its_log(pope_root, tmp_path):
    """A stand-in interpreter answers chunk 0 and fails on chunk 1: nothing is merged or scored."""
    fake = tmp_path / "fake-python"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        "while (( $# )); do case $1 in --answers-file) out=$2;; --chunk-idx) idx=$2;; esac; shift; done\n"
        'if [[ $idx == 1 ]]; then echo "CUDA out of memory on chunk 1" >&2; exit 3; fi\n'
        'echo \'{"question_id": 1, "text": "yes"}\' >> "$out"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "ckpts" / "fake").mkdir(parents=True)
    result = run_script("pope.sh", "fake", str(tmp_path / "ckpts"), CUDA_VISIBLE_DEVICES="4,5",
                        EVAL_ROOT=str(pope_root), PYTHON=str(fake))  # fmt: skip
    assert result.returncode == 1
    assert "chunk 1 (GPU 5) failed" in result.stderr and "CUDA out of memory on chunk 1" in result.stderr
    assert not (pope_root / "pope" / "answers" / "fake.jsonl").exists()
    assert not (pope_root / "scores").exists()
