"""eval/eval_gpt_review_bench.py: LLaVA-Bench-in-the-Wild reviews by a GPT judge, with the original's flags.

    python -m share4v.eval.eval_gpt_review_bench \
        -q playground/data/eval/llava-bench-in-the-wild/questions.jsonl \
        -c playground/data/eval/llava-bench-in-the-wild/context.jsonl \
        -r share4v/eval/table/rule.json \
        -a playground/data/eval/llava-bench-in-the-wild/answers_gpt4.jsonl \
           playground/data/eval/llava-bench-in-the-wild/answers/share4v-7b.jsonl \
        -o playground/data/eval/llava-bench-in-the-wild/reviews/share4v-7b.jsonl
    python -m share4v.eval.summarize_gpt_review -f playground/data/eval/llava-bench-in-the-wild/reviews/share4v-7b.jsonl

For each question (`question_id`, `image`, `text`, `category`) the judge (system prompt `SYSTEM_PROMPT`, temperature
0.2) reads the image's caption from the context file, the question, the reference answer (Assistant 1, the first
`-a` file) and ours (Assistant 2), and the rule prompt `llava_bench_<category>` of `rule.json`: the layout of
`review_content`, as in the original. The first line of its review holds the two scores (`parse_score`). Each
review is appended (and flushed) to the output as `{"id", "question_id", "answer1_id", "answer2_id", "category",
"content", "tuple"}`; questions already in the output are skipped, and judgements are cached (`share4v.eval.judge`).

`table/rule.json` reproduces haotian-liu/LLaVA `llava/eval/table/rule.json` (commit 181a2f8), the grading
instructions ShareGPT4V's scripts use; it is the default of `-r`.

Differences from the original: answers are matched to questions by `question_id` (not by line), a missing caption,
rule or answer is a one-line error, and the score line may separate the two numbers by commas, tabs or several
spaces (the original read only "8 9" and "8,9"; other separators gave [-1, -1]).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from share4v.appended_jsonl import read_appended_jsonl
from share4v.eval.jsonl import append_jsonl, prepare_append, read_jsonl
from share4v.eval.judge import (
    CACHE_SUFFIX,
    Judge,
    JudgeError,
    add_judge_arguments,
    judge_config_from_args,
)

SYSTEM_PROMPT = "You are a helpful and precise assistant for checking the quality of the answer."
TEMPERATURE = 0.2  # the original's
MAX_TOKENS = 1024  # the original's --max-tokens
DEFAULT_RULE_FILE = Path(__file__).resolve().parent / "table" / "rule.json"
RULE_PREFIX = "llava_bench_"
FAILED = [-1, -1]


@dataclass(frozen=True)
class ReviewItem:
    """One question to review: its output row (without `content`/`tuple`) and the judge's user message."""

    row: dict[str, Any]
    content: str


def load_rules(path: str | Path) -> dict[str, dict[str, str]]:
    """rule.json: `{key: {"role", "prompt"}}`, checked."""
    path = Path(path)
    try:
        rules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable rule file ({err})") from None
    if not isinstance(rules, dict):
        raise ValueError(f"{path}: expected a JSON object of rules")
    for key, rule in rules.items():
        if (
            not isinstance(rule, dict)
            or not isinstance(rule.get("role"), str)
            or not isinstance(rule.get("prompt"), str)
        ):
            raise ValueError(f"{path}: rule {key!r} needs string fields 'role' and 'prompt'")
    return rules


def review_content(caption: str, question: str, answer1: str, answer2: str, role: str, prompt: str) -> str:
    """The judge's user message, in the original's layout."""
    return (
        f"[Context]\n{caption}\n\n"
        f"[Question]\n{question}\n\n"
        f"[{role} 1]\n{answer1}\n\n[End of {role} 1]\n\n"
        f"[{role} 2]\n{answer2}\n\n[End of {role} 2]\n\n"
        f"[System]\n{prompt}\n\n"
    )


def parse_score(review: str) -> list[float]:
    """The two scores on the review's first line ("8 9", "8, 9", "8\\t9"); [-1, -1] when it holds anything else."""
    fields = review.split("\n")[0].replace(",", " ").split()
    if len(fields) == 2:
        try:
            scores = [float(fields[0]), float(fields[1])]
        except ValueError:
            return list(FAILED)
        if all(math.isfinite(score) for score in scores):
            return scores
    return list(FAILED)


