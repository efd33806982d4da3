"""eval/submission.py: answer files → the formats benchmarks' own scorers and servers take.

- GQA (official `eval.py`): `[{"questionId", "prediction"}]`, predictions lower-cased without a final period.
- MM-Vet (official grader): `{"v1_<question_id>": answer}`.
- VizWiz (EvalAI): `[{"image", "answer"}]`, answers normalised as the VQA tools do, every question of the annotation
  file present (an unanswered one gets "").
- VQAv2 (EvalAI): `[{"question_id", "answer"}]` over every question of test2015 (the test-dev phase takes the whole
  set too), answers normalised, an unanswered question "".
- MMBench (OpenCompass server): the question TSV less hint/category/source/image/comment/l2-category, with a
  `prediction` column inserted at position 6, as an .xlsx (needs openpyxl).
- SEED-Bench: local accuracy per question type (all questions, and the image ones), and the upload file
  (JSON lines `{"question_id", "prediction"}`).

`python scripts/convert_gqa_for_eval.py --src merge.jsonl --dst predictions.json` and the other scripts are the
original's command lines over these functions; outputs are written atomically; bad input is one line and exit code 1.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from share4v.eval.jsonl import read_jsonl
from share4v.eval.metrics import seed_scores, vqa_normalize
from share4v.temp_paths import atomic_output

ANSWERS = "answers (JSON lines with question_id, text)"
VQAV2_TEST_QUESTIONS = "llava_vqav2_mscoco_test2015.jsonl"  # the original's name (with llava_), all of test2015
MMBENCH_DROPPED_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")
MMBENCH_PREDICTION_COLUMN = 6
OPENPYXL_MISSING = "writing .xlsx needs openpyxl: pip install openpyxl (or pip install 'share4v[eval]')"


def write_text(text: str, path: str | Path) -> Path:
    """`text` at `path` (UTF-8), atomically (a temporary file in the same folder, then renamed)."""
    with atomic_output(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(data: Any, path: str | Path) -> Path:
    """`data` as JSON at `path`, atomically (a temporary file in the same folder, then renamed)."""
    return write_text(json.dumps(data, ensure_ascii=False), path)


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


def vqav2_predictions(question_file: str | Path, answers_file: str | Path) -> tuple[list[dict], dict[str, int]]:
    """The VQAv2 upload: one entry per question of `question_file`, in its order, and counts for the summary.

    Question ids are matched as strings (42 and "42" are one question). Returns `(upload, counts)` with counts
    `answers`, `questions`, `unanswered` and `unknown` (answers to questions not in the question file).
    """
    questions = read_jsonl(question_file, ("question_id",))
    answers = {str(row["question_id"]): row["text"] for row in read_jsonl(answers_file, ("question_id", "text"))}
    asked = {str(row["question_id"]) for row in questions}
    upload = [
        {"question_id": row["question_id"], "answer": vqa_normalize(answers.get(str(row["question_id"]), ""))}
        for row in questions
    ]
    counts = {
        "answers": len(answers),
        "questions": len(questions),
        "unanswered": len(asked - answers.keys()),
        "unknown": len(answers.keys() - asked),
    }
    return upload, counts


def read_mmbench_tsv(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of an MMBench question TSV (tab-separated, quoted as pandas writes it).

    Raises:
        FileNotFoundError / ValueError: naming the file and line of a row that has the wrong number of fields or
            an `index` that is not an integer.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # the base64 images are far over csv's 128 KiB default
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if not header or "index" not in header:
            raise ValueError(f"{path}: the first line must be the column names, with 'index' among them")
        rows = []
        for fields in reader:
            if not any(fields):
                continue
            if len(fields) != len(header):
                raise ValueError(f"{path}:{reader.line_num}: {len(fields)} fields, the header has {len(header)}")
            row = dict(zip(header, fields, strict=True))
            if not row["index"].strip().lstrip("-").isdigit():
                raise ValueError(f"{path}:{reader.line_num}: field 'index' is {row['index']!r}, not an integer")
            rows.append(row)
    return header, rows


def question_index(value: Any, where: str) -> int:
    """An MMBench `question_id` (the TSV index) as an int, or a one-line ValueError naming `where`."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: question_id {value!r} is not an MMBench index (an integer)") from None


