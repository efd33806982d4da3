"""exact.py

Exact-match scorers: GQA accuracy (as the GQA converter and official eval.py compare answers) and SEED-Bench accuracy
per question type (as the original SEED converter computes it). Standard library only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

_SEED_ROW_KEYS = ("question_type", "prediction", "answer")


def exact_match_accuracy(
    predictions: Sequence[str | None],
    answers: Sequence[str],
    normalize: Callable[[str], str] | None = None,
) -> float:
    """Share of predictions equal to their answer, in [0, 1].

    Args:
        predictions: the model's answers; None (no answer) counts as wrong.
        answers: the ground truth, in the same order.
        normalize: applied to both sides before comparing; None compares the strings as they are.

    Raises:
        ValueError: empty input or different lengths.
    """
    if len(predictions) != len(answers):
        raise ValueError(f"exact_match_accuracy got {len(predictions)} predictions but {len(answers)} answers")
    if not answers:
        raise ValueError("exact_match_accuracy got no predictions to score")
    same = normalize or (lambda text: text)
    right = sum(pred is not None and same(pred) == same(gold) for pred, gold in zip(predictions, answers, strict=True))
    return right / len(answers)


def gqa_normalize(answer: str) -> str:
    """GQA's answer form: trimmed, trailing periods removed, lower-cased ("Yes." → "yes")."""
    return answer.strip().rstrip(".").lower()


def gqa_accuracy(predictions: Sequence[str], answers: Sequence[str]) -> float:
    """GQA accuracy: exact match after `gqa_normalize` on both sides, in [0, 1]."""
    return exact_match_accuracy(predictions, answers, normalize=gqa_normalize)


def seed_scores(rows: Iterable[Mapping], tolerant: bool = False) -> dict:
    """SEED-Bench accuracy overall and per question type, each in [0, 1].

    A prediction is right when it equals the answer letter exactly ("A" is right for A; "A." or "(A)" is not), or with
    `tolerant` when its first character is the letter (the original converter's `-t`).

    Args:
        rows: mappings with `question_type`, `prediction` (None for a question never answered: wrong) and `answer`.
        tolerant: compare only the prediction's first character.

    Returns:
        `overall` (right answers over all questions) and `{question_type: accuracy}`.

    Raises:
        ValueError: no rows, or a row lacks a key.
    """
    per_type: dict[str, list[bool]] = defaultdict(list)
    for position, row in enumerate(rows):
        missing = [key for key in _SEED_ROW_KEYS if key not in row]
        if missing:
            raise ValueError(f"SEED row {position} lacks {', '.join(missing)}; rows need {', '.join(_SEED_ROW_KEYS)}")
        prediction = row["prediction"]
        if prediction is not None and tolerant:
            prediction = prediction.strip()[:1]
        per_type[row["question_type"]].append(prediction == row["answer"])
    if not per_type:
        raise ValueError("seed_scores got no rows to score")
    all_results = [right for results in per_type.values() for right in results]
    scores = {"overall": sum(all_results) / len(all_results)}
    scores.update({kind: sum(results) / len(results) for kind, results in per_type.items()})
    return scores
