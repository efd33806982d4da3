"""The answer-file loop behind model_vqa_loader: batched equals single, resume without duplicates or gaps, bad
questions and images reported with their id and skipped, the original's chunking."""

import json

import pytest

from share4v.eval import model_vqa_loader
from share4v.eval.answer_loop import Question, answer_questions, chunk
from share4v.inference.engine import GenerationParams, Share4VEngine
from tests.helpers import random_image

GREEDY = GenerationParams(temperature=0, max_new_tokens=4)


@pytest.fixture(scope="module")
def engine(tiny):
    return Share4VEngine(*tiny)


@pytest.fixture
def bench(tmp_path):
    for index in range(5):
        random_image(index).save(tmp_path / f"{index}.png")
    rows = [{"question_id": f"q{i}", "image": f"{i}.png", "text": f"What is in picture {i}?"} for i in range(5)]
    rows.append({"question_id": "q5", "image": "missing.png", "text": "And here?"})
    rows.append({"question_id": "q6", "text": "A question without an image?"})
    lines = [json.dumps(row) for row in rows]
    lines.insert(3, "{not json")
    (tmp_path / "questions.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def answers(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_batched_answers_equal_single_and_bad_input_is_reported(engine, bench, tmp_path):
    questions, problems = model_vqa_loader.read_questions(bench / "questions.jsonl", bench, strict=False)
    assert problems == [{"line": 4, "error": problems[0]["error"]}] and len(questions) == 7
    batched, single = tmp_path / "batched.jsonl", tmp_path / "single.jsonl"
    counts = answer_questions(engine, questions, batched, GREEDY, "tiny", batch_size=4, num_workers=1)
    answer_questions(engine, questions, single, GREEDY, "tiny", batch_size=1, num_workers=0)
    assert counts == {"answered": 6, "failed": 1, "skipped": 0}
    assert {r["question_id"]: r["text"] for r in answers(batched)} == {
        r["question_id"]: r["text"] for r in answers(single)
    }
    row = answers(batched)[0]
    assert set(row) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}
    assert row["metadata"] == {"conv_mode": engine.conv_mode, "temperature": 0.0, "top_p": None, "num_beams": 1,
                               "max_new_tokens": GREEDY.max_new_tokens, "batch_size": 4}  # fmt: skip
    assert row["prompt"] == "What is in picture 0?" and row["model_id"] == "tiny"  # the text, as the original
    [error] = answers(tmp_path / "batched.jsonl.errors.jsonl")
    assert error["question_id"] == "q5" and "missing.png" in error["error"]
    with pytest.raises(ValueError, match="q5"):
        answer_questions(engine, questions, tmp_path / "strict.jsonl", GREEDY, "tiny", strict=True, num_workers=0)


