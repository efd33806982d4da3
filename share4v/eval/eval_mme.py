"""eval/eval_mme.py: MME scores of a result folder, as MME's eval tool (calculation.py) computes and prints them.

    python -m share4v.eval.eval_mme --results_dir playground/data/eval/MME/eval_tool/answers/share4v-7b

The folder holds one `<category>.txt` per MME subtask (written by `share4v.eval.convert_answer_to_mme`), each line
four tab-separated fields: image, question, ground truth, prediction. Per subtask the score is acc × 100 + acc+ × 100
(acc+: both questions of an image right); perception sums the 10 perception subtasks, cognition the 4 cognition ones
(`share4v.eval.metrics.mme_scores`). A missing subtask file is reported and adds nothing to its total.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from share4v.eval.metrics import MME_COGNITION, MME_PERCEPTION, mme_scores
from share4v.eval.scores import write_scores


def read_results(results_dir: str | Path) -> tuple[list[dict], list[str]]:
    """The rows of every subtask file present, and the names of the subtasks whose file is missing.

    Raises:
        FileNotFoundError / ValueError: no such folder, no subtask file at all, or a line without four
            tab-separated fields or with a ground truth other than Yes/No (file and line).
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise FileNotFoundError(f"no such folder: {results_dir}")
    rows, missing = [], []
    for category in MME_PERCEPTION + MME_COGNITION:
        path = results_dir / f"{category}.txt"
        if not path.is_file():
            missing.append(category)
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) != 4:
                raise ValueError(
                    f"{path}:{number}: {len(fields)} tab-separated fields, expected image, question, "
                    "ground truth, prediction"
                )
            image, _, answer, prediction = fields
            if answer.strip().lower() not in ("yes", "no"):
                raise ValueError(f"{path}:{number}: ground truth {answer!r} is not Yes or No")
            rows.append({"category": category, "image": image, "prediction": prediction, "answer": answer})
    if not rows:
        raise ValueError(f"{results_dir}: none of MME's <category>.txt files")
    return rows, missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results_dir",
        "--results-dir",
        dest="results_dir",
        required=True,
        help="folder of <category>.txt result files",
    )
    parser.add_argument("--scores-file", default=None, help="score file to write (default: none)")
    args = parser.parse_args(argv)
    try:
        rows, missing = read_results(args.results_dir)
        scores = mme_scores(rows)
        for title, categories, total in (
            ("Perception", MME_PERCEPTION, "perception"),
            ("Cognition", MME_COGNITION, "cognition"),
        ):
            print(f"=========== {title} ===========")
            print(f"total score: {scores[total]:.2f}\n")
            for category in categories:
                if category in scores:
                    print(f"\t {category}  score: {scores[category]:.2f}")
            print()
        if missing:
            print(f"missing (scored 0): {', '.join(missing)}", file=sys.stderr)
        if args.scores_file:
            print(f"wrote {write_scores(args.scores_file, 'mme', scores, source=args.results_dir)}")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
