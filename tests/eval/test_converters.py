"""Answer files → the official upload and result layouts (VQAv2, MMBench, SEED-Bench, MME), through the original
command lines, on small fixtures written in each benchmark's real format."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from share4v.eval import convert_answer_to_mme, eval_mme, submission
from share4v.eval.scores import read_scores

ROOT = Path(__file__).resolve().parents[2]
SHORT = "\nAnswer the question using a single word or phrase."


def write_lines(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run_script(name, *args):
    command = [sys.executable, str(ROOT / "scripts" / name), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True)


# ---------------------------------------------------------------- VQAv2


def test_vqav2_upload_has_every_test_question_normalised(tmp_path):
    split, ckpt = "share4v_vqav2_mscoco_test-dev2015", "share4v-7b"
    write_lines(tmp_path / "llava_vqav2_mscoco_test2015.jsonl", [
        {"question_id": 1, "image": "a.jpg", "text": "How many dogs?"},
        {"question_id": 2, "image": "b.jpg", "text": "What is it?"},
        {"question_id": 3, "image": "c.jpg", "text": "Is it sunny?"},
        {"question_id": 4, "image": "d.jpg", "text": "How much?"},  # not in test-dev: never answered
    ])  # fmt: skip
    write_lines(tmp_path / "answers" / split / ckpt / "merge.jsonl", [
        {"question_id": 3, "text": "Yes"}, {"question_id": 1, "text": "Two dogs."},
        {"question_id": 2, "text": "The Red-Ball!"}, {"question_id": 5, "text": "1,000"},
    ])  # fmt: skip
    done = run_script("convert_vqav2_for_submission.py", "--dir", tmp_path, "--split", split, "--ckpt", ckpt)
    assert done.returncode == 0, done.stderr
    upload_dir = tmp_path / "answers_upload" / split
    # test-file order; numbers as digits, articles and punctuation gone, an unanswered question kept with ""
    assert json.loads((upload_dir / f"{ckpt}.json").read_text()) == [
        {"question_id": 1, "answer": "2 dogs"}, {"question_id": 2, "answer": "red ball"},
        {"question_id": 3, "answer": "yes"}, {"question_id": 4, "answer": ""},
    ]  # fmt: skip
    assert [p.name for p in upload_dir.iterdir()] == [f"{ckpt}.json"]  # no temporary file left
    assert "total results: 4, total split: 4, unanswered: 1, not in the split: 1" in done.stdout


def test_vqav2_missing_question_file_is_one_line(tmp_path):
    write_lines(tmp_path / "answers" / "s" / "c" / "merge.jsonl", [{"question_id": 1, "text": "yes"}])
    done = run_script("convert_vqav2_for_submission.py", "--dir", tmp_path, "--split", "s", "--ckpt", "c")
    missing = tmp_path / "llava_vqav2_mscoco_test2015.jsonl"
    assert done.returncode == 1 and done.stderr.strip() == f"error: no such file: {missing}"


def test_vqav2_help_shows_the_default_folder():
    done = run_script("convert_vqav2_for_submission.py", "--help")
    assert done.returncode == 0 and "(default: ./playground/data/eval/vqav2)" in done.stdout


# ---------------------------------------------------------------- MMBench

MMBENCH_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "source",
                   "l2-category", "comment", "split"]  # fmt: skip


def write_mmbench_tsv(path, rows):
    """A TSV as pandas writes MMBench's: tab-separated, fields with tabs/newlines/quotes quoted."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(MMBENCH_COLUMNS)
        for row in rows:
            writer.writerow([row.get(column, "") for column in MMBENCH_COLUMNS])
    return path


@pytest.fixture
def mmbench_dev(tmp_path):
    image = "iVBORw0KGgo" + "A" * 200_000  # longer than the csv module's default field limit
    common = {
        "category": "attribute",
        "image": image,
        "source": "web",
        "l2-category": "x",
        "comment": "",
        "split": "dev",
    }
    return write_mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv", [
        {"index": 0, "question": "What animal is it?", "hint": "Look\tclosely.\nIt is \"fluffy\".", "A": "cat",
         "B": "dog", "C": "bird", "D": "fish", "answer": "B", **common},
        {"index": 1, "question": "Is it outdoors?", "hint": "", "A": "yes", "B": "no", "answer": "A", **common},
        {"index": 2, "question": "Which color?", "A": "red", "B": "blue", "C": "green", "answer": "C", **common},
    ])  # fmt: skip


