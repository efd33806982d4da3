"""The benchmark scripts (scripts/sharegpt4v/eval/*.sh): every one parses; pope.sh runs end to end on the tiny
checkpoint over a 3-question fixture in POPE's real layout under a temporary EVAL_ROOT, sharded over two fake "GPUs"
and merged to the same answers, in the same order, as one chunk; missing data and failed chunks stop the script with
a message saying what to do. Every other benchmark script runs end to end the same way below, through its converter
and scorer to the official file layouts and the score file (the GPT-judged ones against a local fake judge)."""

import base64
import csv
import io
import json
import math
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from share4v.eval import eval_gpt_review_bench, eval_mmvet, report
from share4v.eval.metrics import MMBENCH_INDEX_MODULUS, match_option, vqa_normalize
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
    questions = {row["question_id"]: row["text"] for row in lines(pope / "llava_pope_test.jsonl")}
    assert all(row["model_id"] == ckpt and row["prompt"] == questions[row["question_id"]] for row in merged_two)

    scores = read_scores(pope_root / "scores" / ckpt / "pope.json")  # the scorer's file, where the report looks
    assert scores["benchmark"] == "pope" and 0 <= scores["scores"]["f1"] <= 100
    assert "Category: random" in one.stdout
    card = report.build_report(report.find_score_files(pope_root / "scores"))
    [row] = card["rows"]
    assert row["checkpoint"] == ckpt and row["scores"]["pope"] == scores["scores"]["f1"]
    # how the answers were made, from the answer file's metadata (pope.sh: the paper's template, greedy, batch 1)
    made = row["provenance"]
    assert (made["template"], made["temperature"], made["max_new_tokens"]) == (["vicuna_v1"], ["0.0"], ["6"])


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


# ---------------------------------------------------------------- the other locally scored benchmarks, end to end
# Each test below writes a 3-4 question fixture in the benchmark's real layout under a temporary EVAL_ROOT, runs the
# script on the tiny checkpoint sharded over two fake "GPUs", and checks the merge, the converter's official output
# and the score file. SHORT and LETTER are the instructions the playground's question files end with.
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."
UNANSWERABLE = "\nWhen the provided information is insufficient, respond with 'Unanswerable'." + SHORT  # VizWiz


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def save_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    random_image(seed).save(path)


