"""model_vqa_qbench on the tiny checkpoint: an LLVisionQA JSON file → JSON-lines answers (the record + "response")
→ qbench_accuracy; the original prompt, batched equals single, resume after a kill, bad records and missing images
reported."""

import json

import pytest

from share4v.eval import model_vqa_qbench
from share4v.eval.metrics import qbench_accuracy
from tests.helpers import random_image

RECORDS = [
    {"img_path": "00001.jpg", "question": "How is the clarity of this image?", "candidates": ["High", "Medium", "Low"],
     "correct_ans": "Low", "type": 2, "concern": 0},
    {"img_path": "00002.jpg", "question": "Is this image noisy?", "candidates": ["Yes", "No"], "correct_ans": "Yes",
     "type": 0, "concern": 1},
    {"img_path": "00003.jpg", "question": "Which part is blurred?", "candidates": ["sky", "car", "tree", "road"],
     "correct_ans": "car", "type": 1, "concern": 2},
    {"img_path": "missing.jpg", "question": "Is it overexposed?", "candidates": ["Yes", "No"], "correct_ans": "No",
     "type": 0, "concern": 3},
    {"img_path": "00004.jpg", "question": "A record without candidates?"},
]  # fmt: skip


@pytest.fixture
def qbench(tmp_path):
    """playground/data/eval/qbench: llvisionqa_dev.json and images_llvisionqa/."""
    (tmp_path / "images_llvisionqa").mkdir()
    for seed, record in enumerate(RECORDS[:3]):
        random_image(seed).save(tmp_path / "images_llvisionqa" / record["img_path"], format="JPEG")
    (tmp_path / "llvisionqa_dev.json").write_text(json.dumps(RECORDS, ensure_ascii=False, indent=2))
    return tmp_path


def answers(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(qbench, out, ckpt, *extra):
    args = ["--model-path", str(ckpt), "--questions-file", str(qbench / "llvisionqa_dev.json"), "--image-folder",
            str(qbench / "images_llvisionqa"), "--answers-file", str(out), "--max_new_tokens", "3",
            "--num-workers", "0", *extra]  # fmt: skip
    return model_vqa_qbench.main(args)


def test_pipeline_writes_records_with_responses_and_scores(qbench, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    assert run(qbench, out, tiny_ckpt, "--batch-size", "2") == 0
    assert "1 unusable records" in capsys.readouterr().err
    lines = answers(out)
    assert [line["question_id"] for line in lines] == [0, 1, 2]
    for line, record in zip(lines, RECORDS, strict=False):
        assert {key: line[key] for key in record} == record and isinstance(line["response"], str)
        assert "text" not in line
    assert lines[0]["prompt"] == ("<image>\nHow is the clarity of this image?\nChoose between one of the options as "
                                  "follows:\nA. High\nB. Medium\nC. Low\n")  # fmt: skip
    assert 0.0 <= qbench_accuracy(lines) <= 1.0
    assert qbench_accuracy([{**line, "response": "C"} for line in lines]) == 1 / 3  # only record 0's answer is C
    right = ["C", "A. Yes", "The answer is B."]
    assert qbench_accuracy([{**line, "response": r} for line, r in zip(lines, right, strict=True)]) == 1.0
    errors = answers(tmp_path / "answers.jsonl.errors.jsonl")
    assert [(e.get("question_id"), e.get("entry")) for e in errors] == [(None, 4), (3, None)]
    assert "'candidates' missing" in errors[0]["error"] and errors[1]["error"].startswith("image file not found")


def test_greedy_by_default_and_chinese_prompt(qbench):
    args = model_vqa_qbench.build_parser().parse_args(["--model-path", "m", "--questions-file", "q", "--answers-file",
                                                       "a"])  # fmt: skip
    assert (args.temperature, args.max_new_tokens, args.conv_mode, args.load_8bit) == (0.0, 1024, "share4v_v1", False)
    assert "(default: share4v_v1)" in " ".join(model_vqa_qbench.build_parser().format_help().split())
    [first, *_], _ = model_vqa_qbench.read_questions(qbench / "llvisionqa_dev.json", qbench, lang="zh")
    assert first.prompt.endswith("image?\n在下列选项中选择一个:\nA. High\nB. Medium\nC. Low\n")
    # the original's flag name is --questions-file; LLaVA's script passes --question-file
    args = model_vqa_qbench.build_parser().parse_args(["--model-path", "m", "--question-file", "q", "--answers-file",
                                                       "a"])  # fmt: skip
    assert args.questions_file == "q"


def test_batched_equals_single_and_resume_after_a_kill(qbench, tiny_ckpt, tmp_path):
    single, batched = tmp_path / "single.jsonl", tmp_path / "batched.jsonl"
    assert run(qbench, single, tiny_ckpt) == 0
    assert run(qbench, batched, tiny_ckpt, "--batch-size", "2", "--num-workers", "1") == 0
    responses = lambda path: {r["question_id"]: r["response"] for r in answers(path)}  # noqa: E731
    assert responses(batched) == responses(single) and len(responses(single)) == 3
    first, second, _third = single.read_text().splitlines()
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_text(first + "\n" + second[:30])  # killed while writing the second answer
    assert run(qbench, resumed, tiny_ckpt, "--batch-size", "2") == 0
    whole = [json.loads(line) for line in resumed.read_text().splitlines() if line.endswith("}")]
    assert sorted(r["question_id"] for r in whole) == [0, 1, 2]
    assert {r["question_id"]: r["response"] for r in whole} == responses(single)


def test_strict_stops_at_a_bad_record_or_missing_image(qbench, tiny_ckpt, tmp_path):
    with pytest.raises(SystemExit, match=r"llvisionqa_dev.json\[4\]: record 4: 'candidates' missing or empty"):
        run(qbench, tmp_path / "a.jsonl", tiny_ckpt, "--strict")
    (qbench / "llvisionqa_dev.json").write_text(json.dumps(RECORDS[:4]))
    with pytest.raises(SystemExit, match=r"question 3: image file not found"):
        run(qbench, tmp_path / "b.jsonl", tiny_ckpt, "--strict")
    (qbench / "llvisionqa_dev.json").write_text('{"img_path": "x.jpg"}')
    with pytest.raises(SystemExit, match="expected a JSON list of records"):
        run(qbench, tmp_path / "c.jsonl", tiny_ckpt)
