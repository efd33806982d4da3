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


# ---------------------------------------------------------------- the other locally scored benchmarks, end to end
# Each test below writes a 3-4 question fixture in the benchmark's real layout under a temporary EVAL_ROOT, runs the
# script on the tiny checkpoint sharded over two fake "GPUs", and checks the merge, the converter's official output
# and the score file. SHORT and LETTER are the instructions the playground's question files end with.
SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def save_image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    random_image(seed).save(path)


def run_benchmark(script: str, eval_root: Path, tiny_ckpt: Path) -> subprocess.CompletedProcess:
    """The script on the tiny checkpoint over two fake GPUs; it must succeed."""
    done = run_script(script, tiny_ckpt.name, str(tiny_ckpt.parent), CUDA_VISIBLE_DEVICES="0,1",
                      EVAL_ROOT=str(eval_root), EVAL_ARGS=FAST)  # fmt: skip
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
    assert sorted((row["question_id"], row["prompt"].split("\n")[1]) for row in merged) == sorted(
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
        (q["question_id"], "<image>\n" + q["text"]) for q in questions
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