def run_benchmark(script: str, eval_root: Path, tiny_ckpt: Path, **env: str) -> subprocess.CompletedProcess:
    """The script on the tiny checkpoint over two fake GPUs; it must succeed."""
    done = run_script(script, tiny_ckpt.name, str(tiny_ckpt.parent), CUDA_VISIBLE_DEVICES="0,1",
                      EVAL_ROOT=str(eval_root), EVAL_ARGS=FAST, **env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def headline(eval_root: Path, ckpt: str, benchmark: str) -> float:
    """The paper's metric from the score file the report reads, checked to be a percentage."""
    scores = read_scores(eval_root / "scores" / ckpt / f"{benchmark}.json")
    assert scores["benchmark"] == benchmark
    value = scores["scores"][report_metric(benchmark)]
    assert 0 <= value <= 100
    return value


def report_metric(benchmark: str) -> str:
    from share4v.eval.scores import BENCHMARKS as COLUMNS

    return COLUMNS[benchmark][1]


def test_textvqa_end_to_end(tiny_ckpt, tmp_path):
    """textvqa/{share4v_textvqa_val_v051_ocr.jsonl, TextVQA_0.5.1_val.json, train_images/}: 3 questions, two of them
    on one image (question_id is the image id, as in the playground's file)."""
    root = tmp_path / "eval"
    data = root / "textvqa"
    asked = [("0054c91397f2fe05", "what brand is the camera?", "dakota, digital"),
             ("0054c91397f2fe05", "what does the sign say?", "stop"),
             ("00685bc495504d61", "what number is on the jersey?", "23")]  # fmt: skip
    for seed, image_id in enumerate(sorted({image_id for image_id, _, _ in asked}), start=1):
        save_image(data / "train_images" / f"{image_id}.jpg", seed)
    write_lines(data / "share4v_textvqa_val_v051_ocr.jsonl", [
        {"question_id": image_id, "image": f"{image_id}.jpg", "text": f"{question}\nReference OCR token: {ocr}{SHORT}"}
        for image_id, question, ocr in asked
    ])  # fmt: skip
    annotations = [
        {"question": question, "image_id": image_id, "image_classes": ["Camera"], "image_width": 70,
         "image_height": 40, "answers": [ocr.split(",")[0]] * 10, "question_tokens": question.split(),
         "question_id": 34600 + number, "set_name": "val"}
        for number, (image_id, question, ocr) in enumerate(asked)
    ]  # fmt: skip
    (data / "TextVQA_0.5.1_val.json").write_text(json.dumps(
        {"dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1", "data": annotations}
    ))  # fmt: skip

    run_benchmark("textvqa.sh", root, tiny_ckpt)
    merged = lines(data / "answers" / tiny_ckpt.name / "merge.jsonl")
    assert sorted((row["question_id"], row["prompt"].split("\n")[0]) for row in merged) == sorted(
        (image_id, question) for image_id, question, _ in asked
    )
    assert headline(root, tiny_ckpt.name, "textvqa") >= 0
    assert read_scores(root / "scores" / tiny_ckpt.name / "textvqa.json")["scores"]["count"] == 3


def test_sqa_end_to_end(tiny_ckpt, tmp_path):
    """scienceqa/{share4v_test_CQM-A.json, problems.json, pid_splits.json, images/test/<pid>/image.png}: 3 test
    problems, one without an image (asked as text only); a train problem that the test split leaves out."""
    root = tmp_path / "eval"
    data = root / "scienceqa"
    problems = {
        "4": {"question": "Which animal is shown?", "choices": ["cat", "dog"], "answer": 1, "image": "image.png"},
        "7": {"question": "Which color is the sky?", "choices": ["red", "blue", "green"], "answer": 1, "image": None},
        "12": {"question": "Which shape is this?", "choices": ["circle", "square"], "answer": 0, "image": "image.png"},
        "20": {"question": "Which is a fruit?", "choices": ["apple", "stone"], "answer": 0, "image": None},
    }
    for pid, problem in problems.items():
        problem.update({"hint": "", "task": "closed choice", "grade": "grade2", "subject": "natural science",
                        "topic": "biology", "category": "Animals", "skill": "Identify", "lecture": "",
                        "solution": "", "split": "train" if pid == "20" else "test"})  # fmt: skip
    (data / "images" / "test").mkdir(parents=True)
    entries = []
    for seed, pid in enumerate(["4", "7", "12"], start=1):
        problem = problems[pid]
        options = " ".join(f"({chr(65 + i)}) {choice}" for i, choice in enumerate(problem["choices"]))
        value = f"Context: N/A\nQuestion: {problem['question']}\nOptions: {options}"
        reply = f"The answer is {chr(65 + problem['answer'])}."
        entry = {"id": pid, "conversations": [{"from": "human", "value": value}, {"from": "gpt", "value": reply}]}
        if problem["image"]:
            save_image(data / "images" / "test" / pid / "image.png", seed)
            entry["image"] = f"{pid}/image.png"
            entry["conversations"][0]["value"] = "<image>\n" + value
        entries.append(entry)
    (data / "share4v_test_CQM-A.json").write_text(json.dumps(entries))
    (data / "problems.json").write_text(json.dumps(problems))
    (data / "pid_splits.json").write_text(json.dumps({"train": ["20"], "val": [], "test": ["4", "7", "12"]}))

    run_benchmark("sqa.sh", root, tiny_ckpt)
    answers = data / "answers" / tiny_ckpt.name
    merged = lines(answers / "merge.jsonl")
    assert sorted(row["question_id"] for row in merged) == ["12", "4", "7"]
    assert [row["prompt"].startswith("<image>\n") for row in merged] == [True, False, True]
    assert all(row["prompt"].endswith(LETTER) for row in merged)
    assert sorted(json.loads((answers / "output.jsonl").read_text())) == ["12", "4", "7"]
    result = json.loads((answers / "result.json").read_text())
    assert result["count"] == 3 and result["img_count"] == 2
    assert headline(root, tiny_ckpt.name, "sqa") >= 0


def test_gqa_end_to_end(tiny_ckpt, tmp_path):
    """gqa/{share4v_gqa_testdev_balanced.jsonl, images/, data/testdev_balanced_questions.json}: 3 questions; the
    predictions land where GQA's own eval.py reads them."""
    root = tmp_path / "eval"
    data = root / "gqa"
    asked = [("20968379", "n288870", "Do the shorts have dark color?", "yes"),
             ("20968380", "n288870", "What color is the ball?", "white"),
             ("201497891", "n161313", "Is the man on the left?", "no")]  # fmt: skip
    for seed, image_id in enumerate(sorted({image_id for _, image_id, _, _ in asked}), start=1):
        save_image(data / "images" / f"{image_id}.jpg", seed)
    write_lines(data / "share4v_gqa_testdev_balanced.jsonl", [
        {"question_id": qid, "image": f"{image_id}.jpg", "text": question + SHORT, "category": "default"}
        for qid, image_id, question, _ in asked
    ])  # fmt: skip
    (data / "data").mkdir()
    (data / "data" / "testdev_balanced_questions.json").write_text(json.dumps({
        qid: {"semantic": [], "entailed": [], "equivalent": [qid], "question": question, "imageId": image_id,
              "isBalanced": True, "groups": {"global": None, "local": "10c-color"}, "answer": answer,
              "semanticStr": "", "annotations": {"answer": {}, "question": {}, "fullAnswer": {}},
              "types": {"detailed": "verifyAttr", "semantic": "attr", "structural": "verify"},
              "fullAnswer": f"The answer is {answer}."}
        for qid, image_id, question, answer in asked
    }))  # fmt: skip

    run_benchmark("gqa.sh", root, tiny_ckpt)
    merged = lines(data / "answers" / "share4v_gqa_testdev_balanced" / tiny_ckpt.name / "merge.jsonl")
    assert sorted(row["question_id"] for row in merged) == sorted(qid for qid, *_ in asked)
    predictions = json.loads((data / "data" / "testdev_balanced_predictions.json").read_text())
    assert isinstance(predictions, list) and all(set(row) == {"questionId", "prediction"} for row in predictions)
    assert sorted(row["questionId"] for row in predictions) == sorted(qid for qid, *_ in asked)
    assert headline(root, tiny_ckpt.name, "gqa") >= 0
    assert read_scores(root / "scores" / tiny_ckpt.name / "gqa.json")["scores"]["missing"] == 0


def test_mme_end_to_end(tiny_ckpt, tmp_path):
    """MME/{share4v_mme.jsonl, MME_Benchmark_release/}: two images of two questions each, one category with its
    questions beside the images (existence), one with images/ and questions_answers_YN/ (artwork)."""
    root = tmp_path / "eval"
    data = root / "MME"
    bench = data / "MME_Benchmark_release"
    save_image(bench / "existence" / "000000006040.jpg", 1)
    (bench / "existence" / "000000006040.txt").write_text(
        "Is there a train in this image? Please answer yes or no.\tYes\n"
        "Is there a bed in this image? Please answer yes or no.\tNo\n"
    )
    save_image(bench / "artwork" / "images" / "10002.jpg", 2)
    (bench / "artwork" / "questions_answers_YN").mkdir()
    (bench / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork created by Renoir? Please answer yes or no.\tYes\n"
        "Is this artwork created by Monet? Please answer yes or no.\tNo\n"
    )
    questions = []
    for image, category in (("existence/000000006040.jpg", "existence"), ("artwork/images/10002.jpg", "artwork")):
        qa_file = (
            bench / category / ("questions_answers_YN" if category == "artwork" else "") / f"{Path(image).stem}.txt"
        )
        for line in qa_file.read_text().splitlines():
            questions.append({"question_id": image, "image": image, "text": line.split("\t")[0] + SHORT,
                              "category": category})  # fmt: skip
    write_lines(data / "share4v_mme.jsonl", questions)

    run_benchmark("mme.sh", root, tiny_ckpt)
    merged = lines(data / "answers" / f"{tiny_ckpt.name}.jsonl")
    assert sorted((row["question_id"], row["prompt"]) for row in merged) == sorted(
        (q["question_id"], q["text"])
        for q in questions  # the question's text, as the original
    )
    results = data / "eval_tool" / "answers" / tiny_ckpt.name
    assert sorted(p.name for p in results.iterdir()) == ["artwork.txt", "existence.txt"]
    for category, image in (("existence", "000000006040.jpg"), ("artwork", "10002.jpg")):
        rows = [line.split("\t") for line in (results / f"{category}.txt").read_text().splitlines()]
        assert [(row[0], row[2]) for row in rows] == [(image, "Yes"), (image, "No")]  # the image's pair, adjacent
        assert all(len(row) == 4 and row[1].endswith("Please answer yes or no.") for row in rows)
    scores = read_scores(root / "scores" / tiny_ckpt.name / "mme.json")
    assert scores["benchmark"] == "mme"
    values = scores["scores"]
    assert 0 <= values["existence"] <= 200 and 0 <= values["artwork"] <= 200  # acc + acc+, in percent
    assert values["perception"] == pytest.approx(values["existence"] + values["artwork"])
    assert values["cognition"] == 0


def test_seed_end_to_end(tiny_ckpt, tmp_path):
    """seed_bench/{share4v-seed-bench-image.jsonl, SEED-Bench.json, SEED-Bench-image/}: 3 image questions (the
    annotation also has a video question, which an image-only run leaves out of the upload)."""
    root = tmp_path / "eval"
    data = root / "seed_bench"
    types = {"Scene Understanding": 1, "Instance Identity": 2, "Instances Counting": 5, "Action Recognition": 10}
    asked = [("101669", 1, "A", "1454426_2591111986.jpg"), ("101670", 2, "C", "1454426_2591111987.jpg"),
             ("101671", 5, "B", "1454426_2591111986.jpg")]  # fmt: skip
    for seed, image in enumerate(sorted({image for *_, image in asked}), start=1):
        save_image(data / "SEED-Bench-image" / image, seed)
    choices = {"choice_a": "One", "choice_b": "Two", "choice_c": "Three", "choice_d": "Four"}
    annotation = [{"answer": answer, **choices, "data_id": image, "data_type": "image", "question": "How many?",
                   "question_id": qid, "question_type_id": type_id}
                  for qid, type_id, answer, image in asked]  # fmt: skip
    annotation.append({"answer": "A", **choices, "data_id": "v_1.mp4", "data_type": "video", "question": "What?",
                       "question_id": "v1", "question_type_id": 10, "segment": [0, 1]})  # fmt: skip
    (data / "SEED-Bench.json").write_text(json.dumps({"question_type": types, "questions": annotation}))
    write_lines(data / "share4v-seed-bench-image.jsonl", [
        {"question_id": qid, "image": f"SEED-Bench-image/{image}", "category": "image",
         "text": "How many?\nA. One\nB. Two\nC. Three\nD. Four" + LETTER}
        for qid, _, _, image in asked
    ])  # fmt: skip

    run_benchmark("seed.sh", root, tiny_ckpt)
    merged = lines(data / "answers" / tiny_ckpt.name / "merge.jsonl")
    assert sorted(row["question_id"] for row in merged) == [qid for qid, *_ in asked]
    upload = lines(data / "answers_upload" / f"{tiny_ckpt.name}.jsonl")
    assert [row["question_id"] for row in upload] == [qid for qid, *_ in asked]
    assert all(set(row) == {"question_id", "prediction"} for row in upload)
    assert headline(root, tiny_ckpt.name, "seed") >= 0


def test_vqav2_end_to_end(tiny_ckpt, tmp_path):
    """vqav2/{share4v_vqav2_mscoco_test-dev2015.jsonl, llava_vqav2_mscoco_test2015.jsonl, test2015/}: 3 test-dev
    questions; the upload covers all 4 test2015 questions (the one outside test-dev with an empty answer). VQAv2 is
    scored by EvalAI only, so no score file is written."""
    root = tmp_path / "eval"
    data = root / "vqav2"
    split = "share4v_vqav2_mscoco_test-dev2015"
    dev = [{"question_id": 262144000 + n, "image": f"COCO_test2015_{262144 + n:012d}.jpg",
            "text": f"Is there a ball number {n}?" + SHORT, "category": "default"} for n in range(3)]  # fmt: skip
    for seed, question in enumerate(dev, start=1):
        save_image(data / "test2015" / question["image"], seed)
    write_lines(data / f"{split}.jsonl", dev)
    other = {"question_id": 393225000, "image": "COCO_test2015_000000393225.jpg", "text": "What?" + SHORT,
             "category": "default"}  # fmt: skip
    write_lines(data / "llava_vqav2_mscoco_test2015.jsonl", [*dev, other])

    done = run_benchmark("vqav2.sh", root, tiny_ckpt)
    merged = lines(data / "answers" / split / tiny_ckpt.name / "merge.jsonl")
    assert sorted(row["question_id"] for row in merged) == [q["question_id"] for q in dev]
    upload = json.loads((data / "answers_upload" / split / f"{tiny_ckpt.name}.json").read_text())
    assert [row["question_id"] for row in upload] == [q["question_id"] for q in [*dev, other]]
    assert all(set(row) == {"question_id", "answer"} and isinstance(row["answer"], str) for row in upload)
    assert upload[-1]["answer"] == ""
    assert "EvalAI" in done.stderr and not (root / "scores").exists()


def test_vizwiz_end_to_end(tiny_ckpt, tmp_path):
    """vizwiz/{share4v_test.jsonl, test/}: 3 test questions; the EvalAI upload has one normalised answer per question,
    keyed by image, in the question file's order. VizWiz test is scored by EvalAI only (the script has no val split),
    so no score file is written."""
    root = tmp_path / "eval"
    data = root / "vizwiz"
    asked = ["What is this?", "What color is this shirt?", "Can you read the label on this can?"]
    questions = [{"question_id": number, "image": f"VizWiz_test_{number:08d}.jpg", "text": question + UNANSWERABLE}
                 for number, question in enumerate(asked)]  # fmt: skip
    for seed, question in enumerate(questions, start=1):
        save_image(data / "test" / question["image"], seed)
    write_lines(data / "share4v_test.jsonl", questions)

    done = run_benchmark("vizwiz.sh", root, tiny_ckpt)
    ckpt = tiny_ckpt.name
    assert sorted(path.name for path in (data / "answers" / ckpt).glob("2_?.jsonl")) == ["2_0.jsonl", "2_1.jsonl"]
    merged = lines(data / "answers" / f"{ckpt}.jsonl")
    assert [(row["question_id"], row["prompt"]) for row in merged] == [
        (q["question_id"], q["text"])
        for q in questions  # the question's text, as the original
    ]
    answers = {row["question_id"]: row["text"] for row in merged}
    upload = json.loads((data / "answers_upload" / f"{ckpt}.json").read_text())
    assert upload == [{"image": q["image"], "answer": vqa_normalize(answers[q["question_id"]])} for q in questions]
    assert "EvalAI" in done.stderr and not (root / "scores").exists()


# MMBench's dev TSV as OpenMMLab publishes it: images as base64 JPEG, options A-D (empty cells where a question has
# fewer), and circular copies of a question (options rotated, its answer letter moved with them) at index + 1e6,
# whose image cell names the row whose image they share.
MMBENCH_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                   "l2-category", "comment", "split"]  # fmt: skip
MMBENCH_QUESTIONS = {
    "en": [(0, "What animal is shown?", "", ["cat", "dog", "bird", "fish"], "B"),
           (1000000, "What animal is shown?", "", ["dog", "bird", "fish", "cat"], "A"),
           (1, "Is the photo taken outdoors?", "Look at the sky.", ["yes", "no", "", ""], "A"),
           (2, "Which color dominates?", "", ["red", "blue", "green", ""], "C")],
    "cn": [(0, "图中是什么动物？", "", ["猫", "狗", "鸟", "鱼"], "B"),
           (1000000, "图中是什么动物？", "", ["狗", "鸟", "鱼", "猫"], "A"),
           (1, "这张照片是在室外拍的吗？", "看看天空。", ["是", "否", "", ""], "A"),
           (2, "哪种颜色占主导？", "", ["红", "蓝", "绿", ""], "C")],
}  # fmt: skip


