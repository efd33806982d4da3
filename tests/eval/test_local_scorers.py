"""Local scorers (VQAv2/VizWiz val, GQA, MMBench, Q-Bench) and the score files of every scorer, against values worked
out by hand from each official metric's definition, on fixtures written in the benchmarks' own formats."""

import csv
import json

import pytest

from share4v.eval import eval_gqa, eval_mmbench, eval_pope, eval_qbench, eval_science_qa, eval_textvqa, eval_vqa
from share4v.eval.scores import read_scores


def write_lines(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---------------------------------------------------------------- VQAv2 / VizWiz val


@pytest.fixture
def vqav2(tmp_path):
    def annotation(qid, answers, answer_type):
        return {
            "question_id": qid,
            "image_id": 9,
            "answer_type": answer_type,
            "multiple_choice_answer": answers[0],
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)],
        }

    annotations = tmp_path / "v2_mscoco_val2014_annotations.json"
    annotations.write_text(json.dumps({"info": {}, "annotations": [
        annotation(1, ["2"] * 3 + ["3"] * 7, "number"),
        annotation(2, ["yes"] * 10, "yes/no"),
        annotation(3, ["a dog"] + ["cat"] * 9, "other"),
        annotation(4, ["table"] * 10, "other"),
    ]}))  # fmt: skip
    results = write_lines(tmp_path / "merge.jsonl", [
        {"question_id": 1, "text": "Two"},  # "2" after normalisation: 3 of 10 agree
        {"question_id": 2, "text": "Yes."},
        {"question_id": 3, "text": "The dog"},  # "dog" = "a dog" normalised: 1 of 10 agrees
    ])  # fmt: skip
    return annotations, results


def test_vqav2_val_soft_accuracy(vqav2, tmp_path, capsys):
    annotations, results = vqav2
    # q1: 3 leave-one-out subsets keep 2 matches (2/3), 7 keep 3 (1) -> 0.9; q2: 1.0
    # q3: the subset without "a dog" has 0 matches, the 9 others 1 (1/3) -> 0.3; q4 unanswered: 0
    result = eval_vqa.score_vqa(annotations, results)
    assert result["benchmark"] == "vqav2" and result["count"] == 4 and result["unanswered"] == 1
    assert result["accuracy"] == pytest.approx((0.9 + 1.0 + 0.3 + 0.0) / 4)
    assert result["answer_type/number"] == pytest.approx(0.9)
    assert result["answer_type/other"] == pytest.approx(0.15)
    questions = write_lines(tmp_path / "questions.jsonl", [{"question_id": i, "text": "?"} for i in (1, 2, 3)])
    assert eval_vqa.score_vqa(annotations, results, questions)["accuracy"] == pytest.approx(2.2 / 3)
    argv = [
        "--annotation-file",
        str(annotations),
        "--result-file",
        str(results),
        "--scores-file",
        str(tmp_path / "s.json"),
    ]
    assert eval_vqa.main(argv) == 0
    assert "Accuracy: 55.00%" in capsys.readouterr().out
    scores = read_scores(tmp_path / "s.json")
    assert scores["benchmark"] == "vqav2" and scores["scores"]["accuracy"] == pytest.approx(55.0)


def test_vizwiz_val_matches_by_image_and_scores_unanswerable(tmp_path):
    annotations = tmp_path / "val.json"
    annotations.write_text(json.dumps([
        {"image": "VizWiz_val_00000000.jpg", "question": "What?", "answerable": 0, "answer_type": "unanswerable",
         "answers": [{"answer": "unanswerable", "answer_confidence": "yes"}] * 6
         + [{"answer": "unsuitable", "answer_confidence": "no"}] * 4},
        {"image": "VizWiz_val_00000001.jpg", "question": "What color?", "answerable": 1, "answer_type": "other",
         "answers": [{"answer": "black and white"}] * 2 + [{"answer": "gray"}] * 8},
    ]))  # fmt: skip
    questions = write_lines(tmp_path / "llava_val.jsonl", [
        {"question_id": 0, "image": "VizWiz_val_00000000.jpg", "text": "What is this?"},
        {"question_id": 1, "image": "VizWiz_val_00000001.jpg", "text": "What color?"},
    ])  # fmt: skip
    results = write_lines(tmp_path / "merge.jsonl", [
        {"question_id": 0, "text": "Unanswerable."},  # 6 agree -> 1.0
        {"question_id": 1, "text": "black-and-white"},  # the hyphens become spaces: 2 agree -> 0.6
    ])  # fmt: skip
    result = eval_vqa.score_vqa(annotations, results, questions)
    assert result["benchmark"] == "vizwiz" and result["accuracy"] == pytest.approx(0.8)
    assert result["answer_type/unanswerable"] == pytest.approx(1.0)
    with pytest.raises(SystemExit, match=r"VizWiz's format: --question-file \(question_id, image\) is needed"):
        eval_vqa.main(["--annotation-file", str(annotations), "--result-file", str(results)])


