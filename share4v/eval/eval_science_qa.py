"""eval/eval_science_qa.py: ScienceQA accuracy of an answer file, overall and on the questions with an image
(IMG-accuracy, the number ShareGPT4V reports), against ScienceQA's problems.json.

    python -m share4v.eval.eval_science_qa --base-dir playground/data/eval/scienceqa \
        --result-file answers/scienceqa/merge.jsonl --output-file answers/scienceqa/output.jsonl \
        --output-result answers/scienceqa/result.json

`--base-dir` holds `problems.json` (and `pid_splits.json`, whose `--split` list says which questions count). Answers
(`question_id` = the problem id, `text`) are read as option letters by the original scorer's rules
(`share4v.eval.metrics.scienceqa_extract_letter`); a question with no answer counts as wrong.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from share4v.eval.jsonl import read_jsonl
from share4v.eval.metrics import scienceqa_accuracy, scienceqa_extract_letter
from share4v.eval.scores import write_scores
from share4v.eval.submission import write_json


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def score_science_qa(base_dir: str | Path, result_file: str | Path, split: str = "test") -> dict:
    """`{"accuracy", "img_accuracy", "count", "img_count", "per_question": {id: {...}}}`."""
    base_dir = Path(base_dir)
    problems = _read_json(base_dir / "problems.json")
    splits = base_dir / "pid_splits.json"
    ids = _read_json(splits)[split] if splits.is_file() else sorted(problems)
    answers = {str(row["question_id"]): row["text"] for row in read_jsonl(result_file, ("question_id", "text"))}
    rows, per_question = [], {}
    for pid in ids:
        problem = problems[pid]
        row = {"prediction": answers.get(pid, ""), "choices": problem["choices"], "answer": problem["answer"],
               "image": bool(problem.get("image"))}  # fmt: skip
        rows.append(row)
        letter = scienceqa_extract_letter(row["prediction"], len(row["choices"]))
        per_question[pid] = {"prediction": row["prediction"], "parsed": letter,
                             "correct": letter is not None and ord(letter) - ord("A") == row["answer"]}  # fmt: skip
    with_image = [row for row in rows if row["image"]]
    return {
        "accuracy": scienceqa_accuracy(rows),
        "img_accuracy": scienceqa_accuracy(with_image) if with_image else None,
        "count": len(rows),
        "img_count": len(with_image),
        "per_question": per_question,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-dir", required=True, help="folder with problems.json and pid_splits.json")
    parser.add_argument("--result-file", required=True, help="answers (JSON lines with question_id, text)")
    parser.add_argument("--output-file", default=None, help="per-question results (JSON) to write")
    parser.add_argument("--output-result", default=None, help="the scores (JSON) to write")
    parser.add_argument("--split", default="test", help="which pid_splits.json list to score (default: %(default)s)")
    parser.add_argument("--scores-file", default=None, help="score file to write, in percent (default: none)")
    args = parser.parse_args(argv)
    try:
        result = score_science_qa(args.base_dir, args.result_file, args.split)
        if args.output_file:
            write_json(result["per_question"], args.output_file)
        if args.output_result:
            write_json({k: v for k, v in result.items() if k != "per_question"}, args.output_result)
        if args.scores_file:
            scores = {"accuracy": 100 * result["accuracy"], "count": result["count"], "img_count": result["img_count"]}
            if result["img_accuracy"] is not None:
                scores["img_accuracy"] = 100 * result["img_accuracy"]
            write_scores(args.scores_file, "sqa", scores, source=args.result_file)
    except (OSError, ValueError, KeyError) as err:
        sys.exit(f"error: {err}")
    print(f"Total: {result['count']}, Accuracy: {100 * result['accuracy']:.2f}%")
    if result["img_accuracy"] is not None:
        print(f"IMG-Accuracy: {100 * result['img_accuracy']:.2f}% ({result['img_count']} questions with an image)")
    if args.scores_file:
        print(f"wrote {args.scores_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