def mmbench_upload_table(annotation_file: str | Path, answers_file: str | Path) -> tuple[list[str], list[list]]:
    """Column names and rows of the MMBench upload: the TSV's columns less the dropped ones, `prediction` inserted
    at position 6 (0-based), one row per TSV row in its order.

    The prediction is the round-0 answer (`round_id` 0 or absent: options in the TSV's order). Later circular
    rounds (`--all-rounds`) rotate the options, so their letters do not refer to the TSV's columns and are not
    uploaded. A question never answered gets an empty cell; `index` is an integer, empty fields are empty cells.
    """
    header, rows = read_mmbench_tsv(annotation_file)
    known = {int(row["index"]) for row in rows}
    predictions: dict[int, str] = {}
    for number, answer in enumerate(read_jsonl(answers_file, ("question_id", "text")), start=1):
        if answer.get("round_id", 0) != 0:
            continue
        index = question_index(answer["question_id"], f"{answers_file}: answer {number}")
        if index not in known:
            raise ValueError(
                f"{answers_file}: answer {number} has question_id {index}, not an index of {annotation_file}"
            )
        predictions[index] = answer["text"]
    kept = [name for name in header if name not in MMBENCH_DROPPED_COLUMNS]
    if len(kept) < MMBENCH_PREDICTION_COLUMN:
        raise ValueError(
            f"{annotation_file}: {len(kept)} columns after dropping {', '.join(MMBENCH_DROPPED_COLUMNS)};"
            f" the upload inserts 'prediction' at column {MMBENCH_PREDICTION_COLUMN}"
        )
    columns = [*kept[:MMBENCH_PREDICTION_COLUMN], "prediction", *kept[MMBENCH_PREDICTION_COLUMN:]]
    table = []
    for row in rows:
        cells = {name: (int(value) if name == "index" else value or None) for name, value in row.items()}
        cells["prediction"] = predictions.get(int(row["index"]))
        table.append([cells[name] for name in columns])
    return columns, table


def write_xlsx(columns: list[str], rows: list[list], path: str | Path) -> Path:
    """One sheet ("Sheet1", as pandas names it): a header row, then `rows`; atomically.

    Characters that .xlsx cannot hold (ASCII control characters other than tab and newline) are dropped.

    Raises:
        ModuleNotFoundError: openpyxl is not installed (the message says how to install it).
    """
    try:
        from openpyxl import Workbook
        from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    except ImportError:
        raise ModuleNotFoundError(OPENPYXL_MISSING) from None
    book = Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    sheet.append(columns)
    for row in rows:
        sheet.append([ILLEGAL_CHARACTERS_RE.sub("", cell) if isinstance(cell, str) else cell for cell in row])
    with atomic_output(path) as temporary:
        book.save(temporary)
    return Path(path)


def _read_seed_annotation(path: Path) -> tuple[list[dict], dict[Any, str]]:
    """SEED-Bench.json's questions and {question_type_id: name}, checked."""
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list) or "question_type" not in data:
        raise ValueError(f"{path}: expected an object with 'questions' (a list) and 'question_type'")
    type_names = {type_id: name for name, type_id in data["question_type"].items()}
    for position, question in enumerate(data["questions"]):
        missing = [key for key in ("question_id", "question_type_id", "answer", "data_type") if key not in question]
        if missing:
            raise ValueError(f"{path}: question {position} lacks field {missing[0]!r}")
        if question["question_type_id"] not in type_names:
            raise ValueError(
                f"{path}: question {position} has question_type_id {question['question_type_id']!r},"
                " which 'question_type' does not name"
            )
    return data["questions"], type_names


def seed_results(annotation_file: str | Path, answers_file: str | Path, tolerant: bool = False) -> dict:
    """SEED-Bench accuracy (all questions, and those with data_type "image") and the upload lines.

    Question ids are matched as strings. A question never answered counts as wrong (in an image-only run that
    includes every video question of "all", as in the original).

    Returns:
        `all` and `image` (`share4v.eval.metrics.seed_scores` of each; `image` is None without image questions),
        `counts` and `upload`: `{"question_id", "prediction"}` per question that was answered or is an image
        question (unanswered: ""); with `tolerant` the prediction is the answer's first character.
    """
    questions, type_names = _read_seed_annotation(Path(annotation_file))
    answers = {str(row["question_id"]): row["text"] for row in read_jsonl(answers_file, ("question_id", "text"))}
    rows, upload = [], []
    for question in questions:
        prediction = answers.get(str(question["question_id"]))
        rows.append(
            {
                "question_type": type_names[question["question_type_id"]],
                "prediction": prediction,
                "answer": question["answer"],
                "image": question["data_type"] == "image",
            }
        )
        if prediction is not None or question["data_type"] == "image":
            text = (prediction or "").strip()[:1] if tolerant else prediction or ""
            upload.append({"question_id": question["question_id"], "prediction": text})
    images = [row for row in rows if row["image"]]
    return {
        "all": seed_scores(rows, tolerant),
        "image": seed_scores(images, tolerant) if images else None,
        "counts": {
            "questions": len(rows),
            "images": len(images),
            "answered": sum(r["prediction"] is not None for r in rows),
        },
        "upload": upload,
    }


def _parser(description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)


def _run(description: str, arguments: list[tuple[str, str]], produce, argv: list[str] | None) -> int:
    """Parse `--name` flags, call `produce(args)` → (data, destination), write it; bad input is one line."""
    parser = _parser(description)
    for flag, help_text in arguments:
        parser.add_argument(flag, required=True, help=help_text)
    args = parser.parse_args(argv)
    try:
        data, destination = produce(args)
        print(f"wrote {write_json(data, destination)}")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    return 0


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


