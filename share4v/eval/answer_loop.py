"""eval/answer_loop.py

The one loop every benchmark's inference runs through: questions in, one JSON line per answer out.

- Chunking as the original scripts use it (`--num-chunks/--chunk-idx`: contiguous chunks of ceil(n / chunks)).
- Resume: question ids already in the answers file are skipped, so a killed run continues where it stopped; each
  answer is appended and flushed as soon as its batch is done (a line torn by a kill is cut first). Where one id
  has several answers (MMBench's rounds), `resume_by` names the answer-line fields that together identify one.
- Batches (`--batch-size`) are left-padded by the engine; greedy answers equal batch-size-1 answers.
- Images are loaded and pre-processed in DataLoader workers (the engine's `RequestEncoder`); a question whose image
  is missing or broken is reported with its id in `<answers>.errors.jsonl` and skipped (`strict` makes it fatal).
  A driver's run starts that file afresh: it lists what the last run could not answer (a rerun retries those).
"""

from __future__ import annotations

import json
import math
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from share4v.appended_jsonl import cut_torn_line, read_appended_jsonl
from share4v.constants import DEFAULT_IMAGE_TOKEN
from share4v.inference.cli_args import engine_from_args, generation_params
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.inference.requests import Request, RequestEncoder
from share4v.mm_utils import get_model_name_from_path


