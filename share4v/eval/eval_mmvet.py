"""eval/eval_mmvet.py: MM-Vet scores from a GPT grader, with the official grader's few-shot prompt and retry rule.

    python scripts/convert_mmvet_for_eval.py --src answers/mm-vet/share4v-7b.jsonl --dst results/share4v-7b.json
    python -m share4v.eval.eval_mmvet --mmvet-path playground/data/eval/mm-vet --result-file results/share4v-7b.json \
        --scores-file scores/mmvet.json

Needs MM-Vet's ground truth `mm-vet.json` (`{"v1_0": {"question", "answer", "capability": [...], ...}}`, from the
benchmark's `mm-vet.zip`) and the model's answers: the official results JSON `{"v1_<id>": answer}`, or the answer
file itself (JSON lines with question_id, text).

Grading, as the official grader (yuweihao/MM-Vet `mm-vet_evaluator.py`) does it:
- The query is the few-shot prompt (`table/mmvet_grader_prompt.txt`, reproduced from that file) + "\\n" +
  `question | answer | prediction | ` with " <AND> " / " <OR> " spaced out in the answer; one user message,
  `max_tokens` 3, temperature 0.
- The reply's first space-separated word must be a number in [0, 1]. Otherwise the query is asked again with
  "\\nPredict the correctness of the answer (digit): " appended, at temperatures 0, 0.5, 1.0 and 1.5; after 5 replies
  without a score the answer gets 0.0. (Out-of-range numbers are asked again, not clamped, as there. The official
  loop also makes a sixth request whose reply it ignores; that one is skipped here: same scores.)
- Scores: per capability, the sum of the answers' scores over the number of questions needing that capability,
  × 100; "total" over all questions; rounded to `--decimal-places` (1). Capability integrations (the set of
  capabilities a question needs, named by joining them sorted with "_") are printed the same way.

Each grade is appended (and flushed) to `--grade-file` (`{"id", "capability", "score", "content", "model",
"attempts", "judge"}`); questions graded by the same judge are skipped on a rerun, and judgements are cached
(`share4v.eval.judge`). Left out: `--num_run` (several grading runs and their std) and the Bard subset.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tqdm import tqdm

from share4v.appended_jsonl import read_appended_jsonl
from share4v.eval.jsonl import append_jsonl, prepare_append
from share4v.eval.judge import (
    CACHE_SUFFIX,
    Judge,
    JudgeError,
    add_judge_arguments,
    judge_config_from_args,
)
from share4v.eval.scores import write_scores
from share4v.eval.submission import mmvet_predictions

PROMPT_FILE = Path(__file__).resolve().parent / "table" / "mmvet_grader_prompt.txt"
DIGIT_HINT = "\nPredict the correctness of the answer (digit): "
MAX_TOKENS = 3
# The official grader's temperatures: the plain query first, then the query with DIGIT_HINT.
TEMPERATURES = (0.0, 0.0, 0.5, 1.0, 1.5)
FIELDS = ("question", "answer", "capability")


def load_prompt(path: str | Path = PROMPT_FILE) -> str:
    return Path(path).read_text(encoding="utf-8")


def load_ground_truth(path: str | Path) -> dict[str, dict[str, Any]]:
    """mm-vet.json (given itself or the folder holding it), checked: one line naming the item and field at fault."""
    path = Path(path)
    if path.is_dir():
        path = path / "mm-vet.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable MM-Vet ground truth file ({err})") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a JSON object of questions by id")
    for qid, item in data.items():
        missing = [name for name in FIELDS if not isinstance(item, dict) or name not in item]
        if missing:
            raise ValueError(f"{path}: question {qid!r} lacks field {missing[0]!r}")
        if not isinstance(item["capability"], list) or not item["capability"]:
            raise ValueError(f"{path}: question {qid!r}: field 'capability' is not a list of capabilities")
    return data


def load_predictions(path: str | Path) -> dict[str, str]:
    """The answers by MM-Vet id: a results JSON `{"v1_<id>": answer}` or an answer file (JSON lines)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        return mmvet_predictions(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable results file ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f'{path}: expected a JSON object {{"v1_<id>": answer}}')
    for qid, answer in data.items():
        if not isinstance(answer, str):
            raise ValueError(f"{path}: the answer of {qid!r} is not a string")
    return data


def grader_query(prompt: str, question: str, answer: str, prediction: str, digit_hint: bool = False) -> str:
    """The official grader's user message for one answer."""
    answer = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return prompt + "\n" + " | ".join([question, answer, prediction, ""]) + (DIGIT_HINT if digit_hint else "")


def parse_correctness(reply: str) -> float | None:
    """The score in the reply's first space-separated word, if it is a number in [0, 1]."""
    try:
        score = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None


def grade(judge: Judge, prompt: str, item: Mapping[str, Any], prediction: str) -> dict[str, Any]:
    """One answer's grade: `score` (0.0 when no reply held one), the last reply, its model, the attempts made."""
    for attempt, temperature in enumerate(TEMPERATURES):
        query = grader_query(prompt, item["question"], item["answer"], prediction, digit_hint=attempt > 0)
        reply = judge.complete([{"role": "user", "content": query}], temperature=temperature, max_tokens=MAX_TOKENS)
        score = parse_correctness(reply.text)
        if score is not None:
            break
    return {"score": 0.0 if score is None else score, "content": reply.text, "model": reply.model,
            "attempts": attempt + 1}  # fmt: skip


