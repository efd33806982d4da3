"""model_vqa_science on the tiny checkpoint: a ScienceQA question file in LLaVA's conversation format → answers →
eval_science_qa against problems.json / pid_splits.json; text-only questions, the answer prompter's second pass,
batched equals single, resume after a kill, bad entries and missing images reported."""

import json

import pytest

from share4v.eval import eval_science_qa, model_vqa_science
from share4v.eval.answer_loop import answer_questions
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.mm_utils import tokenizer_image_token
from tests.helpers import random_image

SUFFIX = "\nAnswer with the option's letter from the given choices directly."
# pid: (question, choices, answer index, has an image)
PROBLEMS = {
    "4": ("Which animal is shown?", ["cat", "dog"], 1, True),
    "7": ("Which colour is most common?", ["red", "green", "blue"], 2, True),
    "9": ("Which is a mammal?", ["frog", "whale"], 1, False),
    "12": ("Which season is it?", ["winter", "summer"], 0, True),  # its image file is missing
}


@pytest.fixture
def sqa(tmp_path):
    """The layout of playground/data/eval/scienceqa: the question file, images/test/<pid>/image.png, problems.json
    and pid_splits.json."""
    entries, problems = [], {}
    for pid, (question, choices, answer, has_image) in PROBLEMS.items():
        options = " ".join(f"({chr(65 + i)}) {choice}" for i, choice in enumerate(choices))
        value = f"Context: N/A\nQuestion: {question}\nOptions: {options}"
        turns = [{"from": "human", "value": value}, {"from": "gpt", "value": f"The answer is {chr(65 + answer)}."}]
        entry = {"id": pid, "conversations": turns}
        if has_image:
            entry["image"] = f"{pid}/image.png"
            entry["conversations"][0]["value"] = "<image>\n" + value
            if pid != "12":
                (tmp_path / "images" / "test" / pid).mkdir(parents=True)
                random_image(int(pid)).save(tmp_path / "images" / "test" / pid / "image.png")
        entries.append(entry)
        problems[pid] = {"question": question, "choices": choices, "answer": answer, "hint": "",
                         "image": "image.png" if has_image else None, "split": "test"}  # fmt: skip
    entries.insert(2, {"id": "bad", "conversations": "not a list"})
    (tmp_path / "share4v_test_CQM-A.json").write_text(json.dumps(entries))
    (tmp_path / "problems.json").write_text(json.dumps(problems))
    # "test": the answerable pids; "all" adds the one whose image is missing (scored as unanswered)
    splits = {"test": [pid for pid in PROBLEMS if pid != "12"], "all": list(PROBLEMS), "train": []}
    (tmp_path / "pid_splits.json").write_text(json.dumps(splits))
    return tmp_path