def jpeg_base64(seed: int) -> str:
    buffer = io.BytesIO()
    random_image(seed).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


def plant_answers(chunk_dir: Path, field: str, planted: dict) -> None:
    """Replace the `field` of every answer in the chunk files of a finished two-chunk run by `planted[question_id]`."""
    for part in ("2_0.jsonl", "2_1.jsonl"):
        write_lines(chunk_dir / part, [{**row, field: planted[row["question_id"]]} for row in lines(chunk_dir / part)])


def rerun_on_planted_answers(script: str, eval_root: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    """The script again, its inference module replaced by a stand-in that does nothing, as a resumed run does when
    every question is answered: it merges, converts and scores the answers the chunk files hold."""
    stand_in = tmp_path / "python-without-inference"
    stand_in.write_text(
        "#!/usr/bin/env bash\n"
        "if [[ $1 == -m && $2 == share4v.eval.model_vqa_* ]]; then exit 0; fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
    run_benchmark(script, eval_root, tiny_ckpt, PYTHON=str(stand_in))


def mmbench_expected_scores(merged: list[dict], rows: list[tuple]) -> dict:
    """What the local scorer gives the answers: a TSV row is right when its answer picks the row's answer letter, a
    question when every circular copy of it is right (`accuracy`); `vanilla_accuracy` over the original rows."""
    answers = {index: answer for index, *_, answer in rows}
    right = {row["question_id"]: match_option(row["text"], dict(zip("ABCD", row["options"], strict=False)))
             == answers[row["question_id"]] for row in merged}  # fmt: skip
    by_question: dict[int, bool] = {}
    for index, ok in right.items():
        by_question[index % MMBENCH_INDEX_MODULUS] = by_question.get(index % MMBENCH_INDEX_MODULUS, True) and ok
    vanilla = [ok for index, ok in right.items() if index < MMBENCH_INDEX_MODULUS]
    return {"accuracy": pytest.approx(100 * sum(by_question.values()) / len(by_question)),
            "vanilla_accuracy": pytest.approx(100 * sum(vanilla) / len(vanilla)), "questions": len(by_question),
            "rounds": len(merged), "unanswered": len(rows) - len(merged)}  # fmt: skip


@pytest.mark.parametrize(("lang", "split"), [("en", "mmbench_dev_20230712"), ("cn", "mmbench_dev_cn_20231003")])
def test_mmbench_end_to_end(tiny_ckpt, tmp_path, lang, split):
    """mmbench/<split>.tsv: 3 questions, one with a circular copy; the xlsx upload (openpyxl) holds each row's answer
    and the score file the local circular score of the answers; then the same on planted answers that get the
    original of question 0 right and its copy wrong."""
    openpyxl = pytest.importorskip("openpyxl", reason="the MMBench upload is an .xlsx: pip install openpyxl")
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE  # an .xlsx cannot hold the control characters they drop

    root = tmp_path / "eval"
    data = root / "mmbench"
    data.mkdir(parents=True)
    rows = MMBENCH_QUESTIONS[lang]
    with (data / f"{split}.tsv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(MMBENCH_COLUMNS)
        for index, question, hint, options, answer in rows:
            image = str(index % MMBENCH_INDEX_MODULUS) if index >= MMBENCH_INDEX_MODULUS else jpeg_base64(index)
            writer.writerow([index, question, hint, *options, answer, "image_scene", image, "MMBench",
                             "coarse_perception", "", "dev"])  # fmt: skip
    ckpt = tiny_ckpt.name
    answers = data / "answers" / split / ckpt
    scores_file = root / "scores" / ckpt / f"mmbench_{lang}.json"

    def check_upload(merged: list[dict]) -> None:
        book = openpyxl.load_workbook(data / "answers_upload" / split / ckpt / "merge.xlsx")
        table = [list(row) for row in book["Sheet1"].iter_rows(values_only=True)]
        assert table[0] == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
        assert [[*row[:6], row[6] or "", *row[7:]] for row in table[1:]] == [
            [index, question, *(option or None for option in options),
             ILLEGAL_CHARACTERS_RE.sub("", answer_row["text"]), answer, "dev"]
            for (index, question, _, options, answer), answer_row in zip(rows, merged, strict=True)
        ]  # fmt: skip

    run_benchmark(f"mmbench_{lang}.sh", root, tiny_ckpt)
    merged = lines(answers / "merge.jsonl")
    assert [row["question_id"] for row in merged] == [index for index, *_ in rows]  # chunks [0, 1000000], [1, 2]
    for row, (_, question, hint, options, _) in zip(merged, rows, strict=True):
        shown = [option for option in options if option]
        assert row["round_id"] == 0 and row["options"] == shown and row["option_char"] == list("ABCD"[: len(shown)])
        assert row["prompt"] == (f"{hint}\n" if hint else "") + question + "".join(
            f"\n{letter}. {option}" for letter, option in zip("ABCD", shown, strict=False)
        )
    check_upload(merged)
    scores = read_scores(scores_file)
    assert scores["benchmark"] == f"mmbench_{lang}"
    assert scores["scores"] == mmbench_expected_scores(merged, rows)
    assert headline(root, ckpt, f"mmbench_{lang}") == scores["scores"]["accuracy"]

    # question 0 right (its answer letter), its copy wrong (the same letter), 1 by "letter. text", 2 by text alone
    planted = {0: rows[0][4], 1000000: rows[0][4], 1: f"{rows[2][4]}. {rows[2][3][0]}", 2: rows[3][3][2]}
    plant_answers(answers, "text", planted)
    rerun_on_planted_answers(f"mmbench_{lang}.sh", root, tiny_ckpt, tmp_path)
    merged = lines(answers / "merge.jsonl")
    assert [row["text"] for row in merged] == [planted[index] for index, *_ in rows]
    check_upload(merged)
    expected = mmbench_expected_scores(merged, rows)
    assert read_scores(scores_file)["scores"] == expected
    assert expected["vanilla_accuracy"] == 100 and expected["accuracy"] == pytest.approx(200 / 3)


QBENCH_RECORDS = [
    {"img_path": "00079.jpg", "question": "How is the clarity of this image?", "candidates": ["High", "Medium", "Low"],
     "correct_ans": "Low", "type": 2, "concern": 0},
    {"img_path": "00080.jpg", "question": "Is this image noisy?", "candidates": ["Yes", "No"], "correct_ans": "Yes",
     "type": 0, "concern": 0},
    {"img_path": "00081.jpg", "question": "Which part of the image is blurred?",
     "candidates": ["the sky", "the car", "the tree", "the road"], "correct_ans": "the car", "type": 1,
     "concern": 2},
    {"img_path": "00082.jpg", "question": "Is the lighting of this image sufficient?", "candidates": ["Yes", "No"],
     "correct_ans": "No", "type": 0, "concern": 1},
    {"img_path": "00083.jpg", "question": "Is this image overexposed?", "candidates": ["Yes", "No"],
     "correct_ans": "Yes", "type": 0, "concern": 1},  # its image is missing: skipped by the driver
]  # fmt: skip


def qbench_expected_scores(answers: list[dict]) -> dict:
    """What the local scorer gives the responses: one is right when the letter or candidate text it names (the
    prompt lists "A. candidate" lines) is the correct answer, and a record never answered is wrong; overall, and per
    type and concern."""
    answered = {row["question_id"] for row in answers}
    rows = [*answers, *({**record, "response": ""} for position, record in enumerate(QBENCH_RECORDS)
                        if position not in answered)]  # fmt: skip

    def accuracy(group: list[dict]):
        right = []
        for row in group:
            pick = match_option(row["response"], dict(zip("ABCD", row["candidates"], strict=False)))
            right.append(pick is not None and row["candidates"]["ABCD".index(pick)] == row["correct_ans"])
        return pytest.approx(100 * sum(right) / len(right))

    expected = {"accuracy": accuracy(rows), "count": len(rows), "unanswered": len(rows) - len(answers)}
    for name in ("type", "concern"):
        for value in sorted({str(row[name]) for row in rows}):
            expected[f"{name}/{value}"] = accuracy([row for row in rows if str(row[name]) == value])
    return expected


def test_qbench_end_to_end(tiny_ckpt, tmp_path):
    """qbench/{llvisionqa_dev.json, images_llvisionqa/}: 5 LLVisionQA dev records (type 0/1/2: yes-or-no, what, how;
    concern: distortion, other, in-context distortion ...), one without its image; the answers keep each record with
    the response added, and the score file holds the accuracy of those responses, the unanswered record counted
    wrong, overall and per type and concern; then the same on planted responses."""
    root = tmp_path / "eval"
    data = root / "qbench"
    for seed, record in enumerate(QBENCH_RECORDS[:4], start=1):
        save_image(data / "images_llvisionqa" / record["img_path"], seed)
    (data / "llvisionqa_dev.json").write_text(json.dumps(QBENCH_RECORDS, indent=2))
    ckpt = tiny_ckpt.name
    merged, scores_file = data / f"llvisionqa_dev_{ckpt}_answers.jsonl", root / "scores" / ckpt / "qbench.json"

    done = run_benchmark("qbench.sh", root, tiny_ckpt)
    chunks = data / "answers" / ckpt
    assert sorted(path.name for path in chunks.glob("2_?.jsonl")) == ["2_0.jsonl", "2_1.jsonl"]
    [error] = lines(chunks / "2_1.jsonl.errors.jsonl")
    assert error["question_id"] == 4 and "image file not found" in error["error"]
    assert "could not be answered" in done.stderr
    answers = lines(merged)
    assert [row["question_id"] for row in answers] == [0, 1, 2, 3]  # the record's position in the questions file
    for row, record in zip(answers, QBENCH_RECORDS[:4], strict=True):
        assert {key: row[key] for key in record} == record and isinstance(row["response"], str)
        options = "".join(f"{letter}. {text}\n" for letter, text in zip("ABCD", record["candidates"], strict=False))
        assert (
            row["prompt"] == f"<image>\n{record['question']}\nChoose between one of the options as follows:\n{options}"
        )
    assert read_scores(scores_file)["scores"] == qbench_expected_scores(answers)
    assert headline(root, ckpt, "qbench") == qbench_expected_scores(answers)["accuracy"]

    # right by letter, by "letter. text", wrong by text, wrong by letter; record 4 still unanswered
    planted = {0: "C", 1: "A. Yes", 2: "The tree is blurred.", 3: "A"}
    plant_answers(chunks, "response", planted)
    rerun_on_planted_answers("qbench.sh", root, tiny_ckpt, tmp_path)
    answers = lines(merged)
    assert [row["response"] for row in answers] == list(planted.values())
    expected = qbench_expected_scores(answers)
    assert read_scores(scores_file)["scores"] == expected
    assert expected["count"] == 5 and expected["unanswered"] == 1
    assert expected["accuracy"] == 40 and expected["type/0"] == pytest.approx(100 / 3) and expected["type/2"] == 100


# ---------------------------------------------------------------- the GPT-judged benchmarks, end to end
# The judge is tests/eval/test_judge.py's fake OpenAI-compatible server on 127.0.0.1, reached by the scripts through
# OPENAI_BASE_URL; its replies are a function of the answer it is shown, so the expected scores follow from the
# written answers.
JUDGE_ENV = {"OPENAI_API_KEY": "test-key", "SHARE4V_JUDGE_MODEL": "judge-1"}


@pytest.fixture
def judge_server(monkeypatch):
    pytest.importorskip("httpx", reason="the GPT judge needs httpx")
    from tests.eval.test_judge import ENV, fake_openai_server

    for name in ENV:  # the judge's settings come from each test; no proxy between the scripts and the fake
        monkeypatch.delenv(name, raising=False)
    with fake_openai_server() as fake:
        yield fake


def llavabench_ours_score(answer: str) -> float:
    """The fake judge's score of our answer (Assistant 2): 1 to 10 by its length."""
    return float(1 + len(answer) % 10)


LLAVABENCH_REFERENCE_SCORES = {"conv": 8.0, "detail": 6.0, "complex": 10.0}


def test_llavabench_end_to_end(tiny_ckpt, tmp_path, judge_server):
    """llava-bench-in-the-wild/{questions.jsonl, context.jsonl, answers_gpt4.jsonl, images/}: 3 questions (conv,
    detail, complex) on 2 images; each is reviewed once by the judge, with the caption, GPT-4's answer and ours in the
    original's layout, and the score file holds the relative scores of those reviews."""
    root = tmp_path / "eval"
    data = root / "llava-bench-in-the-wild"
    save_image(data / "images" / "001.jpg", 1)
    save_image(data / "images" / "002.jpg", 2)
    questions = [
        {"image": "001.jpg", "text": "What is the name of this famous sight in the photo?", "category": "conv",
         "question_id": 0},
        {"image": "001.jpg", "text": "Describe this photo in detail.", "category": "detail", "question_id": 1},
        {"image": "002.jpg", "text": "What might be the purpose of this arrangement?", "category": "complex",
         "question_id": 2},
    ]  # fmt: skip
    write_lines(data / "questions.jsonl", questions)
    captions = {"001.jpg": "An aerial view of Diamond Head in Hawaii.", "002.jpg": "A table set for a dinner party."}
    write_lines(data / "context.jsonl", [{"id": image[:3], "image": image, "caption": caption}
                                         for image, caption in captions.items()])  # fmt: skip
    reference = [{"question_id": q["question_id"], "prompt": q["text"], "text": f"Reference answer {q['question_id']}.",
                  "answer_id": f"gpt4-{q['question_id']}", "model_id": "gpt-4-0314", "metadata": {}}
                 for q in questions]  # fmt: skip
    write_lines(data / "answers_gpt4.jsonl", reference)

    def review(body: dict) -> str:
        content = body["messages"][1]["content"]
        [category] = [q["category"] for q in questions if f"[Question]\n{q['text']}\n" in content]
        ours = content.split("[Assistant 2]\n", 1)[1].rsplit("\n\n[End of Assistant 2]", 1)[0]
        return f"{LLAVABENCH_REFERENCE_SCORES[category]:g} {llavabench_ours_score(ours):g}\nAssistant 1 is better."

    judge_server.answer = review
    run_benchmark("llavabench.sh", root, tiny_ckpt, OPENAI_BASE_URL=judge_server.url, **JUDGE_ENV)
    ckpt = tiny_ckpt.name
    merged = lines(data / "answers" / f"{ckpt}.jsonl")
    assert [(row["question_id"], row["prompt"]) for row in merged] == [
        (q["question_id"], q["text"])
        for q in questions  # the question's text, as the original
    ]
    ours = {row["question_id"]: row for row in merged}

    rules = eval_gpt_review_bench.load_rules(eval_gpt_review_bench.DEFAULT_RULE_FILE)
    assert [request["headers"]["Authorization"] for request in judge_server.requests] == ["Bearer test-key"] * 3
    assert [body["model"] for body in judge_server.bodies] == ["judge-1"] * 3
    assert [body["messages"][1]["content"] for body in judge_server.bodies] == [
        eval_gpt_review_bench.review_content(captions[q["image"]], q["text"], ref["text"],
                                             ours[q["question_id"]]["text"], "Assistant",
                                             rules[f"llava_bench_{q['category']}"]["prompt"])
        for q, ref in zip(questions, reference, strict=True)
    ]  # fmt: skip
    pairs = {q["category"]: (LLAVABENCH_REFERENCE_SCORES[q["category"]],
                             llavabench_ours_score(ours[q["question_id"]]["text"])) for q in questions}  # fmt: skip
    reviews = lines(data / "reviews" / f"{ckpt}.jsonl")
    assert [(r["question_id"], r["category"], r["answer1_id"], r["answer2_id"], r["tuple"]) for r in reviews] == [
        (q["question_id"], f"llava_bench_{q['category']}", f"gpt4-{q['question_id']}",
         ours[q["question_id"]]["answer_id"], list(pairs[q["category"]]))
        for q in questions
    ]  # fmt: skip

    def means(scores: list[tuple[float, float]]) -> tuple[float, float]:  # the summarizer's: to 3 decimals
        return tuple(round(math.fsum(s[side] for s in scores) / len(scores), 3) for side in (0, 1))

    def relative(scores: list[tuple[float, float]]) -> float:
        reference_mean, our_mean = means(scores)
        return round(our_mean / reference_mean * 100, 1)

    everything = list(pairs.values())
    expected = {"overall": relative(everything), **{name: relative([pair]) for name, pair in pairs.items()},
                "reference_score": round(means(everything)[0] * 10, 1),
                "model_score": round(means(everything)[1] * 10, 1)}  # fmt: skip
    assert read_scores(root / "scores" / ckpt / "llavabench.json")["scores"] == pytest.approx(expected)
    assert headline(root, ckpt, "llavabench") == pytest.approx(expected["overall"])


def mmvet_grade(prediction: str) -> float:
    """The fake grader's correctness of a prediction: 0.0 to 1.0 by its length."""
    return len(prediction) % 11 / 10


def test_mmvet_end_to_end(tiny_ckpt, tmp_path, judge_server):
    """mm-vet/{share4v-mm-vet.jsonl, mm-vet.json, images/}: 3 questions needing 1-2 capabilities; the results JSON for
    MM-Vet's grader holds every answer under v1_<id>, each is graded once with the official query, and the score file
    holds the per-capability and total scores of those grades."""
    root = tmp_path / "eval"
    data = root / "mm-vet"
    truth = {
        "v1_0": {"imagename": "v1_0.png", "capability": ["ocr", "math"], "question": "What is x in the equation?",
                 "answer": "-1<AND>-5"},
        "v1_1": {"imagename": "v1_1.jpg", "capability": ["rec"], "question": "What animal is this?", "answer": "cat"},
        "v1_2": {"imagename": "v1_2.jpg", "capability": ["ocr", "rec"], "question": "What is the brand name?",
                 "answer": "Nike<OR>NIKE"},
    }  # fmt: skip
    for seed, item in enumerate(truth.values(), start=1):
        save_image(data / "images" / item["imagename"], seed)
    (data / "mm-vet.json").write_text(json.dumps(truth))
    questions = [{"question_id": int(key[3:]), "image": item["imagename"], "text": item["question"]}
                 for key, item in truth.items()]  # fmt: skip
    write_lines(data / "share4v-mm-vet.jsonl", questions)
    prompt = eval_mmvet.load_prompt()

    def grade(body: dict) -> str:  # the query ends "question | answer | prediction | "; neither of the first has " | "
        row = body["messages"][0]["content"].removeprefix(prompt + "\n")
        return f"{mmvet_grade(row.split(' | ', 2)[2].removesuffix(' | ')):.1f}"

    judge_server.answer = grade
    run_benchmark("mmvet.sh", root, tiny_ckpt, OPENAI_BASE_URL=judge_server.url, **JUDGE_ENV)
    ckpt = tiny_ckpt.name
    merged = lines(data / "answers" / f"{ckpt}.jsonl")
    assert [(row["question_id"], row["prompt"]) for row in merged] == [
        (q["question_id"], q["text"])
        for q in questions  # the question's text, as the original
    ]
    results = json.loads((data / "results" / f"{ckpt}.json").read_text())
    assert results == {f"v1_{row['question_id']}": row["text"] for row in merged}

    assert [body["messages"][0]["content"] for body in judge_server.bodies] == [
        eval_mmvet.grader_query(prompt, item["question"], item["answer"], results[key]) for key, item in truth.items()
    ]  # every grade is a number: one request per answer
    assert all(body["model"] == "judge-1" and body["max_tokens"] == 3 for body in judge_server.bodies)
    grades = {key: mmvet_grade(answer) for key, answer in results.items()}
    graded = lines(data / "results" / f"{ckpt}_judge-1-grade.jsonl")
    assert [(row["id"], row["score"], row["judge"]) for row in graded] == [
        (key, pytest.approx(grades[key]), "judge-1") for key in truth
    ]

    def percent(keys: list[str]) -> float:
        return pytest.approx(round(math.fsum(grades[key] for key in keys) / len(keys) * 100, 1))

    capabilities = {name for item in truth.values() for name in item["capability"]}
    expected = {name: percent([key for key, item in truth.items() if name in item["capability"]])
                for name in capabilities}  # fmt: skip
    scores = read_scores(root / "scores" / ckpt / "mmvet.json")["scores"]
    assert scores == {**expected, "total": percent(list(truth))}
    assert headline(root, ckpt, "mmvet") == scores["total"]
