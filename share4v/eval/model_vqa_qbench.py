"""eval/model_vqa_qbench.py: answers to Q-Bench's LLVisionQA (low-level visual perception, multiple choice).

    python -m share4v.eval.model_vqa_qbench --model-path checkpoints/share4v-7b \
        --image-folder playground/data/eval/qbench/images_llvisionqa \
        --questions-file playground/data/eval/qbench/llvisionqa_dev.json \
        --answers-file answers/qbench/share4v-7b.jsonl --conv-mode share4v_v1 --lang en

The questions file is a JSON list of records `{"img_path", "question", "candidates": [...], "correct_ans"?,
"type"?, "concern"?, ...}`. The prompt is the question, `"\\nChoose between one of the options as follows:\\n"`
(`--lang zh`: in Chinese; the original's Chinese prompt began with a stray backslash where a newline was meant, here
it is the newline), and one `"A. candidate\\n"` line per candidate. Decoding is greedy unless `--temperature` says
otherwise.

Differences from the original, which loaded the model in 8-bit and wrote all records as one JSON file at the end:
`--load-8bit` is there but not forced (it needs CUDA and bitsandbytes), and each answer is appended as soon as it is
made, one JSON line per question: the input record with `"response"` added, plus `question_id` (the record's
position in the questions file, what a rerun uses to skip answered records), `prompt`, `answer_id`, `model_id` and
`metadata`. Score them with `share4v.eval.metrics.qbench_accuracy`. An unusable record or a missing image is listed
with its position in `<answers-file>.errors.jsonl` and skipped (`--strict`: the run stops there).
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path
from typing import Any

from share4v.constants import DEFAULT_IMAGE_TOKEN
from share4v.eval.answer_loop import Question, add_loop_args, run_driver
from share4v.eval.jsonl import read_json_list
from share4v.inference.cli_args import add_generation_args, add_model_args

PROMPT_HEADER = {
    "en": "\nChoose between one of the options as follows:\n",
    "zh": "\n在下列选项中选择一个:\n",
}
ANSWER_FIELD = "response"


def read_questions(
    questions_file: str | Path, image_folder: str | Path | None, lang: str = "en", strict: bool = False
) -> tuple[list[Question], list[dict]]:
    """(questions, problems): an unusable record becomes a problem (`{"entry", "error"}`) unless `strict`.

    Raises:
        FileNotFoundError / ValueError: no such file, not a JSON list, or (with `strict`) a bad record.
    """
    path = Path(questions_file)
    records = read_json_list(path, "records")
    questions, problems = [], []
    for position, record in enumerate(records):
        try:
            questions.append(_question(position, record, image_folder, lang))
        except ValueError as err:
            if strict:
                raise ValueError(f"{path}[{position}]: {err} (--strict)") from None
            problems.append({"entry": position, "error": str(err)})
    return questions, problems


def _question(position: int, record: Any, image_folder: str | Path | None, lang: str) -> Question:
    if not isinstance(record, dict):
        raise ValueError(f"expected an object, got {type(record).__name__}")
    for name, kind in (("img_path", str), ("question", str), ("candidates", list)):
        if not isinstance(record.get(name), kind) or not record[name]:
            raise ValueError(f"record {position}: {name!r} missing or empty")
    candidates = record["candidates"]
    if len(candidates) > len(string.ascii_uppercase):
        raise ValueError(f"record {position}: {len(candidates)} candidates, at most 26 can be lettered")
    message = record["question"] + PROMPT_HEADER[lang]
    letters = string.ascii_uppercase[: len(candidates)]
    message += "".join(f"{letter}. {candidate}\n" for letter, candidate in zip(letters, candidates, strict=True))
    fields = {key: value for key, value in record.items() if key not in (ANSWER_FIELD, "question_id")}
    image = str(Path(image_folder or ".") / record["img_path"])
    return Question(position, DEFAULT_IMAGE_TOKEN + "\n" + message, (image,), fields)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_model_args(parser)
    add_generation_args(parser, max_new_tokens=1024)
    parser.set_defaults(conv_mode="share4v_v1", temperature=0.0)
    parser.add_argument("--image-folder", default="", help="folder the records' img_path are relative to")
    parser.add_argument("--questions-file", "--question-file", required=True, help="LLVisionQA JSON list")
    parser.add_argument("--answers-file", required=True, help="JSON lines written here (appended; reruns resume)")
    parser.add_argument("--lang", default="en", choices=sorted(PROMPT_HEADER), help="language of the prompt")
    add_loop_args(parser, "records")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_driver(args, lambda: read_questions(args.questions_file, args.image_folder, args.lang, args.strict),
                      {"questions_file": args.questions_file}, "records", answer_field=ANSWER_FIELD)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