def test_vqa_answer_to_an_unknown_question_is_one_line(vqav2, tmp_path):
    annotations, _ = vqav2
    results = write_lines(tmp_path / "other.jsonl", [{"question_id": 1, "text": "2"}, {"question_id": 99, "text": "x"}])
    with pytest.raises(SystemExit, match=r"other.jsonl: answer 2 has question_id 99, not a question of"):
        eval_vqa.main(["--annotation-file", str(annotations), "--result-file", str(results)])


# ---------------------------------------------------------------- GQA


@pytest.fixture
def gqa_questions(tmp_path):
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text(json.dumps({
        "201": {"answer": "yes", "isBalanced": True, "question": "Is it?", "imageId": "n1"},
        "202": {"answer": "red", "isBalanced": True, "question": "Which color?", "imageId": "n1"},
        "203": {"answer": "left", "isBalanced": True, "question": "Which side?", "imageId": "n2"},
        "204": {"answer": "no", "isBalanced": False, "question": "Is it?", "imageId": "n2"},  # not counted
    }))  # fmt: skip
    return path


def test_gqa_accuracy_from_the_answer_file_and_from_the_converter_output(gqa_questions, tmp_path, capsys):
    answers = write_lines(tmp_path / "merge.jsonl", [
        {"question_id": "201", "text": "Yes."}, {"question_id": "202", "text": "The red"},  # no article removal in GQA
        {"question_id": "204", "text": "no"},
    ])  # fmt: skip
    result = eval_gqa.score_gqa(gqa_questions, answers)
    assert result == {"accuracy": pytest.approx(1 / 3), "count": 3, "missing": 1}
    predictions = tmp_path / "testdev_balanced_predictions.json"
    predictions.write_text(json.dumps([{"questionId": "201", "prediction": "yes"},
                                       {"questionId": "202", "prediction": "red"},
                                       {"questionId": "203", "prediction": "right"}]))  # fmt: skip
    argv = [
        "--questions",
        str(gqa_questions),
        "--predictions",
        str(predictions),
        "--scores-file",
        str(tmp_path / "g.json"),
    ]
    assert eval_gqa.main(argv) == 0
    assert "Accuracy: 66.67%" in capsys.readouterr().out
    scores = read_scores(tmp_path / "g.json")
    assert scores["benchmark"] == "gqa" and scores["scores"]["accuracy"] == pytest.approx(200 / 3)


def test_gqa_prediction_for_an_unknown_question_is_one_line(gqa_questions, tmp_path):
    answers = write_lines(tmp_path / "merge.jsonl", [{"question_id": "999", "text": "yes"}])
    with pytest.raises(SystemExit, match=r"merge.jsonl: question id '999' is not in .*questions.json"):
        eval_gqa.main(["--questions", str(gqa_questions), "--predictions", str(answers)])


# ---------------------------------------------------------------- MMBench

TSV_COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "l2-category", "split"]


def write_tsv(path, rows):
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(TSV_COLUMNS)
        writer.writerows([[row.get(column, "") for column in TSV_COLUMNS] for row in rows])
    return path


def rotated(options, round_id):
    letters = "ABCD"[: len(options)]
    return {
        "options": options[round_id:] + options[:round_id],
        "option_char": list(letters[round_id:] + letters[:round_id]),
    }


@pytest.fixture
def mmbench(tmp_path):
    tsv = write_tsv(tmp_path / "mmbench_dev_20230712.tsv", [
        {"index": 0, "question": "Animal?", "A": "cat", "B": "dog", "C": "bird", "D": "fish", "answer": "B"},
        {"index": 1, "question": "Outdoors?", "A": "yes", "B": "no", "answer": "A"},
        {"index": 2, "question": "Color?", "A": "red", "B": "blue", "C": "green", "answer": "C"},  # never answered
    ])  # fmt: skip
    animals = ["cat", "dog", "bird", "fish"]
    answers = write_lines(tmp_path / "merge.jsonl", [
        {"question_id": 0, "round_id": 0, "text": "B", **rotated(animals, 0)},
        {"question_id": 0, "round_id": 1, "text": "The answer is A.", **rotated(animals, 1)},  # shown A = dog: right
        {"question_id": 0, "round_id": 2, "text": "I would say dog", **rotated(animals, 2)},  # the option text: right
        {"question_id": 0, "round_id": 3, "text": "(B) cat", **rotated(animals, 3)},  # shown B = cat: wrong
        {"question_id": 1, "round_id": 0, "text": "A. yes", **rotated(["yes", "no"], 0)},
        {"question_id": 1, "round_id": 1, "text": "B", **rotated(["yes", "no"], 1)},  # shown B = yes: right
    ])  # fmt: skip
    return tsv, answers


