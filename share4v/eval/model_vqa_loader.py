"""eval/model_vqa_loader.py: answers to a JSON-lines question file (VQAv2, GQA, VizWiz, TextVQA, MME, SEED, POPE).

    python -m share4v.eval.model_vqa_loader --model-path checkpoints/share4v-7b \
        --question-file playground/data/eval/gqa/share4v_gqa_testdev_balanced.jsonl \
        --image-folder playground/data/eval/gqa/images --answers-file answers/gqa/merge.jsonl \
        --temperature 0 --conv-mode share4v_v1 --batch-size 16

Question lines: `{"question_id", "image", "text", ...}`; the model gets `"<image>\\n" + text` (no image: the text).
Answer lines: `{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}` (`prompt`: the question
line's text, as the original writes it; `metadata`: the template and decoding settings), appended and flushed per
batch; a rerun skips answered ids. A malformed question line or a missing image is listed with its line or id in
`<answers-file>.errors.jsonl` and skipped (`--strict`: the run stops there).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from share4v.eval.answer_loop import Question, add_loop_args, run_driver
from share4v.inference.cli_args import add_generation_args, add_model_args


def read_questions(question_file: str | Path, image_folder: str | Path | None, strict: bool) -> tuple[list, list]:
    """(questions, problems): unusable lines become problems (`{"line", "error"}`) unless `strict`."""
    path = Path(question_file)
    if not path.is_file():
        raise FileNotFoundError(f"no such question file: {path}")
    questions, problems = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "question_id" not in row or not isinstance(row.get("text"), str):
                raise ValueError("needs question_id and text")
            if not isinstance(row.get("image") or "", str):
                raise ValueError(f"image must be a file name, not {type(row['image']).__name__}")
        except ValueError as err:
            if strict:
                raise ValueError(f"{path}:{number}: {err} (--strict)") from None
            problems.append({"line": number, "error": str(err)})
            continue
        image = row.get("image")
        images = (str(Path(image_folder or ".") / image),) if image else ()
        prompt = ("<image>\n" + row["text"]) if image else row["text"]
        # the answer line's prompt is the question's text, as the original writes it (MME's converter looks it up)
        questions.append(Question(row["question_id"], prompt, images, {"prompt": row["text"]}))
    return questions, problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_model_args(parser)
    add_generation_args(parser, max_new_tokens=128)
    parser.set_defaults(conv_mode="share4v_v1")
    parser.add_argument("--image-folder", default="", help="folder the question file's image paths are relative to")
    parser.add_argument("--question-file", required=True, help="JSON lines: question_id, image, text")
    parser.add_argument("--answers-file", required=True, help="JSON lines written here (appended; reruns resume)")
    add_loop_args(parser)
    return parser


def main(argv: list[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    args = (parser or build_parser()).parse_args(argv)
    # TextVQA's and MME's question ids name the image, which several questions share: the prompt tells them apart
    return run_driver(
        args,
        lambda: read_questions(args.question_file, args.image_folder, args.strict),
        {"question_file": args.question_file},
        "question lines",
        resume_by=("question_id", "prompt"),
    )


if __name__ == "__main__":
    sys.exit(main())