def answers(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(sqa, out, ckpt, *extra):
    args = ["--model-path", str(ckpt), "--question-file", str(sqa / "share4v_test_CQM-A.json"), "--image-folder",
            str(sqa / "images" / "test"), "--answers-file", str(out), "--temperature", "0", "--max_new_tokens", "3",
            "--num-workers", "0", *extra]  # fmt: skip
    return model_vqa_science.main(args)


def test_pipeline_answers_and_scores_with_eval_science_qa(sqa, tiny_ckpt, tmp_path, capsys):
    out = tmp_path / "answers.jsonl"
    assert run(sqa, out, tiny_ckpt, "--single-pred-prompt", "--batch-size", "2") == 0
    assert "1 unusable questions" in capsys.readouterr().err
    lines = {line["question_id"]: line for line in answers(out)}
    assert sorted(lines) == ["4", "7", "9"]
    assert lines["4"]["prompt"] == ("<image>\nContext: N/A\nQuestion: Which animal is shown?\nOptions: (A) cat (B) dog"
                                    + SUFFIX)  # fmt: skip
    assert lines["9"]["prompt"] == "Context: N/A\nQuestion: Which is a mammal?\nOptions: (A) frog (B) whale" + SUFFIX
    errors = answers(tmp_path / "answers.jsonl.errors.jsonl")
    assert {e.get("id") or e.get("question_id") for e in errors} == {"bad", "12"}
    assert [e["entry"] for e in errors if "entry" in e] == [2]
    assert next(e["error"] for e in errors if e.get("question_id") == "12").startswith("image file not found: ")
    # the original scorer's command line over the answers; IMG-accuracy counts the questions with an image
    result = tmp_path / "result.json"
    argv = ["--base-dir", str(sqa), "--result-file", str(out), "--output-result", str(result)]
    assert eval_science_qa.main(argv) == 0
    scores = json.loads(result.read_text())
    assert (scores["count"], scores["img_count"]) == (3, 2) and 0.0 <= scores["img_accuracy"] <= 1.0
    # the right letters (as the model would answer) score 100%
    right = tmp_path / "right.jsonl"
    right.write_text("".join(json.dumps({**lines[pid], "text": chr(65 + PROBLEMS[pid][2])}) + "\n" for pid in lines))
    perfect = eval_science_qa.score_science_qa(sqa, right)
    assert perfect["accuracy"] == 1.0 and perfect["img_accuracy"] == 1.0


def test_a_question_left_unanswered_counts_as_wrong(sqa, tmp_path):
    right = tmp_path / "right.jsonl"
    right.write_text("".join(json.dumps({"question_id": pid, "text": chr(65 + PROBLEMS[pid][2])}) + "\n"
                             for pid in ("4", "7", "9")))  # fmt: skip
    scores = eval_science_qa.score_science_qa(sqa, right, split="all")  # "12" (image missing) has no answer
    assert scores["accuracy"] == 0.75 and scores["img_accuracy"] == 2 / 3


def test_batched_equals_single_and_resume_after_a_kill(sqa, tiny_ckpt, tmp_path):
    single, batched = tmp_path / "single.jsonl", tmp_path / "batched.jsonl"
    assert run(sqa, single, tiny_ckpt) == 0
    assert run(sqa, batched, tiny_ckpt, "--batch-size", "2", "--num-workers", "1") == 0
    texts = lambda path: {r["question_id"]: r["text"] for r in answers(path)}  # noqa: E731
    assert texts(batched) == texts(single) and len(texts(single)) == 3
    resumed = tmp_path / "resumed.jsonl"
    first, second, _third = single.read_text().splitlines()
    resumed.write_text(first + "\n" + second[:20])  # killed while writing the second answer
    assert run(sqa, resumed, tiny_ckpt, "--batch-size", "2") == 0
    whole = [json.loads(line) for line in resumed.read_text().splitlines() if line.endswith("}")]
    assert sorted(r["question_id"] for r in whole) == ["4", "7", "9"]
    assert {r["question_id"]: r["text"] for r in whole} == texts(single)


def test_answer_prompter_asks_again_after_the_answer(sqa, tiny, tmp_path):
    engine = Share4VEngine(*tiny, conv_mode="share4v_v0")
    questions, _ = model_vqa_science.read_questions(sqa / "share4v_test_CQM-A.json", sqa / "images" / "test")
    questions = [q for q in questions if q.question_id != "12"]
    params = GenerationParams(temperature=0, max_new_tokens=3)
    chat = Chat.single(questions[0].prompt, list(questions[0].images))
    [first_answer] = engine.generate([chat], params)
    seen, real_run = [], engine.run

    def recording_run(batch, params):
        seen.append((batch.input_ids, batch.attention_mask, params.max_new_tokens))
        return real_run(batch, params)

    engine.run = recording_run
    prompter = model_vqa_science.AnswerPrompter(engine)
    batched, single = tmp_path / "batched.jsonl", tmp_path / "single.jsonl"
    answer_questions(prompter, questions, batched, params, "tiny", batch_size=2, num_workers=1)
    answer_questions(prompter, questions, single, params, "tiny", batch_size=1, num_workers=0)
    texts = {r["question_id"]: r["text"] for r in answers(batched)}
    assert texts == {r["question_id"]: r["text"] for r in answers(single)}
    assert texts["4"].startswith(first_answer + "\n The answer is ")
    assert all("\n The answer is " in text for text in texts.values())
    # the second pass continues the filled template + first answer + " ###\nANSWER:", for up to 64 new tokens
    ids, mask, max_new_tokens = seen[1]
    prompt = engine.conversation(chat).get_prompt() + first_answer + " ###\nANSWER:"
    assert ids[0][mask[0].bool()].tolist() == tokenizer_image_token(prompt, engine.tokenizer)
    assert (seen[0][2], max_new_tokens) == (3, 64)


def test_strict_stops_at_a_bad_entry_or_missing_image(sqa, tiny_ckpt, tmp_path):
    with pytest.raises(SystemExit, match=r"share4v_test_CQM-A.json\[2\]: question 'bad': no human turn"):
        run(sqa, tmp_path / "a.jsonl", tiny_ckpt, "--strict")
    file = sqa / "share4v_test_CQM-A.json"
    file.write_text(json.dumps([e for e in json.loads(file.read_text()) if e["id"] != "bad"]))
    with pytest.raises(SystemExit, match=r"question '12': image file not found: "):
        run(sqa, tmp_path / "b.jsonl", tiny_ckpt, "--strict")
    file.write_text("{}")
    with pytest.raises(SystemExit, match="expected a JSON list"):
        run(sqa, tmp_path / "c.jsonl", tiny_ckpt)


def test_flags_and_defaults():
    parser = model_vqa_science.build_parser()
    assert "(default: share4v_v0)" in " ".join(parser.format_help().split())
    args = parser.parse_args(["--model-path", "m", "--question-file", "q.json", "--answers-file", "a.jsonl"])
    assert (args.max_new_tokens, args.conv_mode, args.single_pred_prompt, args.answer_prompter) == (
        1024, "share4v_v0", False, False
    )  # fmt: skip


def test_an_image_that_is_not_a_file_name_is_a_listed_problem(tmp_path):
    turns = [{"from": "human", "value": "<image>\nWhich?"}]
    (tmp_path / "q.json").write_text(json.dumps([{"id": "1", "image": ["a.png"], "conversations": turns}]))
    questions, problems = model_vqa_science.read_questions(tmp_path / "q.json", tmp_path)
    assert questions == [] and problems == [
        {"entry": 0, "id": "1", "error": "question '1': image must be a file name, not list"}
    ]