def test_mmbench_circular_and_vanilla_accuracy(mmbench, tmp_path, capsys):
    tsv, answers = mmbench
    result = eval_mmbench.score_mmbench(tsv, answers)
    # circular: question 0 fails round 3, question 1 passes both rounds, question 2 unanswered -> 1/3
    # vanilla (round 0 alone): 0 and 1 right, 2 unanswered -> 2/3
    assert result["accuracy"] == pytest.approx(1 / 3) and result["vanilla_accuracy"] == pytest.approx(2 / 3)
    assert result["questions"] == 3 and result["rounds"] == 6 and result["unanswered"] == 1
    argv = ["--annotation-file", str(tsv), "--result-file", str(answers), "--lang", "cn",
            "--scores-file", str(tmp_path / "m.json")]  # fmt: skip
    assert eval_mmbench.main(argv) == 0
    assert "Circular accuracy: 33.33%" in capsys.readouterr().out
    scores = read_scores(tmp_path / "m.json")
    assert scores["benchmark"] == "mmbench_cn" and scores["scores"]["vanilla_accuracy"] == pytest.approx(200 / 3)


def test_mmbench_variant_rows_of_the_tsv_are_one_question(tmp_path):
    tsv = write_tsv(tmp_path / "dev.tsv", [
        {"index": 5, "question": "Q", "A": "up", "B": "down", "answer": "A"},
        {"index": 1_000_005, "question": "Q", "A": "down", "B": "up", "answer": "B"},  # the same question, rotated
    ])  # fmt: skip
    answers = write_lines(
        tmp_path / "merge.jsonl", [{"question_id": 5, "text": "A"}, {"question_id": 1_000_005, "text": "A"}]
    )
    result = eval_mmbench.score_mmbench(tsv, answers)
    assert result["questions"] == 1 and result["accuracy"] == 0.0 and result["vanilla_accuracy"] == 1.0


def test_mmbench_bad_answers_are_one_line(mmbench, tmp_path):
    tsv, _ = mmbench
    no_chars = write_lines(tmp_path / "a.jsonl", [{"question_id": 0, "round_id": 1, "text": "A"}])
    with pytest.raises(SystemExit, match=r"a.jsonl: answer 1: round 1 needs 'options' and 'option_char'"):
        eval_mmbench.main(["--annotation-file", str(tsv), "--result-file", str(no_chars)])
    twice = write_lines(tmp_path / "b.jsonl", [{"question_id": 1, "text": "A"}, {"question_id": 1, "text": "B"}])
    with pytest.raises(SystemExit, match=r"b.jsonl: answer 2 repeats question_id 1 round 0"):
        eval_mmbench.main(["--annotation-file", str(tsv), "--result-file", str(twice)])
    test_split = tmp_path / "test.tsv"
    test_split.write_text("index\tquestion\tA\tB\n0\tQ\tx\ty\n")
    with pytest.raises(SystemExit, match=r"test.tsv: no 'answer' column"):
        eval_mmbench.main(["--annotation-file", str(test_split), "--result-file", str(twice)])


# ---------------------------------------------------------------- Q-Bench


def qbench_record(question, candidates, correct, kind, concern, **extra):
    return {"img_path": "x.jpg", "question": question, "candidates": candidates, "correct_ans": correct,
            "type": kind, "concern": concern, **extra}  # fmt: skip


QBENCH_QUESTIONS = [
    qbench_record("Is it blurry?", ["Yes", "No"], "No", "Yes-or-No", "Distortion"),
    qbench_record("How bright?", ["High", "Medium", "Low"], "Low", "How", "Other"),
    qbench_record("Is it noisy?", ["Yes", "No"], "Yes", "Yes-or-No", "Other"),
    qbench_record("What distortion?", ["Blur", "Noise", "Overexposure"], "Noise", "What", "Distortion"),
    qbench_record("Is it sharp?", ["Yes", "No"], "Yes", "Yes-or-No", "Distortion"),  # never answered
]
QBENCH_RESPONSES = [
    "No, the image is not blurry.",  # the option text "No" (not the "no" inside "not"): right
    "C",  # right
    "B",  # No: wrong
    "The main distortions are noise and blur.",  # two options named: unreadable, wrong
]