def build_items(
    question_file: str | Path,
    context_file: str | Path,
    answer_files: Sequence[str | Path],
    rules: dict[str, dict[str, str]],
    rule_file: str | Path = "rule.json",
) -> list[ReviewItem]:
    """One `ReviewItem` per question, in the question file's order (`id` counts from 1 as in the original).

    Raises:
        ValueError / FileNotFoundError: one line naming the file and the row or field at fault.
    """
    if len(answer_files) != 2:
        raise ValueError(f"-a/--answer-list takes two files (reference answers, then ours), got {len(answer_files)}")
    questions = read_jsonl(question_file, ("question_id", "image", "text", "category"))
    captions = {}
    for row in read_jsonl(context_file, ("image", "caption")):
        caption = row["caption"]
        captions[row["image"]] = "\n".join(caption) if isinstance(caption, list) else str(caption)
    answers = [
        {str(row["question_id"]): row for row in read_jsonl(path, ("question_id", "text"))} for path in answer_files
    ]
    items = []
    for number, question in enumerate(questions, start=1):
        qid = question["question_id"]
        if question["image"] not in captions:
            raise ValueError(f"{context_file}: no caption for image {question['image']!r} (question_id {qid!r})")
        category = RULE_PREFIX + str(question["category"])
        if category not in rules:
            raise ValueError(f"{rule_file}: no rule {category!r} (question_id {qid!r} of {question_file})")
        pair = []
        for path, by_id in zip(answer_files, answers, strict=True):
            if str(qid) not in by_id:
                raise ValueError(f"{path}: no answer for question_id {qid!r}")
            pair.append(by_id[str(qid)])
        rule = rules[category]
        content = review_content(
            captions[question["image"]],
            question["text"],
            pair[0]["text"],
            pair[1]["text"],
            rule["role"],
            rule["prompt"],
        )
        row = {
            "id": number,
            "question_id": qid,
            "answer1_id": pair[0].get("answer_id", pair[0]["question_id"]),
            "answer2_id": pair[1].get("answer_id", pair[1]["question_id"]),
            "category": category,
        }
        items.append(ReviewItem(row, content))
    return items


def review(items: Sequence[ReviewItem], output: str | Path, judge: Judge, max_tokens: int = MAX_TOKENS) -> dict:
    """Review every item not yet in `output`, appending each review; returns counts `reviewed`, `skipped`,
    `unscored` (reviews whose first line held no score pair: tuple [-1, -1], review kept)."""
    output = prepare_append(output)
    done = {str(row.get("question_id")) for row in read_appended_jsonl(output)}
    todo = [item for item in items if str(item.row["question_id"]) not in done]
    counts = {"reviewed": 0, "skipped": len(items) - len(todo), "unscored": 0}
    for item in tqdm(todo, unit="review", desc="reviewing", disable=None):
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": item.content}]
        text = judge.complete(messages, temperature=TEMPERATURE, max_tokens=max_tokens).text
        scores = parse_score(text)
        append_jsonl(output, {**item.row, "content": text, "tuple": scores})
        counts["reviewed"] += 1
        counts["unscored"] += scores == FAILED
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="LLaVA-Bench-in-the-Wild: GPT-judged reviews of two answer files (reference, then ours)."
    )
    parser.add_argument(
        "-q", "--question", required=True, help="questions (JSON lines: question_id, image, text, category)"
    )
    parser.add_argument("-c", "--context", required=True, help="captions (JSON lines: image, caption)")
    parser.add_argument(
        "-r", "--rule", default=str(DEFAULT_RULE_FILE), help="rule prompts (JSON; default: the packaged %(default)s)"
    )
    parser.add_argument("-a", "--answer-list", nargs="+", required=True, help="reference answers, then ours")
    parser.add_argument("-o", "--output", required=True, help="reviews (JSON lines, appended; reruns resume)")
    parser.add_argument(
        "--max-tokens", type=int, default=MAX_TOKENS, help="most tokens the judge may write (default: %(default)s)"
    )
    add_judge_arguments(parser, cache_default=f"<output>{CACHE_SUFFIX}")
    args = parser.parse_args(argv)
    try:
        items = build_items(args.question, args.context, args.answer_list, load_rules(args.rule), args.rule)
        with Judge(judge_config_from_args(args, args.output)) as judge:
            counts = review(items, args.output, judge, args.max_tokens)
            print(
                f"{args.output}: {counts['reviewed']} reviewed ({judge.requests_made} requests to {judge.config.model})"
                f", {counts['skipped']} already there, {counts['unscored']} without a score pair"
            )
    except (OSError, ValueError, JudgeError) as err:
        sys.exit(f"error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