def test_mmbench_upload_xlsx_layout_and_round_zero(tmp_path, mmbench_dev):
    openpyxl = pytest.importorskip("openpyxl", reason="the MMBench upload is an .xlsx: pip install openpyxl")
    results = tmp_path / "answers"
    write_lines(results / "merge.jsonl", [
        {"question_id": 0, "round_id": 0, "text": "B", "options": ["cat", "dog", "bird", "fish"],
         "option_char": ["A", "B", "C", "D"]},
        {"question_id": 0, "round_id": 1, "text": "A", "options": ["dog", "bird", "fish", "cat"],
         "option_char": ["B", "C", "D", "A"]},  # rotated: its letter is not the TSV's, so it is not uploaded
        {"question_id": 1, "round_id": 0, "text": "A. yes"},
    ])  # fmt: skip
    done = run_script("convert_mmbench_for_submission.py", "--annotation-file", mmbench_dev, "--result-dir", results,
                      "--upload-dir", tmp_path / "upload", "--experiment", "merge")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "3 questions, 1 unanswered" in done.stdout
    book = openpyxl.load_workbook(tmp_path / "upload" / "merge.xlsx")
    assert book.sheetnames == ["Sheet1"]
    rows = [list(row) for row in book["Sheet1"].iter_rows(values_only=True)]
    # hint/category/source/image/comment/l2-category dropped; prediction inserted at column 6 (0-based)
    assert rows[0] == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert rows[1:] == [
        [0, "What animal is it?", "cat", "dog", "bird", "fish", "B", "B", "dev"],
        [1, "Is it outdoors?", "yes", "no", None, None, "A. yes", "A", "dev"],
        [2, "Which color?", "red", "blue", "green", None, None, "C", "dev"],
    ]


