"""yes_no.py

Scorers of the yes/no benchmarks: POPE (as LLaVA-1.5's eval_pope.py scores it) and MME (as MME's eval_tool
calculation.py does: acc and acc+ per subtask, perception and cognition totals). Standard library only.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

# MME's official split of its 14 subtasks, in the order of its eval tool.
MME_PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")

_POPE_NEGATIONS = frozenset({"No", "no", "not"})
_MME_ROW_KEYS = ("category", "image", "prediction", "answer")


def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, or 0.0 when the denominator is 0 (e.g. precision with no "yes" prediction)."""
    return numerator / denominator if denominator else 0.0


def pope_parse_answer(text: str) -> str:
    """Read a free-text answer as "yes" or "no", as LLaVA-1.5's POPE scorer does.

    Keep the text before the first period, drop commas and split on spaces; the answer is "no" when one of the
    words is exactly "No", "no" or "not", else "yes". The match is case-sensitive, as in the original ("NO" reads
    as yes), and "Yes, there is no dog." reads as no.
    """
    first_sentence = text.split(".", 1)[0]
    words = first_sentence.replace(",", "").split(" ")
    return "no" if _POPE_NEGATIONS.intersection(words) else "yes"


def pope_scores(predictions: Sequence[str], labels: Sequence[str]) -> dict:
    """POPE scores with "yes" as the positive class.

    Args:
        predictions: the model's free-text answers, read with `pope_parse_answer`.
        labels: the ground truth, each exactly "yes" or "no", in the same order.

    Returns:
        `accuracy`, `precision`, `recall`, `f1` and `yes_ratio` (share of "yes" predictions), all in [0, 1], plus the
        counts `tp`, `fp`, `tn`, `fn`. A ratio whose denominator is 0 is reported as 0.0.

    Raises:
        ValueError: empty input, different lengths, or a label other than "yes"/"no".
    """
    if len(predictions) != len(labels):
        raise ValueError(f"pope_scores got {len(predictions)} predictions but {len(labels)} labels")
    if not labels:
        raise ValueError("pope_scores got no predictions to score")
    for position, label in enumerate(labels):
        if label not in ("yes", "no"):
            raise ValueError(f"POPE label {position} is {label!r}; labels must be 'yes' or 'no'")
    predicted = [pope_parse_answer(text) for text in predictions]
    pairs = list(zip(predicted, labels, strict=True))
    tp, fp = pairs.count(("yes", "yes")), pairs.count(("yes", "no"))
    tn, fn = pairs.count(("no", "no")), pairs.count(("no", "yes"))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "accuracy": (tp + tn) / len(pairs),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "yes_ratio": (tp + fp) / len(pairs),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def mme_parse_answer(text: str) -> str:
    """Read a free-text answer as "yes", "no" or "other", as MME's eval tool does.

    Lower-case, trim and delete periods; an answer of exactly "yes"/"no" is taken as is; otherwise "yes" found in the
    first four characters gives yes, else "no" found there gives no ("No, it is not" → no, "Not sure" → no), and
    anything else is "other", which never counts as right.
    """
    answer = text.lower().strip().replace(".", "")
    if answer in ("yes", "no"):
        return answer
    head = answer[:4]
    if "yes" in head:
        return "yes"
    return "no" if "no" in head else "other"


def _checked_mme_row(position: int, row: Mapping) -> tuple[str, str, bool]:
    """(category, image, whether the prediction is right) of one row, or a one-line ValueError."""
    missing = [key for key in _MME_ROW_KEYS if key not in row]
    if missing:
        raise ValueError(f"MME row {position} lacks {', '.join(missing)}; rows need {', '.join(_MME_ROW_KEYS)}")
    category, answer = row["category"], str(row["answer"]).lower().strip().replace(".", "")
    if category not in MME_PERCEPTION and category not in MME_COGNITION:
        known = ", ".join(MME_PERCEPTION + MME_COGNITION)
        raise ValueError(f"MME row {position} has unknown category {category!r}; MME's are {known}")
    if answer not in ("yes", "no"):
        raise ValueError(f"MME row {position} has answer {row['answer']!r}; answers must be 'Yes' or 'No'")
    return category, row["image"], mme_parse_answer(row["prediction"]) == answer


def mme_scores(rows: Iterable[Mapping]) -> dict:
    """MME scores: per subtask acc × 100 + acc+ × 100, and the perception and cognition totals.

    acc is the share of questions answered right; acc+ the share of images all of whose questions (two in MME) are
    answered right. Each subtask therefore scores 0-200; perception sums its 10 subtasks (max 2000), cognition its 4
    (max 800), over the subtasks present in `rows`.

    Args:
        rows: mappings with `category` (an MME subtask name, e.g. "OCR"), `image` (the image's name within the
            subtask), `prediction` (the model's free text, read with `mme_parse_answer`) and `answer` ("Yes"/"No").

    Returns:
        `{subtask: score}` for each subtask present, in MME's order, then `perception` and `cognition`.

    Raises:
        ValueError: a row lacks a key, names an unknown subtask or has an answer other than Yes/No.
    """
    questions: dict[str, list[bool]] = defaultdict(list)
    images: dict[str, dict[str, bool]] = defaultdict(dict)
    for position, row in enumerate(rows):
        category, image, right = _checked_mme_row(position, row)
        questions[category].append(right)
        images[category][image] = images[category].get(image, True) and right
    scores = {}
    for category in MME_PERCEPTION + MME_COGNITION:
        if category in questions:
            acc = sum(questions[category]) / len(questions[category])
            acc_plus = sum(images[category].values()) / len(images[category])
            scores[category] = 100 * acc + 100 * acc_plus
    scores["perception"] = sum(scores.get(category, 0.0) for category in MME_PERCEPTION)
    scores["cognition"] = sum(scores.get(category, 0.0) for category in MME_COGNITION)
    return scores
