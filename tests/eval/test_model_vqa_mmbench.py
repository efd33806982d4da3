"""model_vqa_mmbench on the tiny checkpoint: an MMBench TSV (base64 images inside) → answers → circular accuracy;
rotated rounds that agree with the TSV, batched equals single, resume after a kill, bad rows and images reported."""

import base64
import csv
import io
import json
import string

import pytest

from share4v.eval import model_vqa_mmbench
from share4v.eval.metrics import MMBENCH_INDEX_MODULUS, mmbench_circular_accuracy
from tests.helpers import random_image

COLUMNS = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "source", "l2-category", "comment",
           "split", "image"]  # fmt: skip
# index, question, hint, options A-D, answer; images are set in the fixture
ROWS = [
    (10, 'Which word is "quoted" here?', "Read it.", ["cat", "dog", "bird", "fish"], "B"),
    (11, "What colour dominates?", "nan", ["red", "green", "blue", ""], "C"),
    (12, "Is this a photo?", "", ["yes", "no", "none", "nan"], "A"),
    (13, "Broken image?", "", ["left", "right", "", ""], "B"),
]


def png_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture
def default_csv_limit():
    """Start from csv's default cell limit (128 KiB), which the first image exceeds; restore afterwards."""
    old = csv.field_size_limit(128 * 1024)
    yield
    csv.field_size_limit(old)


@pytest.fixture
def tsv(tmp_path):
    images = [png_base64(random_image(0, (220, 220))), png_base64(random_image(1)), "10", "bm90IGFuIGltYWdl"]
    assert len(images[0]) > 128 * 1024
    path = tmp_path / "mmbench_dev.tsv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(COLUMNS)
        for (index, question, hint, options, answer), image in zip(ROWS, images, strict=True):
            writer.writerow([index, question, hint, *options, answer, "cat", "src", "l2", "", "dev", image])
        malformed = ["not-a-number", "A malformed row?", "", "x", "y", "", "", "A", "c", "s", "l", "", "dev", "QQ=="]
        writer.writerow(malformed)
    return path