def grade_all(
    ground_truth: Mapping[str, Mapping[str, Any]],
    predictions: Mapping[str, str],
    grade_file: str | Path,
    judge: Judge,
    prompt: str,
    result_file: str | Path = "results",
) -> dict[str, dict[str, Any]]:
    """Grade every question not yet in `grade_file` (by this judge), appending each grade; returns the grades of
    all questions by id."""
    missing = [qid for qid in ground_truth if qid not in predictions]
    if missing:
        raise ValueError(f"{result_file}: no answer for {missing[0]!r} ({len(missing)} of {len(ground_truth)} missing)")
    grade_file = prepare_append(grade_file)
    judge_model = judge.config.model
    grades = {}
    for row in read_appended_jsonl(grade_file):
        if row.get("judge") != judge_model:
            raise ValueError(
                f"{grade_file}: holds grades by judge {row.get('judge')!r}, not {judge_model!r}: use another "
                "--grade-file"
            )
        grades[str(row.get("id"))] = row
    todo = [qid for qid in ground_truth if qid not in grades]
    for qid in tqdm(todo, unit="answer", desc="grading", disable=None):
        item = ground_truth[qid]
        row = {"id": qid, "capability": item["capability"], **grade(judge, prompt, item, predictions[qid])}
        row["judge"] = judge_model
        append_jsonl(grade_file, row)
        grades[qid] = row
    return grades


def _percent(sums: Mapping[str, float], counts: Counter, decimal_places: int) -> dict[str, float]:
    order = sorted(counts, key=lambda name: (-counts[name], name))
    return {name: round(sums.get(name, 0.0) / counts[name] * 100, decimal_places) for name in order}


def mmvet_scores(
    ground_truth: Mapping[str, Mapping[str, Any]], grades: Mapping[str, Mapping[str, Any]], decimal_places: int = 1
) -> tuple[dict[str, float], dict[str, float]]:
    """(scores per capability + "total", scores per capability integration + "total"), ×100 and rounded, the
    capabilities in order of how many questions need them."""
    capabilities, integrations = Counter(), Counter()
    by_capability: dict[str, list[float]] = {}
    by_integration: dict[str, list[float]] = {}
    for qid, item in ground_truth.items():
        if qid not in grades:
            raise ValueError(f"question {qid!r} has no grade")
        score = float(grades[qid]["score"])
        caps = sorted(set(item["capability"]))
        capabilities.update(caps)
        integrations["_".join(caps)] += 1
        for name in caps:
            by_capability.setdefault(name, []).append(score)
        by_integration.setdefault("_".join(caps), []).append(score)
    total = round(math.fsum(float(grades[qid]["score"]) for qid in ground_truth) / len(ground_truth) * 100,
                  decimal_places)  # fmt: skip
    per_capability = _percent({k: math.fsum(v) for k, v in by_capability.items()}, capabilities, decimal_places)
    per_integration = _percent({k: math.fsum(v) for k, v in by_integration.items()}, integrations, decimal_places)
    return {**per_capability, "total": total}, {**per_integration, "total": total}


def _table(scores: Mapping[str, float]) -> str:
    return "\t".join(scores) + "\n" + "\t".join(str(value) for value in scores.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MM-Vet: GPT-graded scores per capability and in total.")
    parser.add_argument("--mmvet-path", "--mmvet_path", required=True, help="mm-vet.json, or the folder holding it")
    parser.add_argument(
        "--result-file", "--result_file", required=True, help='answers: {"v1_<id>": answer} JSON, or answer JSON lines'
    )
    parser.add_argument(
        "--grade-file",
        default=None,
        help="grades (JSON lines, appended; default: <result-file stem>_<judge>-grade.jsonl)",
    )
    parser.add_argument("--scores-file", default=None, help="write share4v.eval.scores JSON here (default: none)")
    parser.add_argument(
        "--decimal-places",
        "--decimal_places",
        type=int,
        default=1,
        help="rounding of the scores (default: %(default)s)",
    )
    add_judge_arguments(parser, cache_default=f"<result-file>{CACHE_SUFFIX}")
    args = parser.parse_args(argv)
    try:
        ground_truth = load_ground_truth(args.mmvet_path)
        predictions = load_predictions(args.result_file)
        result = Path(args.result_file)
        config = judge_config_from_args(args, result)
        grade_file = args.grade_file or result.with_name(f"{result.stem}_{config.model.replace('/', '_')}-grade.jsonl")
        with Judge(config) as judge:
            grades = grade_all(ground_truth, predictions, grade_file, judge, load_prompt(), result)
            print(f"{grade_file}: {len(grades)} grades ({judge.requests_made} requests to {config.model})")
        per_capability, per_integration = mmvet_scores(ground_truth, grades, args.decimal_places)
        print(_table(per_capability))
        print()
        print(_table(per_integration))
        if args.scores_file:
            print(f"wrote {write_scores(args.scores_file, 'mmvet', per_capability, result)}")
    except (OSError, ValueError, JudgeError) as err:
        sys.exit(f"error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
