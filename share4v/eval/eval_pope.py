"""eval/eval_pope.py: POPE scores per category from an answer file, as LLaVA-1.5's scorer prints them.

    python -m share4v.eval.eval_pope --annotation-dir playground/data/eval/pope/coco \
        --question-file playground/data/eval/pope/llava_pope_test.jsonl --result-file answers/pope/merge.jsonl

The annotation folder holds `coco_pope_<category>.json` (JSON lines with `label` yes/no, and `image`); the question
file gives each question's `category`; the result file holds the model's answers (`question_id`, `text`). Free-text
answers are read as yes/no by `share4v.eval.metrics.pope_parse_answer`.

Labels go with questions by position, as in LLaVA-1.5's scorer: the k-th question of a category in the question file
is the k-th line of that category's annotation file. POPE numbers each annotation file's questions from 1, while the
question file's ids run across all categories, so ids cannot match them. Where both sides name the image, it must be
the same, so files out of step are refused in one line instead of scored against the wrong labels. Answers are
looked up by `question_id`, so their order in the result file does not matter (merged shards, resumed runs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from share4v.eval.jsonl import read_jsonl
from share4v.eval.metrics import pope_scores
from share4v.eval.scores import write_scores

ANNOTATION_PREFIX = "coco_pope_"


def score_pope(annotation_dir: str | Path, question_file: str | Path, result_file: str | Path) -> dict[str, dict]:
    """Scores per category (those present in the question file and the annotation folder)."""
    questions = read_jsonl(question_file, ("question_id", "category"))
    answers = {row["question_id"]: row["text"] for row in read_jsonl(result_file, ("question_id", "text"))}
    scores = {}
    for category in sorted({row["category"] for row in questions}):
        annotation = Path(annotation_dir) / f"{ANNOTATION_PREFIX}{category}.json"
        labelled = read_jsonl(annotation, ("label",))
        asked = [row for row in questions if row["category"] == category]
        if len(labelled) != len(asked):
            raise ValueError(
                f"{annotation}: {len(labelled)} labels for the {len(asked)} {category!r} questions of {question_file}"
            )
        for line, (question, label) in enumerate(zip(asked, labelled, strict=True), start=1):
            images = (question.get("image"), label.get("image"))
            if all(images) and Path(images[0]).name != Path(images[1]).name:
                raise ValueError(
                    f"{annotation}:{line}: the label is for {label['image']}, but the {category!r} question at that "
                    f"place in {question_file} (question_id {question['question_id']!r}) is about {question['image']}"
                )
        pairs = [(answers[q["question_id"]], label["label"]) for q, label in zip(asked, labelled, strict=True)
                 if q["question_id"] in answers]  # fmt: skip
        if pairs:
            scores[category] = pope_scores([answer for answer, _ in pairs], [label for _, label in pairs])
    return scores


def pope_summary(scores: dict[str, dict]) -> dict[str, float]:
    """The score file's numbers, in percent: the mean over categories of accuracy, precision, recall, F1 and yes
    ratio (POPE papers report the mean F1), then `<category>/<metric>` for each category."""
    metrics = ("accuracy", "precision", "recall", "f1", "yes_ratio")
    summary = {metric: 100 * sum(result[metric] for result in scores.values()) / len(scores) for metric in metrics}
    for category, result in scores.items():
        summary.update({f"{category}/{metric}": 100 * result[metric] for metric in metrics})
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotation-dir", required=True, help="folder of coco_pope_<category>.json files")
    parser.add_argument("--question-file", required=True, help="questions (JSON lines with question_id, category)")
    parser.add_argument("--result-file", required=True, help="answers (JSON lines with question_id, text)")
    parser.add_argument(
        "--scores-file",
        default=None,
        help="score file to write: means over the categories, and each category's (default: none)",
    )
    args = parser.parse_args(argv)
    try:
        scores = score_pope(args.annotation_dir, args.question_file, args.result_file)
        if args.scores_file:
            if not scores:
                raise ValueError(f"{args.result_file}: no answered question of {args.question_file} to score")
            write_scores(args.scores_file, "pope", pope_summary(scores), source=args.result_file)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    for category, result in scores.items():
        print(f"Category: {category}, # samples: {result['tp'] + result['fp'] + result['tn'] + result['fn']}")
        print("TP\tFP\tTN\tFN\t")
        print(f"{result['tp']}\t{result['fp']}\t{result['tn']}\t{result['fn']}")
        print(f"Accuracy: {result['accuracy']:.4f}")
        print(f"Precision: {result['precision']:.4f}")
        print(f"Recall: {result['recall']:.4f}")
        print(f"F1 score: {result['f1']:.4f}")
        print(f"Yes ratio: {result['yes_ratio']:.4f}")
        print("====================================")
    if scores:
        print(f"Average F1: {sum(r['f1'] for r in scores.values()) / len(scores):.4f}")
    if args.scores_file:
        print(f"wrote {args.scores_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