def vqav2_main(argv: list[str] | None = None) -> int:
    """scripts/convert_vqav2_for_submission.py --split SPLIT --ckpt CKPT [--dir DIR]

    Reads DIR/answers/SPLIT/CKPT/merge.jsonl and DIR/llava_vqav2_mscoco_test2015.jsonl (every test2015 question),
    writes DIR/answers_upload/SPLIT/CKPT.json for EvalAI."""
    parser = _parser(vqav2_main.__doc__)
    parser.add_argument("--dir", default="./playground/data/eval/vqav2", help="the VQAv2 folder (default: %(default)s)")
    parser.add_argument("--ckpt", required=True, help="the checkpoint name the answers are filed under")
    parser.add_argument("--split", required=True, help="the question split the answers are filed under")
    args = parser.parse_args(argv)
    source = Path(args.dir, "answers", args.split, args.ckpt, "merge.jsonl")
    destination = Path(args.dir, "answers_upload", args.split, f"{args.ckpt}.json")
    try:
        upload, counts = vqav2_predictions(Path(args.dir, VQAV2_TEST_QUESTIONS), source)
        print(
            f"total results: {counts['answers']}, total split: {counts['questions']}, "
            f"unanswered: {counts['unanswered']}, not in the split: {counts['unknown']}"
        )
        print(f"wrote {write_json(upload, destination)}")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    return 0


def mmbench_main(argv: list[str] | None = None) -> int:
    """scripts/convert_mmbench_for_submission.py --annotation-file mmbench_dev_20230712.tsv --result-dir DIR
    --upload-dir UPLOAD --experiment merge

    Reads DIR/EXPERIMENT.jsonl, writes UPLOAD/EXPERIMENT.xlsx for the OpenCompass server (round-0 answers)."""
    parser = _parser(mmbench_main.__doc__)
    parser.add_argument("--annotation-file", required=True, help="the MMBench question TSV")
    parser.add_argument("--result-dir", required=True, help="folder of the answers file EXPERIMENT.jsonl")
    parser.add_argument("--upload-dir", required=True, help="folder to write EXPERIMENT.xlsx in")
    parser.add_argument("--experiment", required=True, help="the answers file's name without .jsonl")
    args = parser.parse_args(argv)
    try:
        columns, rows = mmbench_upload_table(args.annotation_file, Path(args.result_dir, f"{args.experiment}.jsonl"))
        destination = write_xlsx(columns, rows, Path(args.upload_dir, f"{args.experiment}.xlsx"))
    except (OSError, ValueError, ImportError) as err:
        sys.exit(f"error: {err}")
    unanswered = sum(row[columns.index("prediction")] is None for row in rows)
    print(f"wrote {destination} ({len(rows)} questions, {unanswered} unanswered)")
    return 0


def seed_main(argv: list[str] | None = None) -> int:
    """scripts/convert_seed_for_submission.py --annotation-file SEED-Bench.json --result-file merge.jsonl
    --result-upload-file upload.jsonl [-t] [--scores-file scores.json]

    Prints accuracy per question type (all questions), overall and on the image questions (the reported number),
    and writes the upload file (the original printed the scores but never wrote it)."""
    from share4v.eval.scores import write_scores  # here: scores imports this module

    parser = _parser(seed_main.__doc__)
    parser.add_argument("--annotation-file", required=True, help="SEED-Bench.json")
    parser.add_argument("--result-file", required=True, help=ANSWERS)
    parser.add_argument("--result-upload-file", required=True, help="upload to write (JSON lines)")
    parser.add_argument(
        "-t",
        "--tolerant",
        action="store_true",
        help="an answer is right when its first character is the letter (default: exact match)",
    )
    parser.add_argument("--scores-file", default=None, help="score file to write (default: none)")
    args = parser.parse_args(argv)
    try:
        result = seed_results(args.annotation_file, args.result_file, args.tolerant)
        for kind in sorted(k for k in result["all"] if k != "overall"):
            print(f"{kind}: {100 * result['all'][kind]:.2f}")
        print(f"Total accuracy: {100 * result['all']['overall']:.2f}%")
        scores = {"accuracy": 100 * result["all"]["overall"], **result["counts"]}
        if result["image"] is not None:
            print(f"image accuracy: {100 * result['image']['overall']:.2f}%")
            scores["image_accuracy"] = 100 * result["image"]["overall"]
            scores.update({f"image/{k}": 100 * v for k, v in result["image"].items() if k != "overall"})
        lines = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in result["upload"])
        print(f"wrote {write_text(lines, args.result_upload_file)} ({len(result['upload'])} answers)")
        if args.scores_file:
            print(f"wrote {write_scores(args.scores_file, 'seed', scores, source=args.result_file)}")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    return 0
