"""eval/summarize_gpt_review.py: LLaVA-Bench scores from GPT reviews, printed as ShareGPT4V's summarizer prints them.

    python -m share4v.eval.summarize_gpt_review \
        -f playground/data/eval/llava-bench-in-the-wild/reviews/share4v-7b.jsonl --scores-file scores/llavabench.json
    python -m share4v.eval.summarize_gpt_review -d playground/data/eval/llava-bench-in-the-wild/reviews -s 7b

For each review file (`eval_gpt_review_bench` output): its name, then per category, sorted, with "all" among them,
`<category> <relative> <reference×10> <ours×10>`: the mean scores of the reference answers (Assistant 1) and of ours
(Assistant 2), each rounded to 3 decimals, and relative = ours / reference × 100; printed rounded to 1 decimal.
LLaVA-Bench's headline number is the relative score of "all" (`--scores-file` writes it as metric "overall").
As in the original, a review whose score line could not be read (tuple [-1, -1]) counts in the means; a warning
says how many there are.

Review files: `-f` names them (under `-d` when both are given); otherwise `-d` is listed for `*.jsonl` files whose
name starts with gpt4_text/reviews_/review_, or all of them when the folder's path contains "review". `-s` keeps
files whose name contains every given string, `-v 0613|0314` those of one judge version ("0613" in the name, else
0314), `-i` drops question ids.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from share4v.eval.jsonl import read_jsonl
from share4v.eval.scores import write_scores

RULE_PREFIX = "llava_bench_"
SEPARATOR = "================================="


def review_files(
    directory: str | Path | None,
    files: Sequence[str] = (),
    select: Sequence[str] | None = None,
    version: str | None = None,
) -> list[tuple[str, Path]]:
    """(config name, path) of each review file to summarize, sorted by name, as the original picks them."""
    if files:
        names = list(files)
    elif directory is not None:
        names = [
            name
            for name in os.listdir(directory)
            if name.endswith(".jsonl")
            and (name.startswith(("gpt4_text", "reviews_", "review_")) or "review" in str(directory))
        ]
    else:
        raise ValueError("name review files with -f, or a folder of them with -d")
    chosen = []
    for name in sorted(names):
        config = os.path.basename(name).replace("gpt4_text_", "").replace(".jsonl", "")
        if select is not None and any(part not in config for part in select):
            continue
        if version is not None and version != ("0613" if "0613" in config else "0314"):
            continue
        chosen.append((config, Path(directory, name) if directory is not None else Path(name)))
    return chosen


def _pair(value: object) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        return float(value[0]), float(value[1])
    return None


def mean_scores(path: str | Path, ignore: Iterable[object] = ()) -> dict[str, tuple[float, float, int]]:
    """Per category (and "all"), sorted: (mean reference score, mean score of ours, both rounded to 3 decimals,
    number of reviews).

    Raises:
        ValueError / FileNotFoundError: naming the file and line of a review without a score pair.
    """
    ignored = {str(qid) for qid in ignore}
    scores: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for number, review in enumerate(read_jsonl(path), start=1):
        if str(review.get("question_id")) in ignored:
            continue
        field = "tuple" if "category" in review or "tuple" in review else "score"
        pair = _pair(review.get(field))
        if pair is None:
            raise ValueError(f"{path}: row {number}: field {field!r} is not a pair of numbers")
        if "category" in review:
            scores[str(review["category"])].append(pair)
        scores["all"].append(pair)
    return {
        key: (
            round(math.fsum(p[0] for p in pairs) / len(pairs), 3),
            round(math.fsum(p[1] for p in pairs) / len(pairs), 3),
            len(pairs),
        )
        for key, pairs in sorted(scores.items())
    }


def relative_score(reference: float, ours: float) -> float:
    """ours / reference × 100, rounded to 1 decimal (nan when the reference mean is 0)."""
    return round(ours / reference * 100, 1) if reference else math.nan


def summary_lines(means: dict[str, tuple[float, float, int]]) -> list[str]:
    """The original's lines: `<category> <relative> <reference×10> <ours×10>`."""
    return [
        f"{key} {relative_score(s1, s2)} {round(s1 * 10, 1)} {round(s2 * 10, 1)}" for key, (s1, s2, _) in means.items()
    ]


def llavabench_scores(means: dict[str, tuple[float, float, int]]) -> dict[str, float]:
    """The score file's metrics: "overall" (relative score of all reviews), one relative score per category
    (prefix `llava_bench_` dropped), and the two means ×10 of all reviews."""
    reference, ours, _ = means["all"]
    scores = {"overall": relative_score(reference, ours)}
    for key, (s1, s2, _) in means.items():
        if key != "all":
            scores[key.removeprefix(RULE_PREFIX)] = relative_score(s1, s2)
    scores.update(reference_score=round(reference * 10, 1), model_score=round(ours * 10, 1))
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="LLaVA-Bench: relative scores from GPT review files.")
    parser.add_argument("-d", "--dir", default=None, help="folder of review files (default: none)")
    parser.add_argument("-v", "--version", default=None, help="only reviews of judge 0613 or 0314 (default: all)")
    parser.add_argument("-s", "--select", nargs="*", default=None, help="only files whose name has all these strings")
    parser.add_argument("-f", "--files", nargs="*", default=[], help="review files (JSON lines; default: list -d)")
    parser.add_argument("-i", "--ignore", nargs="*", default=[], help="question ids to leave out (default: none)")
    parser.add_argument("--scores-file", default=None, help="write share4v.eval.scores JSON here (one review file)")
    args = parser.parse_args(argv)
    try:
        chosen = review_files(args.dir, args.files, args.select, args.version)
        if args.scores_file and len(chosen) != 1:
            raise ValueError(f"--scores-file needs exactly one review file, got {len(chosen)}")
        for config, path in chosen:
            means = mean_scores(path, args.ignore)
            print(config)
            print("\n".join(summary_lines(means)))
            print(SEPARATOR)
            unscored = sum(1 for review in read_jsonl(path) if review.get("tuple") == [-1, -1])
            if unscored:
                print(f"warning: {path}: {unscored} reviews without a score pair count as [-1, -1]", file=sys.stderr)
            if args.scores_file:
                if "all" not in means:
                    raise ValueError(f"{path}: no reviews")
                print(f"wrote {write_scores(args.scores_file, 'llavabench', llavabench_scores(means), path)}")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
