"""eval/submission.py: answer files → the formats benchmarks' own scorers and servers take.

- GQA (official `eval.py`): `[{"questionId", "prediction"}]`, predictions lower-cased without a final period.
- MM-Vet (official grader): `{"v1_<question_id>": answer}`.
- VizWiz (EvalAI): `[{"image", "answer"}]`, answers normalised as the VQA tools do, every question of the annotation
  file present (an unanswered one gets "").

`python scripts/convert_gqa_for_eval.py --src merge.jsonl --dst predictions.json` and the other two scripts are
the original's command lines over these functions; outputs are written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from share4v.eval.jsonl import read_jsonl
from share4v.eval.metrics import vqa_normalize


def gqa_predictions(answers_file: str | Path) -> list[dict]:
    return [
        {"questionId": row["question_id"], "prediction": row["text"].rstrip(".").lower()}
        for row in read_jsonl(answers_file, ("question_id", "text"))
    ]


def mmvet_predictions(answers_file: str | Path) -> dict[str, str]:
    return {f"v1_{row['question_id']}": row["text"] for row in read_jsonl(answers_file, ("question_id", "text"))}


def vizwiz_predictions(annotation_file: str | Path, answers_file: str | Path) -> list[dict]:
    """One entry per annotated question, in the annotation file's order."""
    questions = read_jsonl(annotation_file, ("question_id", "image"))
    answers = {row["question_id"]: row["text"] for row in read_jsonl(answers_file, ("question_id", "text"))}
    return [{"image": row["image"], "answer": vqa_normalize(answers.get(row["question_id"], ""))} for row in questions]


def write_json(data: Any, path: str | Path) -> Path:
    """`data` as JSON at `path`, atomically (a temporary file in the same folder, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as f:
        json.dump(data, f, ensure_ascii=False)
    os.replace(f.name, path)
    return path


def _run(description: str, arguments: list[tuple[str, str]], produce, argv: list[str] | None) -> int:
    """Parse `--name` flags, call `produce(args)` → (data, destination), write it; bad input is one line."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=description)
    for flag, help_text in arguments:
        parser.add_argument(flag, required=True, help=help_text)
    args = parser.parse_args(argv)
    try:
        data, destination = produce(args)
        print(f"wrote {write_json(data, destination)}")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    return 0


ANSWERS = "answers (JSON lines with question_id, text)"


def gqa_main(argv: list[str] | None = None) -> int:
    """scripts/convert_gqa_for_eval.py --src merge.jsonl --dst testdev_balanced_predictions.json"""
    flags = [("--src", ANSWERS), ("--dst", "predictions JSON to write")]
    return _run(gqa_main.__doc__, flags, lambda a: (gqa_predictions(a.src), a.dst), argv)


def mmvet_main(argv: list[str] | None = None) -> int:
    """scripts/convert_mmvet_for_eval.py --src merge.jsonl --dst results.json"""
    flags = [("--src", ANSWERS), ("--dst", "results JSON to write")]
    return _run(mmvet_main.__doc__, flags, lambda a: (mmvet_predictions(a.src), a.dst), argv)


def vizwiz_main(argv: list[str] | None = None) -> int:
    """scripts/convert_vizwiz_for_submission.py --annotation-file test.jsonl --result-file merge.jsonl
    --result-upload-file vizwiz.json"""
    flags = [("--annotation-file", "the question file (JSON lines: question_id, image)"),
             ("--result-file", ANSWERS), ("--result-upload-file", "upload JSON to write")]  # fmt: skip
    produce = lambda a: (vizwiz_predictions(a.annotation_file, a.result_file), a.result_upload_file)  # noqa: E731
    return _run(vizwiz_main.__doc__, flags, produce, argv)
