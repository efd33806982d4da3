"""eval/model_vqa_mmbench.py: answers to MMBench (EN and CN), read from its TSV with the images inside.

    python -m share4v.eval.model_vqa_mmbench --model-path checkpoints/share4v-7b \
        --question-file playground/data/eval/mmbench/mmbench_dev_20230712.tsv \
        --answers-file answers/mmbench/share4v-7b.jsonl --single-pred-prompt --temperature 0 --conv-mode vicuna_v1

TSV columns: `index`, `question`, `hint`, `A`..`D`, `image` (base64), and `answer`, `category`, ... which are not
read here. The options are `A`, `B`, ... up to the first empty, "nan" or "none" cell; the prompt is the hint (when
there is one), a newline, the question, then one `"\\nA. option"` line per option, and with `--single-pred-prompt`
the instruction to answer with a letter (`--lang cn`: in Chinese). `--all-rounds` asks each question once per
option, the options rotated by one more place each round (circular evaluation): the letters stay A, B, ... and
`option_char` says which original option each letter shows. An image cell holding only a number names the row whose
image it shares (as VLMEvalKit's TSVs do). Images are decoded from base64 in the DataLoader workers.

Answer lines: `{"question_id": index, "round_id", "prompt", "text", "options", "option_char", "answer_id",
"model_id", "metadata"}`, where `prompt` is the question with its options (no image marker, no instruction), as
the original wrote it; a rerun skips the (question_id, round_id) pairs already answered. An unusable row is listed
with its line and index in `<answers-file>.errors.jsonl` and skipped (`--strict`: the run stops there).
"""

from __future__ import annotations

import argparse
import csv
import string
import sys
from functools import partial
from pathlib import Path

from share4v.constants import DEFAULT_IMAGE_TOKEN
from share4v.eval.answer_loop import Question, add_loop_args, chunk, run_driver
from share4v.inference.cli_args import add_generation_args, add_model_args

OPTION_COLUMNS = tuple(string.ascii_uppercase[:4])  # the original reads A-D
PROMPT_SUFFIX = {
    "en": "\nAnswer with the option's letter from the given choices directly.",
    "cn": "\n请直接回答选项字母。",
}
_REQUIRED_COLUMNS = ("index", "question", "image")
_IMAGE_REFERENCE_MAX_CHARS = 16  # an image cell this short and all digits names another row's image


def _is_none(value: str | None) -> bool:
    """An empty cell, or the "nan" / "none" pandas gave the original for one."""
    return value is None or value.strip() == "" or value.strip().lower() in ("nan", "none")


def _rows(path: Path) -> list[tuple[int, dict]]:
    """(line number, row) for each data row."""
    limit = sys.maxsize
    while True:  # the image column holds whole images; csv's default cell limit (process-wide) is 128 KiB
        try:
            csv.field_size_limit(limit)
            break
        except OverflowError:
            limit //= 2
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        header = list(reader.fieldnames or [])
        missing = [column for column in _REQUIRED_COLUMNS if column not in header]
        if missing:
            raise ValueError(f"{path}: no {', '.join(missing)} column (MMBench TSVs have index, question, image, A..D)")
        return [(reader.line_num, row) for row in reader]


def read_questions(
    question_file: str | Path,
    all_rounds: bool = False,
    single_pred_prompt: bool = False,
    lang: str = "en",
    strict: bool = False,
    chunks: tuple[int, int] = (1, 0),
) -> tuple[list[Question], list[dict]]:
    """(questions, problems) of an MMBench TSV; `chunks` = (num_chunks, chunk_idx) splits the rows before the
    rounds are made. An unusable row becomes a problem (`{"line", "index", "error"}`) unless `strict`.

    Raises:
        FileNotFoundError / ValueError: no such file, a required column missing, or (with `strict`) a bad row.
    """
    path = Path(question_file)
    if not path.is_file():
        raise FileNotFoundError(f"no such question file: {path}")
    rows = _rows(path)
    images = {row["index"].strip(): row["image"] for _, row in rows if row.get("image") and row.get("index")}
    parsed, problems = [], []
    for line, row in rows:
        try:
            parsed.append(_parse_row(row, images))
        except ValueError as err:
            if strict:
                raise ValueError(f"{path}:{line}: {err} (--strict)") from None
            problems.append({"line": line, "index": row.get("index"), "error": str(err)})
    questions = []
    for index, text, options, image in chunk(parsed, *chunks):
        letters = list(OPTION_COLUMNS[: len(options)])
        for round_id in range(len(options) if all_rounds else 1):
            shown, shown_chars = options[round_id:] + options[:round_id], letters[round_id:] + letters[:round_id]
            prompt = text + "".join(f"\n{letter}. {option}" for letter, option in zip(letters, shown, strict=True))
            model_prompt = DEFAULT_IMAGE_TOKEN + "\n" + prompt + (PROMPT_SUFFIX[lang] if single_pred_prompt else "")
            fields = {"round_id": round_id, "prompt": prompt, "options": shown, "option_char": shown_chars}
            questions.append(Question(index, model_prompt, (image,), fields))
    return questions, problems


def _parse_row(row: dict, images: dict[str, str]) -> tuple[int, str, list[str], str]:
    """(index, hint + question, options, image as a data URI) of one TSV row."""
    if None in row:
        raise ValueError(f"{len(row[None])} more cells than the header has columns")
    try:
        index = int(row["index"])
    except (TypeError, ValueError):
        raise ValueError(f"index {row['index']!r} is not an integer") from None
    question = row.get("question")
    if _is_none(question):
        raise ValueError(f"row {index}: empty question")
    hint = row.get("hint")
    text = question if _is_none(hint) else hint + "\n" + question
    options = []
    for column in OPTION_COLUMNS:
        if _is_none(row.get(column)):
            break
        options.append(row[column])
    if not options:
        raise ValueError(f"row {index}: no options (column A is empty)")
    image = (row.get("image") or "").strip()
    if image.isdigit() and len(image) <= _IMAGE_REFERENCE_MAX_CHARS:
        if image not in images or images[image].strip().isdigit():
            raise ValueError(f"row {index}: image refers to row {image}, which has no image")
        image = images[image].strip()
    if not image:
        raise ValueError(f"row {index}: empty image")
    return index, text, options, "data:image;base64," + image


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_model_args(parser)
    add_generation_args(parser, max_new_tokens=1024)
    parser.set_defaults(conv_mode="share4v_v1")
    parser.add_argument("--question-file", required=True, help="MMBench TSV (index, question, hint, A..D, image)")
    parser.add_argument("--answers-file", required=True, help="JSON lines written here (appended; reruns resume)")
    parser.add_argument("--image-folder", default="", help="unused: MMBench's images are in the TSV")
    parser.add_argument("--all-rounds", action="store_true", help="circular evaluation: one round per option")
    parser.add_argument("--single-pred-prompt", action="store_true", help="ask for the option's letter only")
    parser.add_argument("--lang", default="en", choices=sorted(PROMPT_SUFFIX), help="language of that request")
    add_loop_args(parser, "rows")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    read = partial(read_questions, args.question_file, args.all_rounds, args.single_pred_prompt, args.lang,
                   args.strict, (args.num_chunks, args.chunk_idx))  # fmt: skip
    return run_driver(args, read, {"question_file": args.question_file}, "rows", chunked=False,
                      resume_by=("question_id", "round_id"))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