def chunk(items: Sequence[Any], num_chunks: int, chunk_idx: int) -> list[Any]:
    """The `chunk_idx`-th of `num_chunks` contiguous chunks of ceil(len / num_chunks) items (the original's split)."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx must be in [0, --num-chunks), got {chunk_idx} of {num_chunks}")
    size = math.ceil(len(items) / num_chunks) if items else 0
    return list(items[chunk_idx * size : (chunk_idx + 1) * size])


@dataclass(frozen=True)
class Question:
    """One benchmark question as the engine takes it, plus what its answer line repeats."""

    question_id: Any
    prompt: str  # the text given to the model ("<image>\n" marks the image)
    images: tuple[str, ...] = ()  # paths, or base64 `data:` URIs (decoded in the workers)
    fields: dict[str, Any] = field(default_factory=dict)  # added to its answer line (may replace "prompt")


class _Encoded(torch.utils.data.Dataset):
    def __init__(self, questions: list[Question], encoder: RequestEncoder):
        self.questions, self.encoder = questions, encoder

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> tuple[Question, Request]:
        question = self.questions[index]
        return question, self.encoder.encode(Chat.single(question.prompt, list(question.images)))


def answer_questions(
    engine: Share4VEngine,
    questions: list[Question],
    answers_file: str | Path,
    params: GenerationParams,
    model_id: str,
    batch_size: int = 1,
    num_workers: int = 2,
    strict: bool = False,
    resume_by: Sequence[str] = ("question_id",),
    answer_field: str = "text",
) -> dict[str, int]:
    """Answer every question not yet in `answers_file`; returns counts of `answered`, `failed`, `skipped`.

    Answer lines: `{"question_id", "prompt", "text", "answer_id", "model_id", "metadata"}` updated with the
    question's `fields`; the answer goes under `answer_field` ("text" unless a benchmark's format says otherwise).
    `metadata` (an empty object in the original's files, which no scorer reads) records how the answer was made:
    the template, the decoding settings and the batch size (`share4v.eval.report` shows them on the score card).
    A question counts as answered when a line with its `resume_by` values (from its id and `fields`) is there.
    """
    answers_file = Path(answers_file)
    answers_file.parent.mkdir(parents=True, exist_ok=True)
    errors_file = errors_path(answers_file)
    for path in (answers_file, errors_file):
        cut_torn_line(path)
    done = _answered(answers_file, resume_by)
    todo = [question for question in questions if _key(question, resume_by) not in done]
    counts = {"answered": 0, "failed": 0, "skipped": len(questions) - len(todo)}
    loader = torch.utils.data.DataLoader(
        _Encoded(todo, engine.encoder), batch_size=batch_size, num_workers=num_workers, collate_fn=list
    )
    made = {"conv_mode": getattr(engine, "conv_mode", None), "temperature": params.temperature,
            "top_p": params.top_p, "num_beams": params.num_beams, "max_new_tokens": params.max_new_tokens,
            "batch_size": batch_size}  # fmt: skip
    with answers_file.open("a", encoding="utf-8") as out, errors_file.open("a", encoding="utf-8") as errors:
        for batch in tqdm(loader, total=len(loader), unit="batch", desc="answering", disable=None):
            good = [(question, request) for question, request in batch if request.error is None]
            for question, request in batch:
                if request.error is not None:
                    if strict:
                        raise ValueError(f"question {question.question_id!r}: {request.error} (--strict)")
                    line = {**_identity(question, resume_by), "error": request.error}
                    errors.write(json.dumps(line, ensure_ascii=False) + "\n")
                    counts["failed"] += 1
            if good:
                completions = engine.run(engine.collate([request for _, request in good]), params)
                for (question, _), completion in zip(good, completions, strict=True):
                    row = {"question_id": question.question_id, "prompt": question.prompt,
                           answer_field: completion.text, "answer_id": uuid.uuid4().hex[:22], "model_id": model_id,
                           "metadata": made}  # fmt: skip
                    row.update(question.fields)
                    out.write(json.dumps(row, ensure_ascii=False) + "\n")
                counts["answered"] += len(good)
            out.flush()
            errors.flush()
    return counts


def _identity(question: Question, names: Sequence[str]) -> dict[str, Any]:
    """The `names` fields of the question's answer line: what tells its answer apart from the others."""
    values = {"question_id": question.question_id, "prompt": question.prompt, **question.fields}
    return {name: values.get(name) for name in names}


def _key(question: Question, names: Sequence[str]) -> tuple[str, ...]:
    return tuple(_resume_value(name, value) for name, value in _identity(question, names).items())


def _resume_value(name: str, value: Any) -> str:
    """An answer line's field as resuming compares it. `model_vqa_loader`'s lines written before 2026-11-28 kept
    the image marker in front of the prompt; compared without it, such a file resumes instead of being answered
    again."""
    text = str(value)
    return text.removeprefix(DEFAULT_IMAGE_TOKEN + "\n") if name == "prompt" else text


def _answered(answers_file: Path, names: Sequence[str]) -> set[tuple[str, ...]]:
    """The `names` values (as strings) of every whole line of an append-only answers file (a torn one is skipped)."""
    rows = read_appended_jsonl(answers_file)
    return {tuple(_resume_value(name, row[name]) for name in names) for row in rows if all(n in row for n in names)}


def add_loop_args(parser, unit: str = "questions") -> None:
    """The flags every driver shares: chunks (`--num-chunks/--chunk-idx`), `--batch-size`, `--num-workers`,
    `--strict`; `unit` names what the input holds ("questions", "rows", "records")."""
    parser.add_argument("--num-chunks", type=int, default=1, help=f"split the {unit} into this many chunks")
    parser.add_argument("--chunk-idx", type=int, default=0, help="the chunk this process answers")
    parser.add_argument("--batch-size", type=int, default=1, help="questions per generation batch")
    parser.add_argument("--num-workers", type=int, default=4, help="image-loading processes")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad question or image")


def errors_path(answers_file: str | Path) -> Path:
    """Where the problems of a run over `answers_file` are listed: `<answers_file>.errors.jsonl`."""
    answers_file = Path(answers_file)
    return answers_file.with_name(answers_file.name + ".errors.jsonl")


def record_problems(answers_file: str | Path, source: dict[str, str], problems: list[dict], unit: str) -> None:
    """Append unusable input entries (`problems`, each tagged with `source`, e.g. the question file) to
    `<answers_file>.errors.jsonl`, and say so on stderr."""
    if not problems:
        return
    errors = errors_path(answers_file)
    errors.parent.mkdir(parents=True, exist_ok=True)
    with errors.open("a", encoding="utf-8") as f:
        f.writelines(json.dumps({**source, **problem}) + "\n" for problem in problems)
    print(f"{len(problems)} unusable {unit} listed in {errors}", file=sys.stderr)


def run_driver(
    args: Any,
    read: Callable[[], tuple[list[Question], list[dict]]],
    source: dict[str, str],
    unit: str,
    chunked: bool = True,
    wrap: Callable[[Share4VEngine], Any] | None = None,
    **options: Any,
) -> int:
    """The body of every driver's `main`: `read()` the questions (and the unusable entries), take this process's
    chunk (unless `read` did), list the unusable ones, load the engine from the model flags (`wrap` it, e.g. in the
    ScienceQA answer prompter), answer with `answer_questions(**options)` and print the counts. Bad flags, files or
    input end the process with one line."""
    try:
        params = generation_params(args)
        questions, problems = read()
        if chunked:
            questions = chunk(questions, args.num_chunks, args.chunk_idx)
        errors_path(args.answers_file).unlink(missing_ok=True)  # this run's problems only: a rerun retries the last's
        record_problems(args.answers_file, source, problems, unit)
        engine = engine_from_args(args)
        model_id = args.model_name or get_model_name_from_path(args.model_path)
        counts = answer_questions(wrap(engine) if wrap else engine, questions, args.answers_file, params, model_id,
                                  args.batch_size, args.num_workers, args.strict, **options)  # fmt: skip
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"{counts['answered']} answered, {counts['failed']} failed, {counts['skipped']} already answered")
    return 0
