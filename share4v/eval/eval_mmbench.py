"""eval/eval_mmbench.py: MMBench accuracy of an answer file against a question TSV with answers (the dev split).

    python -m share4v.eval.eval_mmbench --annotation-file playground/data/eval/mmbench/mmbench_dev_20230712.tsv \
        --result-file playground/data/eval/mmbench/answers/mmbench_dev_20230712/share4v-7b/merge.jsonl

Answer lines (from `share4v.eval.model_vqa_mmbench`): `question_id` = the TSV `index`, `text`, and for circular
evaluation `round_id`, `options` (the option texts in the order shown as A, B, ...) and `option_char` (the TSV letter
of each shown option). A round is right when the letter or option text read from the answer
(`share4v.eval.metrics.match_option`; no GPT judge) is the shown position of the TSV's answer.

- `accuracy` (what MMBench reports): circular — a question is right only when every round and every variant row of
  the TSV (indices equal modulo 1,000,000) is right.
- `vanilla_accuracy`: round 0 of the original rows (index < 1,000,000), each scored alone.
A TSV question with no answer counts as wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from share4v.eval.jsonl import read_jsonl
from share4v.eval.metrics import MMBENCH_INDEX_MODULUS, match_option, mmbench_circular_accuracy
from share4v.eval.scores import write_scores
from share4v.eval.submission import question_index, read_mmbench_tsv

LETTERS = "ABCD"  # the options MMBench has and the inference driver reads
_EMPTY_OPTIONS = ("", "nan", "none")  # how pandas and the inference driver see a missing option


def tsv_options(row: dict[str, str]) -> list[str]:
    """The option texts of a TSV row, A, B, ... up to the first missing one."""
    options = []
    for letter in LETTERS:
        value = row.get(letter)
        if value is None or value.strip().lower() in _EMPTY_OPTIONS:
            break
        options.append(value)
    return options


def _round_row(answer: dict, index: int, correct: str, row_options: list[str], where: str) -> dict:
    """The metric row of one answered round: the variant's options by shown letter and its right letter."""
    if answer.get("round_id", 0) != 0 and not ("options" in answer and "option_char" in answer):
        raise ValueError(f"{where}: round {answer['round_id']} needs 'options' and 'option_char'")
    options = answer.get("options", row_options)
    option_char = answer.get("option_char", list(LETTERS[: len(options)]))
    if len(option_char) != len(options):
        raise ValueError(f"{where}: {len(options)} options but {len(option_char)} option_char letters")
    if correct not in option_char:
        raise ValueError(f"{where}: the TSV answer {correct!r} is not among option_char {option_char}")
    shown = dict(zip(LETTERS, options, strict=False))
    return {
        "index": index,
        "prediction": answer["text"],
        "answer": LETTERS[option_char.index(correct)],
        "options": shown,
    }


def score_mmbench(annotation_file: str | Path, result_file: str | Path) -> dict:
    """`{"accuracy", "vanilla_accuracy", "questions", "rounds", "unanswered"}`, accuracies in [0, 1]."""
    header, tsv_rows = read_mmbench_tsv(annotation_file)
    if "answer" not in header:
        raise ValueError(f"{annotation_file}: no 'answer' column (only the dev split can be scored locally)")
    by_index = {int(row["index"]): row for row in tsv_rows}
    rows, seen = [], set()
    for number, answer in enumerate(read_jsonl(result_file, ("question_id", "text")), start=1):
        where = f"{result_file}: answer {number}"
        index = question_index(answer["question_id"], where)
        if index not in by_index:
            raise ValueError(f"{where} has question_id {index}, not an index of {annotation_file}")
        round_id = answer.get("round_id", 0)
        if (index, round_id) in seen:
            raise ValueError(f"{where} repeats question_id {index} round {round_id}")
        seen.add((index, round_id))
        row = by_index[index]
        rows.append(_round_row(answer, index, row["answer"], tsv_options(row), where) | {"round": round_id})
    answered = {index for index, _ in seen}
    for index, row in by_index.items():
        if index not in answered:
            options = dict(zip(LETTERS, tsv_options(row), strict=False))
            rows.append({"index": index, "prediction": "", "answer": row["answer"], "options": options, "round": 0})
    if not rows:
        raise ValueError(f"{annotation_file}: no questions")
    vanilla = [row for row in rows if row["round"] == 0 and row["index"] < MMBENCH_INDEX_MODULUS]
    right = [match_option(row["prediction"], row["options"]) == row["answer"] for row in vanilla]
    return {
        "accuracy": mmbench_circular_accuracy(rows),
        "vanilla_accuracy": sum(right) / len(right) if right else 0.0,
        "questions": len({index % MMBENCH_INDEX_MODULUS for index in by_index}),
        "rounds": len(seen),
        "unanswered": len(by_index) - len(answered),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotation-file", required=True, help="the MMBench question TSV with an answer column")
    parser.add_argument("--result-file", required=True, help="answers (JSON lines with question_id, text, ...)")
    parser.add_argument(
        "--lang",
        choices=("en", "cn"),
        default="en",
        help="which MMBench, for the score file's benchmark key (default: %(default)s)",
    )
    parser.add_argument("--scores-file", default=None, help="score file to write (default: none)")
    args = parser.parse_args(argv)
    try:
        result = score_mmbench(args.annotation_file, args.result_file)
        print(
            f"Questions: {result['questions']}, answered rounds: {result['rounds']}, "
            f"TSV rows unanswered: {result['unanswered']}"
        )
        print(f"Circular accuracy: {100 * result['accuracy']:.2f}%")
        print(f"Vanilla accuracy (round 0): {100 * result['vanilla_accuracy']:.2f}%")
        if args.scores_file:
            scores = {key: 100 * value if "accuracy" in key else value for key, value in result.items()}
            path = write_scores(args.scores_file, f"mmbench_{args.lang}", scores, source=args.result_file)
            print(f"wrote {path}")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