def test_qbench_accuracy_per_type_from_back_to_back_records(tmp_path, capsys):
    records = [
        {**q, "response": r, "question_id": i}
        for i, (q, r) in enumerate(zip(QBENCH_QUESTIONS, QBENCH_RESPONSES, strict=False))
    ]
    answers = tmp_path / "llvisionqa_dev_answers.jsonl"
    # the original driver wrote records without newlines between them
    answers.write_text(json.dumps(records[0]) + json.dumps(records[1]) + "\n" + "\n".join(map(json.dumps, records[2:])))
    scores = eval_qbench.score_qbench(answers)
    assert scores["accuracy"] == pytest.approx(2 / 4) and scores["count"] == 4
    assert scores["type/Yes-or-No"] == pytest.approx(1 / 2) and scores["type/What"] == 0.0
    assert scores["concern/Other"] == pytest.approx(1 / 2)
    questions = tmp_path / "llvisionqa_dev.json"
    questions.write_text(json.dumps(QBENCH_QUESTIONS))
    argv = ["--filepath", str(answers), "--questions-file", str(questions), "--scores-file", str(tmp_path / "q.json")]
    assert eval_qbench.main(argv) == 0
    assert "Questions: 5 (1 unanswered)\nAccuracy: 40.00%" in capsys.readouterr().out
    saved = read_scores(tmp_path / "q.json")
    assert saved["benchmark"] == "qbench" and saved["scores"]["accuracy"] == pytest.approx(40.0)


def test_qbench_test_split_without_answers_is_one_line(tmp_path):
    record = {k: v for k, v in QBENCH_QUESTIONS[0].items() if k != "correct_ans"}
    answers = write_lines(tmp_path / "test.jsonl", [{**record, "response": "A"}])
    with pytest.raises(SystemExit, match=r"test.jsonl:1: missing field 'correct_ans' \(the test split has no answers"):
        eval_qbench.main(["--answers-file", str(answers)])


# ---------------------------------------------------------------- score files of the existing scorers


def test_textvqa_pope_and_sqa_score_files_round_trip(tmp_path):
    annotations = tmp_path / "TextVQA_0.5.1_val.json"
    annotations.write_text(json.dumps({"data": [{"image_id": "a1", "question": "What?", "answers": ["nokia"] * 10}]}))
    results = write_lines(
        tmp_path / "textvqa.jsonl", [{"question_id": "a1", "prompt": "What?\nAnswer.", "text": "Nokia"}]
    )
    argv = [
        "--annotation-file",
        str(annotations),
        "--result-file",
        str(results),
        "--scores-file",
        str(tmp_path / "t.json"),
    ]
    assert eval_textvqa.main(argv) == 0
    assert read_scores(tmp_path / "t.json") == {
        "benchmark": "textvqa", "scores": {"accuracy": 100.0, "count": 1}, "source": str(results),
    }  # fmt: skip

    (tmp_path / "coco").mkdir()
    write_lines(
        tmp_path / "coco" / "coco_pope_random.json",
        [{"question_id": 1, "label": "yes"}, {"question_id": 2, "label": "no"}],
    )
    questions = write_lines(tmp_path / "pope_q.jsonl", [{"question_id": i, "category": "random"} for i in (1, 2)])
    answers = write_lines(
        tmp_path / "pope_a.jsonl", [{"question_id": 1, "text": "Yes"}, {"question_id": 2, "text": "Yes"}]
    )
    argv = ["--annotation-dir", str(tmp_path / "coco"), "--question-file", str(questions),
            "--result-file", str(answers), "--scores-file", str(tmp_path / "p.json")]  # fmt: skip
    assert eval_pope.main(argv) == 0
    pope = read_scores(tmp_path / "p.json")
    # tp 1, fp 1: precision 1/2, recall 1, F1 2/3
    assert pope["benchmark"] == "pope" and pope["scores"]["f1"] == pytest.approx(200 / 3)
    assert pope["scores"]["random/yes_ratio"] == pytest.approx(100.0)

    (tmp_path / "problems.json").write_text(json.dumps({
        "1": {"choices": ["cat", "dog"], "answer": 1, "image": "image.png"},
        "2": {"choices": ["red", "blue"], "answer": 0, "image": None},
    }))  # fmt: skip
    answers = write_lines(
        tmp_path / "sqa.jsonl", [{"question_id": "1", "text": "B"}, {"question_id": "2", "text": "B"}]
    )
    argv = ["--base-dir", str(tmp_path), "--result-file", str(answers), "--scores-file", str(tmp_path / "s.json")]
    assert eval_science_qa.main(argv) == 0
    sqa = read_scores(tmp_path / "s.json")
    assert sqa["benchmark"] == "sqa" and sqa["scores"]["img_accuracy"] == 100.0 and sqa["scores"]["accuracy"] == 50.0
