"""eval/eval_vqa.py: VQA soft accuracy of an answer file against VQAv2 or VizWiz val annotations.

    python -m share4v.eval.eval_vqa --annotation-file v2_mscoco_val2014_annotations.json \
        [--question-file llava_vqav2_val.jsonl] --result-file answers/vqav2_val/merge.jsonl
    python -m share4v.eval.eval_vqa --annotation-file vizwiz/val.json --question-file vizwiz/llava_val.jsonl \
        --result-file answers/vizwiz_val/merge.jsonl

Annotation formats, as the datasets publish them:
- VQAv2: `{"annotations": [{"question_id", "answers": [{"answer": ...}, ...], "answer_type"?}, ...]}`; answers are
  matched by `question_id`.
- VizWiz: `[{"image", "answers": [{"answer": ...}, ...], "answer_type"?}, ...]`; answers are matched by image, read
  from `--question-file` (JSON lines with question_id, image), which VizWiz therefore needs.
An `answers` entry may also be a plain string. The questions scored are those of `--question-file` when given, else
every annotated question; an unanswered one counts as wrong (the official tools refuse partial results). Each
prediction gets the official soft accuracy (`share4v.eval.metrics.vqa_accuracy`: both sides normalised as the
submission converters do, min(1, matches / 3) over the 10 leave-one-out subsets).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from share4v.eval.jsonl import read_jsonl
from share4v.eval.metrics import vqa_accuracy
from share4v.eval.scores import write_scores


def read_annotations(path: str | Path) -> tuple[str, dict[str, dict]]:
    """`(benchmark, {key: {"answers": [...], "answer_type": ...}})`: key = str(question_id) for VQAv2, the image
    name for VizWiz."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        benchmark, entries, key = "vqav2", data["annotations"], "question_id"
    elif isinstance(data, list):
        benchmark, entries, key = "vizwiz", data, "image"
    else:
        raise ValueError(f"{path}: expected VQAv2's {{'annotations': [...]}} or VizWiz's list of questions")
    annotations = {}
    for position, entry in enumerate(entries):
        if not isinstance(entry, dict) or key not in entry or not entry.get("answers"):
            raise ValueError(f"{path}: annotation {position} needs '{key}' and a non-empty 'answers' list")
        answers = [a["answer"] if isinstance(a, dict) else a for a in entry["answers"]]
        if not all(isinstance(a, str) for a in answers):
            raise ValueError(f"{path}: annotation {position} has an answer that is not a string")
        annotations[str(entry[key])] = {"answers": answers, "answer_type": entry.get("answer_type")}
    return benchmark, annotations


def score_vqa(annotation_file: str | Path, result_file: str | Path, question_file: str | Path | None = None) -> dict:
    """`{"benchmark", "accuracy", "count", "unanswered", "answer_type/<type>": ...}`, accuracies in [0, 1]."""
    benchmark, annotations = read_annotations(annotation_file)
    if benchmark == "vizwiz" and question_file is None:
        raise ValueError(f"{annotation_file} is VizWiz's format: --question-file (question_id, image) is needed")
    # question id -> annotation key
    if question_file is None:
        keys = {key: key for key in annotations}
    else:
        field = "image" if benchmark == "vizwiz" else "question_id"
        keys = {str(row["question_id"]): str(row[field]) for row in read_jsonl(question_file, ("question_id", field))}
    for qid, key in keys.items():
        if key not in annotations:
            raise ValueError(f"{question_file}: question {qid} ({key}) has no annotation in {annotation_file}")
    predictions = {}
    for number, row in enumerate(read_jsonl(result_file, ("question_id", "text")), start=1):
        if str(row["question_id"]) not in keys:
            raise ValueError(
                f"{result_file}: answer {number} has question_id {row['question_id']!r}, not a question"
                f" of {question_file or annotation_file}"
            )
        predictions[str(row["question_id"])] = row["text"]
    if not keys:
        raise ValueError(f"{question_file or annotation_file}: no questions")
    per_type: dict[str, list[float]] = {}
    for qid, key in keys.items():
        annotation = annotations[key]
        score = vqa_accuracy(predictions[qid], annotation["answers"]) if qid in predictions else 0.0
        per_type.setdefault("all", []).append(score)
        if annotation["answer_type"] is not None:
            per_type.setdefault(f"answer_type/{annotation['answer_type']}", []).append(score)
    scores = {name: sum(values) / len(values) for name, values in per_type.items()}
    return {
        "benchmark": benchmark,
        "accuracy": scores.pop("all"),
        "count": len(keys),
        "unanswered": len(keys.keys() - predictions.keys()),
        **scores,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotation-file", required=True, help="VQAv2 or VizWiz val annotations (JSON)")
    parser.add_argument(
        "--question-file",
        default=None,
        help="questions (JSON lines: question_id, and image for VizWiz); default: every annotation",
    )
    parser.add_argument("--result-file", required=True, help="answers (JSON lines with question_id, text)")
    parser.add_argument(
        "--benchmark",
        choices=("vqav2", "vizwiz"),
        default=None,
        help="the score file's benchmark key (default: from the annotation format)",
    )
    parser.add_argument("--scores-file", default=None, help="score file to write (default: none)")
    args = parser.parse_args(argv)
    try:
        result = score_vqa(args.annotation_file, args.result_file, args.question_file)
        print(f"Questions: {result['count']} ({result['unanswered']} unanswered)")
        print(f"Accuracy: {100 * result['accuracy']:.2f}%")
        for key, value in result.items():
            if key.startswith("answer_type/"):
                print(f"  {key.split('/', 1)[1]}: {100 * value:.2f}%")
        if args.scores_file:
            scores = {k: v if k in ("count", "unanswered") else 100 * v for k, v in result.items() if k != "benchmark"}
            benchmark = args.benchmark or result["benchmark"]
            print(f"wrote {write_scores(args.scores_file, benchmark, scores, source=args.result_file)}")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
