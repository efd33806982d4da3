"""The scorer command lines over fixture files in the benchmarks' own formats."""

import json

import pytest

from share4v.eval import eval_pope, eval_textvqa


def write_lines(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def pope(tmp_path):
    """POPE's layout: each annotation file numbers its questions from 1; the question file's ids run across the
    categories (LLaVA's llava_pope_test.jsonl); the answers come in another order (merged shards)."""
    (tmp_path / "coco").mkdir()
    write_lines(tmp_path / "coco" / "coco_pope_random.json", [
        {"question_id": i, "image": f"COCO_{i}.jpg", "label": label}
        for i, label in enumerate(["yes", "no", "yes", "no"], start=1)
    ])  # fmt: skip
    popular = [{"question_id": 1, "image": "COCO_9.jpg", "label": "no"}]
    write_lines(tmp_path / "coco" / "coco_pope_popular.json", popular)
    questions = write_lines(tmp_path / "questions.jsonl", [
        {"question_id": 100 + i, "image": f"COCO_{i}.jpg", "category": "random"} for i in (1, 2, 3, 4)
    ] + [{"question_id": 1, "image": "COCO_9.jpg", "category": "popular"}])  # fmt: skip
    answers = write_lines(tmp_path / "answers.jsonl", [
        {"question_id": 1, "text": "no"}, {"question_id": 104, "text": "Yes"},
        {"question_id": 101, "text": "Yes, there is."}, {"question_id": 102, "text": "There is no dog."},
        {"question_id": 103, "text": "No."},
    ])  # fmt: skip
    return tmp_path / "coco", questions, answers


def test_pope_scores_each_category(pope, capsys):
    scores = eval_pope.score_pope(*pope)
    assert scores["random"]["tp"] == 1 and scores["random"]["fp"] == 1 and scores["random"]["fn"] == 1
    assert scores["random"]["accuracy"] == 0.5 and scores["popular"]["accuracy"] == 1.0
    assert eval_pope.main(["--annotation-dir", str(pope[0]), "--question-file", str(pope[1]),
                           "--result-file", str(pope[2])]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "Category: random, # samples: 4" in out and "Accuracy: 0.5000" in out


def test_pope_bad_input_is_one_line(pope, tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"question_id": 1, "text": "yes"}\nnot json\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:2: not JSON"):
        eval_pope.main(["--annotation-dir", str(pope[0]), "--question-file", str(pope[1]),
                        "--result-file", str(tmp_path / "bad.jsonl")])  # fmt: skip


def test_pope_refuses_labels_out_of_step_with_the_questions(pope):
    annotations, questions, answers = pope
    rows = [json.loads(line) for line in (annotations / "coco_pope_random.json").read_text().splitlines()]
    write_lines(annotations / "coco_pope_random.json", [rows[1], rows[0], *rows[2:]])  # two lines swapped
    with pytest.raises(ValueError, match=r"coco_pope_random.json:1: the label is for COCO_2.jpg, but the 'random' "
                       r"question at that place .* \(question_id 101\) is about COCO_1.jpg"):  # fmt: skip
        eval_pope.score_pope(annotations, questions, answers)
    write_lines(annotations / "coco_pope_random.json", rows[:3])
    with pytest.raises(SystemExit, match=r"coco_pope_random.json: 3 labels for the 4 'random' questions of"):
        eval_pope.main(["--annotation-dir", str(annotations), "--question-file", str(questions),
                        "--result-file", str(answers)])  # fmt: skip


def test_textvqa_matches_by_image_and_question_and_scores_soft_accuracy(tmp_path, capsys):
    annotations = tmp_path / "TextVQA_0.5.1_val.json"
    annotations.write_text(json.dumps({"data": [
        {"image_id": "a1", "question": "What brand is it?", "answers": ["nokia"] * 2 + ["samsung"] * 8},
        {"image_id": "b2", "question": "What number is shown?", "answers": ["12"] * 10},
    ]}))  # fmt: skip
    results = write_lines(tmp_path / "merge.jsonl", [
        {"question_id": "a1", "prompt": "What brand is it?\nReference OCR token: NOKIA\nAnswer the question using a "
         "single word or phrase.", "text": "Nokia"},
        {"question_id": "b2", "prompt": "What number is shown?\nAnswer the question using a single word or phrase.",
         "text": "twelve"},
    ])  # fmt: skip
    result = eval_textvqa.score_textvqa(annotations, results)
    # nokia: 2 of 10 agree -> each leave-one-out subset has 1 or 2 matches: (8 * 2/3 + 2 * 1/3) / 10 = 0.6
    assert result["count"] == 2 and result["accuracy"] == pytest.approx((0.6 + 0.0) / 2)
    assert eval_textvqa.main(["--annotation-file", str(annotations), "--result-file", str(results)]) == 0
    assert "Accuracy: 30.00%" in capsys.readouterr().out


def test_textvqa_question_from_the_prompt_formats():
    assert eval_textvqa.question_from_prompt("OCR tokens: a b Question: What is it? Short answer:") == "what is it?"
    assert eval_textvqa.question_from_prompt("Reference OCR token: X\nWhy?\nAnswer briefly.") == "why?"
    with pytest.raises(ValueError, match="cannot find the question"):
        eval_textvqa.question_from_prompt("one\ntwo\nthree\nfour")


def test_science_qa_accuracy_and_img_accuracy(tmp_path, capsys):
    from share4v.eval import eval_science_qa

    problems = {
        "1": {"choices": ["cat", "dog"], "answer": 1, "image": "image.png"},
        "2": {"choices": ["red", "blue", "green"], "answer": 0, "image": None},
        "3": {"choices": ["yes", "no"], "answer": 0, "image": "image.png"},
        "4": {"choices": ["a", "b"], "answer": 0, "image": None},  # not in the test split
    }
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    (tmp_path / "pid_splits.json").write_text(json.dumps({"test": ["1", "2", "3"]}))
    answers = write_lines(tmp_path / "merge.jsonl", [
        {"question_id": "1", "text": "The answer is B."}, {"question_id": "2", "text": "A"},
        {"question_id": "3", "text": "(A)"},  # the original scorer does not read this form: wrong
    ])  # fmt: skip
    result = eval_science_qa.score_science_qa(tmp_path, answers)
    assert result["count"] == 3 and result["accuracy"] == pytest.approx(2 / 3)
    assert result["img_count"] == 2 and result["img_accuracy"] == pytest.approx(1 / 2)
    assert eval_science_qa.main(["--base-dir", str(tmp_path), "--result-file", str(answers),
                                 "--output-result", str(tmp_path / "r.json")]) == 0  # fmt: skip
    assert "IMG-Accuracy: 50.00%" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["img_accuracy"] == pytest.approx(0.5)