def test_mmbench_without_openpyxl_says_how_to_install(tmp_path, mmbench_dev, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openpyxl", None)  # makes `import openpyxl` fail
    write_lines(tmp_path / "merge.jsonl", [{"question_id": 0, "text": "B"}])
    argv = ["--annotation-file", str(mmbench_dev), "--result-dir", str(tmp_path), "--upload-dir", str(tmp_path / "u"),
            "--experiment", "merge"]  # fmt: skip
    with pytest.raises(SystemExit, match=r"^error: writing \.xlsx needs openpyxl: pip install openpyxl"):
        submission.mmbench_main(argv)
    assert not (tmp_path / "u" / "merge.xlsx").exists()


def test_mmbench_answer_to_an_unknown_index_is_one_line(tmp_path, mmbench_dev):
    write_lines(tmp_path / "merge.jsonl", [{"question_id": 0, "text": "B"}, {"question_id": 7, "text": "A"}])
    with pytest.raises(ValueError, match=r"merge.jsonl: answer 2 has question_id 7, not an index of .*\.tsv"):
        submission.mmbench_upload_table(mmbench_dev, tmp_path / "merge.jsonl")


def test_mmbench_tsv_row_with_missing_fields_names_the_line(tmp_path):
    path = tmp_path / "bad.tsv"
    path.write_text("index\tquestion\tA\n0\tQ\tcat\n1\tQ2\n")
    with pytest.raises(ValueError, match=r"bad.tsv:3: 2 fields, the header has 3"):
        submission.read_mmbench_tsv(path)


# ---------------------------------------------------------------- SEED-Bench


@pytest.fixture
def seed(tmp_path):
    def question(qid, type_id, answer, data_type="image"):
        return {
            "question_id": qid,
            "question_type_id": type_id,
            "answer": answer,
            "data_type": data_type,
            "question": "?",
            "choice_a": "a",
            "choice_b": "b",
            "choice_c": "c",
            "choice_d": "d",
            "data_id": "x",
        }

    annotation = tmp_path / "SEED-Bench.json"
    annotation.write_text(json.dumps({
        "question_type": {"Scene Understanding": 1, "Instance Identity": 2, "Action Recognition": 10},
        "questions": [question("101", 1, "A"), question("102", 1, "B"), question("103", 2, "C"),
                      question("104", 2, "D"), question("v1", 10, "A", data_type="video")],
    }))  # fmt: skip
    # ids as the question file has them (ints), the annotation's are strings; 104 and the video never answered
    answers = write_lines(tmp_path / "merge.jsonl", [
        {"question_id": 101, "text": "A"}, {"question_id": 102, "text": "B."}, {"question_id": 103, "text": "C"},
    ])  # fmt: skip
    return annotation, answers


def test_seed_accuracy_per_type_and_upload(seed, tmp_path):
    annotation, answers = seed
    upload = tmp_path / "upload" / "share4v-7b.jsonl"
    done = run_script("convert_seed_for_submission.py", "--annotation-file", annotation, "--result-file", answers,
                      "--result-upload-file", upload, "--scores-file", tmp_path / "seed.json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    # exact match: "B." is wrong; per type over all questions: Scene 1/2, Instance 1/2, Action 0/1 (video)
    assert "Action Recognition: 0.00\nInstance Identity: 50.00\nScene Understanding: 50.00\n" in done.stdout
    assert "Total accuracy: 40.00%" in done.stdout and "image accuracy: 50.00%" in done.stdout
    lines = [json.loads(line) for line in upload.read_text().splitlines()]
    assert lines == [{"question_id": "101", "prediction": "A"}, {"question_id": "102", "prediction": "B."},
                     {"question_id": "103", "prediction": "C"}, {"question_id": "104", "prediction": ""}]  # fmt: skip
    scores = read_scores(tmp_path / "seed.json")
    assert scores["benchmark"] == "seed" and scores["source"] == str(answers)
    assert scores["scores"]["image_accuracy"] == pytest.approx(50.0)
    assert scores["scores"]["accuracy"] == pytest.approx(40.0)
    assert scores["scores"]["image/Scene Understanding"] == pytest.approx(50.0)


def test_seed_tolerant_reads_the_first_character(seed, tmp_path):
    annotation, answers = seed
    result = submission.seed_results(annotation, answers, tolerant=True)
    assert result["image"]["overall"] == pytest.approx(3 / 4) and result["all"]["overall"] == pytest.approx(3 / 5)
    assert result["upload"][1] == {"question_id": "102", "prediction": "B"}


def test_seed_bad_annotation_names_the_question(tmp_path):
    annotation = tmp_path / "SEED-Bench.json"
    annotation.write_text(json.dumps({"question_type": {"S": 1}, "questions": [{"question_id": "1", "answer": "A"}]}))
    write_lines(tmp_path / "merge.jsonl", [{"question_id": 1, "text": "A"}])
    done = run_script("convert_seed_for_submission.py", "--annotation-file", annotation, "--result-file",
                      tmp_path / "merge.jsonl", "--result-upload-file", tmp_path / "u.jsonl")  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {annotation}: question 0 lacks field 'question_type_id'"


# ---------------------------------------------------------------- MME


@pytest.fixture
def mme(tmp_path):
    """MME_Benchmark_release with both layouts, and an answer file in question-file order."""
    data = tmp_path / "MME_Benchmark_release"
    (data / "existence").mkdir(parents=True)
    (data / "existence" / "000000006040.txt").write_text(
        "Is there a train in this image? Please answer yes or no.\tYes\n"
        "Is there a bed in this image? Please answer yes or no.\tNo\n"
    )
    (data / "existence" / "000000006041.txt").write_text(
        "Is there a cat in this image? Please answer yes or no.\tYes\n"
        "Is there a dog in this image? Please answer yes or no.\tNo\n"
    )
    (data / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (data / "artwork" / "images").mkdir()
    (data / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is this artwork created by Renoir? Please answer yes or no.\tYes\n"
        "Is this artwork created by Monet? Please answer yes or no.\tNo\n"
    )
    (data / "code_reasoning").mkdir()
    (data / "code_reasoning" / "0020.txt").write_text(  # MME spells some questions with two spaces
        "Is the output 5?  Please answer yes or no.\tYes\nIs the output 7?  Please answer yes or no.\tNo\n"
    )
    answers = write_lines(tmp_path / "answers" / "share4v-7b.jsonl", [
        {"question_id": "existence/000000006040.jpg", "prompt": "<image>\nIs there a train in this image?" + SHORT,
         "text": "Yes"},
        {"question_id": "artwork/images/10002.jpg",
         "prompt": "<image>\nIs this artwork created by Renoir? Please answer yes or no." + SHORT, "text": "No"},
        {"question_id": "existence/000000006041.jpg", "prompt": "Is there a cat in this image?", "text": "yes."},
        {"question_id": "existence/000000006040.jpg", "prompt": "Is there a bed in this image?",
         "text": "No, there is\tnot.\nReally."},
        {"question_id": "artwork/images/10002.jpg", "prompt": "Is this artwork created by Monet?", "text": "no"},
        {"question_id": "code_reasoning/0020.png", "prompt": "Is the output 5?", "text": "I think yes"},
        {"question_id": "code_reasoning/0020.png", "prompt": "Is the output 7?", "text": "No"},
        {"question_id": "existence/000000006041.jpg", "prompt": "Is there a dog in this image?", "text": "Yes"},
    ])  # fmt: skip
    return data, answers


def test_mme_result_folder_layout(mme, tmp_path):
    data, _ = mme
    argv = ["--experiment", "share4v-7b", "--answers-dir", str(tmp_path / "answers"), "--data-path", str(data),
            "--results-dir", str(tmp_path / "eval_tool" / "answers")]  # fmt: skip
    assert convert_answer_to_mme.main(argv) == 0
    results = tmp_path / "eval_tool" / "answers" / "share4v-7b"
    assert sorted(p.name for p in results.iterdir()) == ["artwork.txt", "code_reasoning.txt", "existence.txt"]
    # image, question as MME writes it, ground truth, prediction; an image's two questions adjacent
    assert (results / "existence.txt").read_text() == (
        "000000006040.jpg\tIs there a train in this image? Please answer yes or no.\tYes\tYes\n"
        "000000006040.jpg\tIs there a bed in this image? Please answer yes or no.\tNo\tNo, there is not. Really.\n"
        "000000006041.jpg\tIs there a cat in this image? Please answer yes or no.\tYes\tyes.\n"
        "000000006041.jpg\tIs there a dog in this image? Please answer yes or no.\tNo\tYes\n"
    )
    assert (results / "code_reasoning.txt").read_text() == (
        "0020.png\tIs the output 5?  Please answer yes or no.\tYes\tI think yes\n"
        "0020.png\tIs the output 7?  Please answer yes or no.\tNo\tNo\n"
    )


def test_mme_scores_as_the_eval_tool_computes_them(mme, tmp_path, capsys):
    data, answers = mme
    files = convert_answer_to_mme.mme_result_files(answers, convert_answer_to_mme.read_ground_truth(data))
    results = tmp_path / "results"
    for category, text in files.items():
        submission.write_text(text, results / f"{category}.txt")
    assert eval_mme.main(["--results_dir", str(results), "--scores-file", str(tmp_path / "mme.json")]) == 0
    # existence: 3 of 4 right (acc 0.75), 1 of 2 images both right (acc+ 0.5) -> 125
    # artwork: "No" for a Yes is wrong, "no" right -> 50 + 0; code_reasoning: "I think yes" is neither -> 50 + 0
    scores = read_scores(tmp_path / "mme.json")
    assert scores["benchmark"] == "mme"
    assert scores["scores"]["existence"] == pytest.approx(125.0)
    assert scores["scores"]["artwork"] == pytest.approx(50.0)
    assert scores["scores"]["perception"] == pytest.approx(175.0)
    assert scores["scores"]["cognition"] == pytest.approx(50.0)
    captured = capsys.readouterr()
    assert "=========== Perception ===========\ntotal score: 175.00" in captured.out
    assert "\t existence  score: 125.00" in captured.out
    assert "missing (scored 0): count, position" in captured.err


def test_mme_bad_inputs_are_one_line(mme, tmp_path):
    data, _ = mme
    bad = write_lines(tmp_path / "answers" / "bad.jsonl", [
        {"question_id": "existence/000000006040.jpg", "prompt": "Is there a horse?", "text": "no"},
    ])  # fmt: skip
    with pytest.raises(SystemExit, match=r"bad.jsonl: answer 1 \(existence/000000006040.jpg\): question 'Is there"):
        convert_answer_to_mme.main(["--experiment", "bad", "--answers-dir", str(bad.parent), "--data-path", str(data)])
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "OCR.txt").write_text("a.jpg\tIs it?\tYes\tyes\nb.jpg\tIs it?\tyes\n")
    with pytest.raises(SystemExit, match=r"OCR.txt:2: 3 tab-separated fields"):
        eval_mme.main(["--results_dir", str(tmp_path / "r")])
