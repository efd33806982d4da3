"""eval/eval_textvqa.py: TextVQA accuracy of an answer file against the official annotations (VQA soft accuracy).

    python -m share4v.eval.eval_textvqa --annotation-file playground/data/eval/textvqa/TextVQA_0.5.1_val.json \
        --result-file answers/textvqa/merge.jsonl

Each answer (`question_id` = the image id, `prompt`, `text`) is matched to its annotation by image id and question,
the question read back from the prompt (the question files put OCR reference tokens on a line of their own and the
short-answer instruction on the last line).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from share4v.eval.jsonl import read_jsonl
from share4v.eval.metrics import vqa_accuracy
from share4v.eval.scores import write_scores

OCR_PREFIX = "Reference OCR token:"


def question_from_prompt(prompt: str) -> str:
    """The question of a TextVQA prompt, lower-cased: `OCR tokens: ... Question: Q Short answer:`, or lines with
    the question first, optionally one `Reference OCR token:` line, and the answer instruction last."""
    if prompt.startswith("OCR tokens: "):
        match = re.search(r"Question: (.*?) Short answer:", prompt, flags=re.S)
        if match:
            return match.group(1).lower()
    lines = [line for line in prompt.split("\n") if line.strip()]
    lines = [line for line in lines if not line.startswith(OCR_PREFIX) and line != "<image>"]
    if len(lines) not in (1, 2):
        raise ValueError(f"cannot find the question in prompt {prompt[:80]!r}")
    return lines[0].lower()


def score_textvqa(annotation_file: str | Path, result_file: str | Path) -> dict:
    """`{"accuracy": mean soft accuracy, "count": answers scored}`."""
    annotation_file = Path(annotation_file)
    if not annotation_file.is_file():
        raise FileNotFoundError(f"no such file: {annotation_file}")
    data = json.loads(annotation_file.read_text(encoding="utf-8")).get("data")
    if not isinstance(data, list):
        raise ValueError(f"{annotation_file}: expected an object with a 'data' list")
    annotations = {(row["image_id"], row["question"].lower()): row["answers"] for row in data}
    results = read_jsonl(result_file, ("question_id", "prompt", "text"))
    scores = []
    for number, row in enumerate(results, start=1):
        key = (row["question_id"], question_from_prompt(row["prompt"]))
        if key not in annotations:
            raise ValueError(f"{result_file}: answer {number} ({key[0]!r}, {key[1]!r}) has no annotation")
        scores.append(vqa_accuracy(row["text"], annotations[key]))
    if not scores:
        raise ValueError(f"{result_file}: no answers")
    return {"accuracy": sum(scores) / len(scores), "count": len(scores)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")
    parser.add_argument("--result-file", required=True, help="answers (JSON lines with question_id, prompt, text)")
    parser.add_argument("--scores-file", default=None, help="score file to write (default: none)")
    args = parser.parse_args(argv)
    try:
        result = score_textvqa(args.annotation_file, args.result_file)
        print(f"Samples: {result['count']}\nAccuracy: {100 * result['accuracy']:.2f}%")
        if args.scores_file:
            scores = {"accuracy": 100 * result["accuracy"], "count": result["count"]}
            print(f"wrote {write_scores(args.scores_file, 'textvqa', scores, source=args.result_file)}")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