def test_a_killed_run_resumes_without_duplicates_or_gaps(engine, bench, tmp_path, monkeypatch):
    questions = [Question(f"q{i}", f"<image>\nWhat is in picture {i}?", (str(bench / f"{i}.png"),)) for i in range(5)]
    out = tmp_path / "answers.jsonl"
    real_run, calls = engine.run, {"n": 0}

    def killed_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_run(*args, **kwargs)

    monkeypatch.setattr(engine, "run", killed_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        answer_questions(engine, questions, out, GREEDY, "tiny", batch_size=2, num_workers=0)
    with out.open("ab") as f:
        f.write('{"question_id": "q4", "text": "答'.encode()[:-1])  # torn by the kill, inside a character
    monkeypatch.setattr(engine, "run", real_run)
    counts = answer_questions(engine, questions, out, GREEDY, "tiny", batch_size=2, num_workers=0)
    assert counts["skipped"] == 2 and counts["answered"] == 3
    ids = [row["question_id"] for row in answers(out)]  # every line whole: the torn one was cut
    assert sorted(ids) == [f"q{i}" for i in range(5)]


def test_chunks_are_the_originals_contiguous_ceil_split():
    items = list(range(10))
    assert [chunk(items, 3, i) for i in range(3)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    with pytest.raises(ValueError, match="--chunk-idx"):
        chunk(items, 3, 3)


def test_command_line_end_to_end(tiny_ckpt, bench, tmp_path, capsys):
    out = tmp_path / "cli.jsonl"
    args = ["--model-path", str(tiny_ckpt), "--question-file", str(bench / "questions.jsonl"), "--image-folder",
            str(bench), "--answers-file", str(out), "--temperature", "0", "--max_new_tokens", "3", "--batch-size", "3",
            "--num-workers", "0", "--num-chunks", "2", "--chunk-idx", "0"]  # fmt: skip
    assert model_vqa_loader.main(args) == 0
    assert [row["question_id"] for row in answers(out)] == ["q0", "q1", "q2", "q3"]
    assert "1 unusable question lines" in capsys.readouterr().err


def test_a_rerun_lists_its_own_problems_once(tiny_ckpt, bench, tmp_path):
    out = tmp_path / "cli.jsonl"
    args = ["--model-path", str(tiny_ckpt), "--question-file", str(bench / "questions.jsonl"), "--image-folder",
            str(bench), "--answers-file", str(out), "--temperature", "0", "--max_new_tokens", "2",
            "--num-workers", "0"]  # fmt: skip
    for _ in range(2):  # the second run retries the missing image and lists it again, in place of the first's
        assert model_vqa_loader.main(args) == 0
        problems = answers(tmp_path / "cli.jsonl.errors.jsonl")
        assert sorted(str(row.get("line", row.get("question_id"))) for row in problems) == ["4", "q5"]
    assert sorted(row["question_id"] for row in answers(out)) == ["q0", "q1", "q2", "q3", "q4", "q6"]


def test_model_vqa_takes_the_same_files_with_long_answers_by_default(tiny_ckpt, bench, tmp_path, monkeypatch):
    from share4v.eval import model_vqa

    seen = {}
    monkeypatch.setattr(model_vqa_loader, "main", lambda argv, parser: seen.update(vars(parser.parse_args(argv))))
    model_vqa.main(["--model-path", "x", "--question-file", "q", "--answers-file", "a"])
    assert seen["max_new_tokens"] == 1024 and seen["conv_mode"] == "share4v_v1"
    monkeypatch.undo()
    out = tmp_path / "vqa.jsonl"
    args = ["--model-path", str(tiny_ckpt), "--question-file", str(bench / "questions.jsonl"), "--image-folder",
            str(bench), "--answers-file", str(out), "--temperature", "0", "--max_new_tokens", "3",
            "--num-workers", "0"]  # fmt: skip
    assert model_vqa.main(args) == 0
    assert len(answers(out)) == 6


def test_questions_sharing_an_id_resume_one_by_one(tiny_ckpt, tmp_path):
    """TextVQA's and MME's question ids name the image: a run killed between two questions of one image answers
    the second on rerun (resuming by id alone would skip it)."""
    random_image(0).save(tmp_path / "0.png")
    rows = [{"question_id": 7, "image": "0.png", "text": f"Question {i} about this picture?"} for i in range(2)]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "a.jsonl"
    args = ["--model-path", str(tiny_ckpt), "--question-file", str(tmp_path / "q.jsonl"), "--image-folder",
            str(tmp_path), "--answers-file", str(out), "--temperature", "0", "--max_new_tokens", "3",
            "--num-workers", "0"]  # fmt: skip
    assert model_vqa_loader.main(args) == 0
    whole = answers(out)
    out.write_text(json.dumps(whole[0]) + "\n")  # killed after the first question
    assert model_vqa_loader.main(args) == 0
    assert [(row["question_id"], row["prompt"], row["text"]) for row in answers(out)] == [
        (row["question_id"], row["prompt"], row["text"]) for row in whole
    ]


def test_an_image_that_is_not_a_file_name_is_a_listed_problem(tmp_path):
    lines = [{"question_id": 1, "image": ["a.png"], "text": "What?"}, {"question_id": 2, "image": 7, "text": "What?"}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    questions, problems = model_vqa_loader.read_questions(tmp_path / "q.jsonl", tmp_path, strict=False)
    assert questions == [] and problems == [
        {"line": 1, "error": "image must be a file name, not list"},
        {"line": 2, "error": "image must be a file name, not int"},
    ]


def test_an_answer_file_of_the_old_prompt_format_resumes(engine, bench, tmp_path):
    questions, _ = model_vqa_loader.read_questions(bench / "questions.jsonl", bench, strict=False)
    out = tmp_path / "old.jsonl"
    old = [{"question_id": q.question_id, "prompt": q.prompt, "text": "an old answer"} for q in questions[:3]]
    out.write_text("".join(json.dumps(row) + "\n" for row in old))  # prompt: "<image>\n" + the question's text
    assert old[0]["prompt"].startswith("<image>\n")
    counts = answer_questions(engine, questions, out, GREEDY, "tiny", num_workers=0,
                              resume_by=("question_id", "prompt"))  # fmt: skip
    assert counts["skipped"] == 3 and sorted(row["question_id"] for row in answers(out)) == sorted(
        q.question_id for q in questions if q.question_id != "q5"
    )  # each once (q5's image is missing)
