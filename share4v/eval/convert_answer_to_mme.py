"""eval/convert_answer_to_mme.py: an MME answer file → the result folder MME's eval tool scores.

    cd playground/data/eval/MME
    python -m share4v.eval.convert_answer_to_mme --experiment share4v-7b
    python -m share4v.eval.eval_mme --results_dir eval_tool/answers/share4v-7b

Reads `answers/EXPERIMENT.jsonl` (`question_id` = "<category>/.../<image file>", `prompt` = the question as asked,
with or without the image token, `text`) and writes `eval_tool/answers/EXPERIMENT/<category>.txt`, one line per
question with four tab-separated fields: image file, question, ground truth, prediction; the two questions of an
image on adjacent lines (the eval tool reads the lines in pairs). Ground truth comes from the benchmark's own files:
in `MME_Benchmark_release`, each category folder holds per image a `<image stem>.txt` of tab-separated
"question, answer" lines, either beside the images or in `questions_answers_YN/` (with the images in `images/`).
A question is matched after dropping the image token and the short-answer instruction and adding " Please answer
yes or no." where missing, ignoring runs of spaces (some MME questions have two before it); tabs and newlines in a
prediction become spaces.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

from share4v.constants import DEFAULT_IMAGE_TOKEN
from share4v.eval.jsonl import read_jsonl
from share4v.eval.submission import write_text

SHORT_ANSWER = "Answer the question using a single word or phrase."
YES_OR_NO = "Please answer yes or no."

# (category, "<image stem>.txt") -> {question with spaces collapsed: (question as written, answer)}
GroundTruth = dict[tuple[str, str], dict[str, tuple[str, str]]]


def _collapse(text: str) -> str:
    return " ".join(text.split())


def read_ground_truth(data_path: str | Path) -> GroundTruth:
    """The questions and answers of every category folder under `data_path`.

    Raises:
        FileNotFoundError / ValueError: no such folder, or a line that is not a tab-separated question and answer
            (file and line).
    """
    data_path = Path(data_path)
    if not data_path.is_dir():
        raise FileNotFoundError(f"no such folder: {data_path}")
    truth: GroundTruth = {}
    for category_dir in sorted(p for p in data_path.iterdir() if p.is_dir()):
        qa_dir = category_dir / "questions_answers_YN"
        qa_dir = qa_dir if qa_dir.is_dir() else category_dir
        for qa_file in sorted(qa_dir.glob("*.txt")):
            questions = truth.setdefault((category_dir.name, qa_file.name), {})
            for number, line in enumerate(qa_file.read_text(encoding="utf-8").splitlines(), start=1):
                if not line.strip():
                    continue
                fields = line.strip().split("\t")
                if len(fields) != 2:
                    raise ValueError(f"{qa_file}:{number}: expected 'question<TAB>answer', got {len(fields)} fields")
                questions[_collapse(fields[0])] = (fields[0], fields[1])
    if not truth:
        raise ValueError(f"{data_path}: no category folders with question files (is this MME_Benchmark_release?)")
    return truth


def _asked_question(prompt: str) -> str:
    """The question of a prompt as MME writes it: the image token and the short-answer instruction dropped, the
    yes/no one present."""
    question = prompt.replace(DEFAULT_IMAGE_TOKEN, "").replace(SHORT_ANSWER, "").strip()
    if YES_OR_NO not in question:
        question = f"{question} {YES_OR_NO}"
    return _collapse(question)


def mme_result_files(answers_file: str | Path, truth: GroundTruth) -> dict[str, str]:
    """`{category: the text of <category>.txt}`; within a category, images in order of first answer.

    Raises:
        ValueError: naming the answer whose image or question the benchmark files do not have.
    """
    lines: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for number, answer in enumerate(read_jsonl(answers_file, ("question_id", "prompt", "text")), start=1):
        parts = str(answer["question_id"]).split("/")
        if len(parts) < 2:
            raise ValueError(
                f"{answers_file}: answer {number} has question_id {answer['question_id']!r}, "
                "expected '<category>/<image file>'"
            )
        category, image = parts[0], parts[-1]
        questions = truth.get((category, f"{Path(image).stem}.txt"))
        if questions is None:
            raise ValueError(
                f"{answers_file}: answer {number} ({answer['question_id']}): no such image in the benchmark"
            )
        found = questions.get(_asked_question(answer["prompt"]))
        if found is None:
            raise ValueError(
                f"{answers_file}: answer {number} ({answer['question_id']}): question "
                f"{answer['prompt'][:60]!r} is not among the image's questions"
            )
        prediction = " ".join(answer["text"].replace("\t", " ").splitlines())
        lines[category][image].append("\t".join((image, found[0], found[1], prediction)))
    return {
        category: "".join(line + "\n" for image_lines in images.values() for line in image_lines)
        for category, images in lines.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experiment", required=True, help="the checkpoint name: reads ANSWERS_DIR/EXPERIMENT.jsonl")
    parser.add_argument("--answers-dir", default="answers", help="folder of the answer files (default: %(default)s)")
    parser.add_argument(
        "--data-path",
        default="MME_Benchmark_release",
        help="the benchmark folder, for the ground truth (default: %(default)s)",
    )
    parser.add_argument(
        "--results-dir",
        default="eval_tool/answers",
        help="writes RESULTS_DIR/EXPERIMENT/<category>.txt (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        files = mme_result_files(Path(args.answers_dir, f"{args.experiment}.jsonl"), read_ground_truth(args.data_path))
        destination = Path(args.results_dir, args.experiment)
        for category, text in sorted(files.items()):
            write_text(text, destination / f"{category}.txt")
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    print(f"wrote {len(files)} category files to {destination}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
