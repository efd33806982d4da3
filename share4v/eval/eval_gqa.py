"""eval/eval_gqa.py: GQA accuracy of predictions against the question file, as the official eval.py counts it.

    python -m share4v.eval.eval_gqa --questions playground/data/eval/gqa/data/testdev_balanced_questions.json \
        --predictions playground/data/eval/gqa/data/testdev_balanced_predictions.json

`--questions` is GQA's own file, `{"<question id>": {"answer": ..., "isBalanced": ...}}`; only balanced questions count
(all of testdev_balanced are). `--predictions` is either the converter's `[{"questionId", "prediction"}]` (a JSON
list, see scripts/convert_gqa_for_eval.py) or the answer file itself (JSON lines with question_id, text). Both sides
are compared lower-cased, without a final period (`share4v.eval.metrics.gqa_accuracy`); a question with no
prediction counts as wrong (the official script stops instead).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from share4v.eval.jsonl import read_jsonl
from share4v.eval.metrics import gqa_accuracy
from share4v.eval.scores import write_scores


def _read_json(path: Path):
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg})") from None


def read_predictions(path: str | Path) -> dict[str, str]:
    """`{question id: prediction}` from the converter's JSON list or from an answer file (JSON lines)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    if not path.read_text(encoding="utf-8").lstrip().startswith("["):
        return {str(row["question_id"]): row["text"] for row in read_jsonl(path, ("question_id", "text"))}
    predictions = {}
    for position, row in enumerate(_read_json(path)):
        if not isinstance(row, dict) or "questionId" not in row or "prediction" not in row:
            raise ValueError(f"{path}: entry {position} needs 'questionId' and 'prediction'")
        predictions[str(row["questionId"])] = row["prediction"]
    return predictions


def score_gqa(questions_file: str | Path, predictions_file: str | Path) -> dict:
    """`{"accuracy", "count", "missing"}`: accuracy in [0, 1] over the balanced questions."""
    questions_file = Path(questions_file)
    questions = _read_json(questions_file)
    if not isinstance(questions, dict):
        raise ValueError(f"{questions_file}: expected an object {{question id: question}}")
    predictions = read_predictions(predictions_file)
    ids, answers = [], []
    for qid, question in questions.items():
        if not isinstance(question, dict) or "answer" not in question:
            raise ValueError(f"{questions_file}: question {qid!r} lacks field 'answer'")
        if question.get("isBalanced", True):
            ids.append(qid)
            answers.append(question["answer"])
    unknown = predictions.keys() - questions.keys()
    if unknown:
        raise ValueError(f"{predictions_file}: question id {sorted(unknown)[0]!r} is not in {questions_file}")
    if not ids:
        raise ValueError(f"{questions_file}: no balanced questions to score")
    accuracy = gqa_accuracy([predictions.get(qid) for qid in ids], answers)
    return {"accuracy": accuracy, "count": len(ids), "missing": sum(qid not in predictions for qid in ids)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--questions", required=True, help="GQA's questions JSON (e.g. testdev_balanced_questions.json)"
    )
    parser.add_argument("--predictions", required=True, help="predictions JSON list, or answers (JSON lines)")
    parser.add_argument("--scores-file", default=None, help="score file to write (default: none)")
    args = parser.parse_args(argv)
    try:
        result = score_gqa(args.questions, args.predictions)
        print(f"Questions: {result['count']} ({result['missing']} without a prediction)")
        print(f"Accuracy: {100 * result['accuracy']:.2f}%")
        if args.scores_file:
            scores = {"accuracy": 100 * result["accuracy"], "count": result["count"], "missing": result["missing"]}
            print(f"wrote {write_scores(args.scores_file, 'gqa', scores, source=args.predictions)}")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