def answers(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(tsv, out, ckpt, *extra):
    args = ["--model-path", str(ckpt), "--question-file", str(tsv), "--answers-file", str(out), "--temperature", "0",
            "--max_new_tokens", "3", "--num-workers", "0", *extra]  # fmt: skip
    return model_vqa_mmbench.main(args)


def truth():
    """index → (the original options, the right original letter)."""
    return {row[0]: ([o for o in row[3] if o not in ("", "nan", "none")], row[4]) for row in ROWS}


def circular_rows(lines, predict=lambda line: line["text"]):
    """Answer lines → the rows `mmbench_circular_accuracy` scores: each round is its own variant (index + round *
    1e6), with the letters shown in that round and the shown letter of the right option."""
    rows = []
    for line in lines:
        letters = string.ascii_uppercase[: len(line["options"])]
        right = truth()[line["question_id"]][1]
        rows.append({"index": line["question_id"] + line["round_id"] * MMBENCH_INDEX_MODULUS,
                     "prediction": predict(line), "options": dict(zip(letters, line["options"], strict=True)),
                     "answer": letters[line["option_char"].index(right)]})  # fmt: skip
    return rows


def letter_shown_for(line, text):
    """What a perfect model answers: the letter the prompt shows before the right option's text."""
    [shown] = [row[0] for row in line["prompt"].split("\n") if row[1:3] == ". " and row[3:] == text]
    return shown


def test_all_rounds_pipeline_rotates_options_and_scores(tsv, tiny_ckpt, tmp_path, default_csv_limit, capsys):
    out = tmp_path / "answers.jsonl"
    assert run(tsv, out, tiny_ckpt, "--all-rounds", "--single-pred-prompt", "--batch-size", "2") == 0
    assert "1 unusable rows" in capsys.readouterr().err
    lines = answers(out)
    assert sorted((line["question_id"], line["round_id"]) for line in lines) == [
        (10, 0), (10, 1), (10, 2), (10, 3), (11, 0), (11, 1), (11, 2), (12, 0), (12, 1)
    ]  # fmt: skip
    for line in lines:
        options, _ = truth()[line["question_id"]]
        r = line["round_id"]
        assert line["options"] == options[r:] + options[:r]
        assert line["option_char"] == list("ABCD"[: len(options)][r:] + "ABCD"[: len(options)][:r])
        shown = "".join(f"\n{letter}. {option}" for letter, option in zip("ABCD", line["options"], strict=False))
        assert line["prompt"].endswith(shown) and "<image>" not in line["prompt"]
        assert set(line) == {"question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id",
                             "model_id", "metadata"}  # fmt: skip
    by_key = {(line["question_id"], line["round_id"]): line for line in lines}
    assert by_key[(10, 0)]["prompt"] == 'Read it.\nWhich word is "quoted" here?\nA. cat\nB. dog\nC. bird\nD. fish'
    assert by_key[(11, 1)]["prompt"] == "What colour dominates?\nA. green\nB. blue\nC. red"  # "nan" hint dropped
    # scoring: the model's own answers give some accuracy; a perfect reader of the prompt gets every question right
    # (so prompt, options and option_char agree), and always answering "A" gets none of them right
    assert 0.0 <= mmbench_circular_accuracy(circular_rows(lines)) <= 1.0
    perfect = circular_rows(lines, lambda line: letter_shown_for(line, truth()[line["question_id"]][0][
        "ABCD".index(truth()[line["question_id"]][1])]))  # fmt: skip
    assert mmbench_circular_accuracy(perfect) == 1.0
    assert mmbench_circular_accuracy(circular_rows(lines, lambda line: "A")) == 0.0
    # the undecodable image of row 13 is reported once per round, the malformed row with its line
    errors = answers(tmp_path / "answers.jsonl.errors.jsonl")
    image_errors = sorted((e["question_id"], e["round_id"]) for e in errors if "question_id" in e)
    assert image_errors == [(13, 0), (13, 1)]
    assert all("image" in e["error"] for e in errors if "question_id" in e)
    [bad_row] = [e for e in errors if "line" in e]
    assert bad_row["line"] == 6 and bad_row["index"] == "not-a-number" and "not an integer" in bad_row["error"]


def test_prompts_follow_the_original(tsv):
    questions, problems = model_vqa_mmbench.read_questions(tsv, single_pred_prompt=True)
    assert len(questions) == 4 and len(problems) == 1  # one round each without --all-rounds
    first = questions[0]
    assert first.question_id == 10 and first.fields["round_id"] == 0 and first.images[0].startswith("data:image")
    assert first.prompt == ('<image>\nRead it.\nWhich word is "quoted" here?\nA. cat\nB. dog\nC. bird\nD. fish'
                            "\nAnswer with the option's letter from the given choices directly.")  # fmt: skip
    assert questions[2].images == questions[0].images  # the image cell "10" shares row 10's image
    [cn, *_] = model_vqa_mmbench.read_questions(tsv, single_pred_prompt=True, lang="cn")[0]
    assert cn.prompt.endswith("D. fish\n请直接回答选项字母。")
    [plain, *_] = model_vqa_mmbench.read_questions(tsv)[0]
    assert plain.prompt.endswith("D. fish")
    chunks = [model_vqa_mmbench.read_questions(tsv, all_rounds=True, chunks=(2, i))[0] for i in range(2)]
    assert [sorted({q.question_id for q in c}) for c in chunks] == [[10, 11], [12, 13]]  # rows split, then rounds


def test_batched_equals_single_and_resume_after_a_kill(tsv, tiny_ckpt, tmp_path):
    single, batched = tmp_path / "single.jsonl", tmp_path / "batched.jsonl"
    assert run(tsv, single, tiny_ckpt, "--all-rounds") == 0
    assert run(tsv, batched, tiny_ckpt, "--all-rounds", "--batch-size", "2", "--num-workers", "1") == 0
    texts = lambda path: {(r["question_id"], r["round_id"]): r["text"] for r in answers(path)}  # noqa: E731
    assert texts(batched) == texts(single) and len(texts(single)) == 9
    # a kill after three answers, the fourth line torn half-way
    lines = single.read_text().splitlines()
    resumed = tmp_path / "resumed.jsonl"
    resumed.write_text("\n".join(lines[:3]) + "\n" + lines[3][:25])
    assert run(tsv, resumed, tiny_ckpt, "--all-rounds", "--batch-size", "2") == 0
    whole = [json.loads(line) for line in resumed.read_text().splitlines() if line.endswith("}")]
    keys = [(r["question_id"], r["round_id"]) for r in whole]
    assert len(keys) == len(set(keys))
    assert {key: r["text"] for key, r in zip(keys, whole, strict=True)} == texts(single)


def test_strict_stops_at_a_bad_row_or_image(tsv, tiny_ckpt, tmp_path):
    with pytest.raises(SystemExit, match=r"mmbench_dev.tsv:6: index 'not-a-number' is not an integer"):
        run(tsv, tmp_path / "a.jsonl", tiny_ckpt, "--strict")
    good = tmp_path / "good.tsv"
    good.write_text("\n".join(line for line in tsv.read_text().splitlines() if not line.startswith("not-a-number")))
    with pytest.raises(SystemExit, match=r"question 13: cannot read image from base64 data .*\(--strict\)"):
        run(good, tmp_path / "b.jsonl", tiny_ckpt, "--strict")
    with pytest.raises(SystemExit, match="no image column"):
        bare = tmp_path / "bare.tsv"
        bare.write_text("index\tquestion\n1\tWhy?\n")
        run(bare, tmp_path / "c.jsonl", tiny_ckpt)


def test_flags_and_defaults():
    parser = model_vqa_mmbench.build_parser()
    text = " ".join(parser.format_help().split())
    assert "(default: share4v_v1)" in text and "--lang {cn,en}" in text and "(default: 4)" in text
    args = parser.parse_args(["--model-path", "m", "--question-file", "q.tsv", "--answers-file", "a.jsonl"])
    assert (args.max_new_tokens, args.conv_mode, args.batch_size, args.all_rounds) == (1024, "share4v_v1", 1, False)
