"""eval/eval_qbench.py: Q-Bench (LLVisionQA) accuracy of an answer file, overall and per question type and concern.

    python -m share4v.eval.eval_qbench \
        --answers-file playground/data/eval/qbench/llvisionqa_dev_share4v-7b_answers.jsonl

Each answer is the question record (`question`, `candidates`, `correct_ans`, and in LLVisionQA `type` and
`concern`) with the model's `response` added, as `share4v.eval.model_vqa_qbench` writes it; records may be one per
line or back to back (the original driver wrote them without newlines). A response is read as an option letter or
text (`share4v.eval.metrics.qbench_accuracy`: the prompt lists the candidates as "A. ...", "B. ..."). Only the dev
split has `correct_ans`; the test split is scored by the benchmark's server. With `--questions-file` (the records'
`question_id` is their position in it), questions the driver skipped count as wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from share4v.eval.jsonl import read_json_list
from share4v.eval.metrics import qbench_accuracy
from share4v.eval.scores import write_scores

REQUIRED = ("response", "candidates", "correct_ans")
GROUPS = ("type", "concern")  # LLVisionQA's question type (yes-or-no / what / how) and concern (distortion / other ...)


def read_records(path: str | Path) -> list[dict]:
    """The JSON objects of `path`, one per line or back to back, each checked for `response`, `candidates` and
    `correct_ans`.

    Raises:
        FileNotFoundError / ValueError: naming the file and the line of a record that does not parse or lacks a field.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    text = path.read_text(encoding="utf-8")
    decoder, records, position = json.JSONDecoder(), [], 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return records
        line = text.count("\n", 0, position) + 1
        try:
            record, position = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{line}: not JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{line}: expected a JSON object, got {type(record).__name__}")
        missing = [key for key in REQUIRED if key not in record]
        if missing:
            hint = " (the test split has no answers: its server scores it)" if missing[0] == "correct_ans" else ""
            raise ValueError(f"{path}:{line}: missing field {missing[0]!r}{hint}")
        records.append(record)


def _unanswered(questions_file: Path, records: list[dict]) -> list[dict]:
    """The questions of `questions_file` (a JSON list) that no record answers (`question_id` = list position), each
    with an empty response."""
    questions = read_json_list(questions_file, "question records")
    if any("question_id" not in record for record in records):
        raise ValueError(
            f"an answer lacks 'question_id' (its position in {questions_file}), which --questions-file needs"
        )
    answered = {str(record["question_id"]) for record in records}
    missing = [q for position, q in enumerate(questions) if str(position) not in answered]
    for question in missing:
        if not isinstance(question, dict) or "candidates" not in question or "correct_ans" not in question:
            raise ValueError(f"{questions_file}: a question lacks 'candidates' or 'correct_ans'")
    return [{**question, "response": ""} for question in missing]


def score_qbench(answers_file: str | Path, questions_file: str | Path | None = None) -> dict[str, float | int]:
    """`accuracy` in [0, 1], `count` and `unanswered`, then `<group>/<value>` accuracies for each `type` and
    `concern` value. With `questions_file`, its questions that were never answered count as wrong."""
    records = read_records(answers_file)
    unanswered = _unanswered(Path(questions_file), records) if questions_file else []
    records += unanswered
    if not records:
        raise ValueError(f"{answers_file}: no answers")
    scores: dict[str, float | int] = {
        "accuracy": qbench_accuracy(records),
        "count": len(records),
        "unanswered": len(unanswered),
    }
    for group in GROUPS:
        for value in sorted({str(r[group]) for r in records if group in r}):
            scores[f"{group}/{value}"] = qbench_accuracy([r for r in records if str(r.get(group)) == value])
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--answers-file",
        "--filepath",
        dest="answers_file",
        required=True,
        help="answers: question records with 'response' added",
    )
    parser.add_argument(
        "--questions-file",
        default=None,
        help="the questions JSON, so that questions never answered count as wrong (default: score the answers only)",
    )
    parser.add_argument("--scores-file", default=None, help="score file to write (default: none)")
    args = parser.parse_args(argv)
    try:
        scores = score_qbench(args.answers_file, args.questions_file)
        print(f"Questions: {scores['count']} ({scores['unanswered']} unanswered)")
        print(f"Accuracy: {100 * scores['accuracy']:.2f}%")
        for key, value in scores.items():
            if "/" in key:
                print(f"  {key}: {100 * value:.2f}%")
        if args.scores_file:
            percent = {key: value if key in ("count", "unanswered") else 100 * value for key, value in scores.items()}
            print(f"wrote {write_scores(args.scores_file, 'qbench', percent, source=args.answers_file)}")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
