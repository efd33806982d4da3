"""options.py

Multiple-choice scorers: reading an option letter out of free text (ScienceQA's rules, and MMBench's heuristic
matching, also used for Q-Bench), ScienceQA accuracy, MMBench circular accuracy and Q-Bench accuracy.
Standard library only.
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Iterable, Mapping

# ScienceQA's scorer: "The answer is X" followed by any one character (its pattern ends in an unescaped ".").
_SQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
# Lenient extra: the text opens with a letter, maybe in parentheses, then ends or goes on after ".", ":", ")" or space.
_LEADING_LETTER = re.compile(r"\(?([A-Z])\)?(?:[.:)]|\s|$)")
# A capital letter with no ASCII letter or digit on either side ("A", "(B)", "答案是C"; not the "A" of "Apple").
_STANDALONE_CAPITAL = re.compile(r"(?<![A-Za-z0-9])([A-Z])(?![A-Za-z0-9])")
MMBENCH_INDEX_MODULUS = 1_000_000  # circular variants of a question share `index % 1e6`
_MMBENCH_ROW_KEYS = ("index", "prediction", "answer", "options")
_SQA_ROW_KEYS = ("prediction", "choices", "answer")
_QBENCH_ROW_KEYS = ("response", "candidates", "correct_ans")


def _require_keys(benchmark: str, position: int, row: Mapping, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in row]
    if missing:
        raise ValueError(f"{benchmark} row {position} lacks {', '.join(missing)}; rows need {', '.join(keys)}")


def scienceqa_extract_letter(text: str, num_choices: int, lenient: bool = False) -> str | None:
    """The option letter a ScienceQA answer gives, by the original scorer's rules, or None.

    In order: the whole text is a letter ("B"); it starts with a letter and ". " ("B. sunny"); it holds exactly one
    "The answer is X" followed by one more character ("The answer is B."). A letter beyond the question's choices is
    None. With `lenient`, a text that matches none of these may also open with "(B)", "B)", "B:" or "B " (not in
    the original: reported IMG-accuracy must use the default).

    Args:
        text: the model's answer.
        num_choices: how many options the question has (A, B, ... in order).
        lenient: also accept the extra opening forms above.
    """
    letters = string.ascii_uppercase[:num_choices]
    if len(text) == 1 and text in string.ascii_uppercase[:5]:  # the original's option list is A-E
        letter = text
    elif len(text) >= 3 and text[0] in string.ascii_uppercase[:5] and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _SQA_ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else None
        if letter is None and lenient:
            opening = _LEADING_LETTER.match(text.strip())
            letter = opening.group(1) if opening else None
    return letter if letter is not None and letter in letters else None


def scienceqa_accuracy(rows: Iterable[Mapping], lenient: bool = False) -> float:
    """ScienceQA accuracy in [0, 1]; for IMG-accuracy pass only the questions that have an image.

    Args:
        rows: mappings with `prediction` (free text), `choices` (the option texts) and `answer` (the index of the
            right choice, as in ScienceQA's problems.json).
        lenient: see `scienceqa_extract_letter`.

    Raises:
        ValueError: no rows, or a row lacks a key.
    """
    results = []
    for position, row in enumerate(rows):
        _require_keys("ScienceQA", position, row, _SQA_ROW_KEYS)
        letter = scienceqa_extract_letter(row["prediction"], len(row["choices"]), lenient)
        results.append(letter is not None and string.ascii_uppercase.index(letter) == row["answer"])
    if not results:
        raise ValueError("scienceqa_accuracy got no rows to score")
    return sum(results) / len(results)


def match_option(prediction: str, options: Mapping[str, str]) -> str | None:
    """The option a free-text answer picks, by MMBench's heuristic matching, or None when it cannot tell.

    First, if exactly one option letter stands alone in the text ("B", "(B) cat", "The answer is B."), that letter.
    Otherwise, if exactly one option's text occurs in the answer (case-insensitive, not inside a longer ASCII word,
    so the option "No" is not found in "not"), that option. MMBench's own evaluator asks a GPT judge when both
    fail; here such an answer counts as wrong.

    Args:
        prediction: the model's answer.
        options: option letter → option text, e.g. {"A": "cat", "B": "dog"}.
    """
    letters = {match for match in _STANDALONE_CAPITAL.findall(prediction) if match in options}
    if len(letters) == 1:
        return letters.pop()
    lowered = prediction.lower()
    picked = [
        letter
        for letter, text in options.items()
        if re.search(rf"(?<![a-z0-9]){re.escape(str(text).lower())}(?![a-z0-9])", lowered)
    ]
    return picked[0] if len(picked) == 1 else None


def mmbench_circular_accuracy(rows: Iterable[Mapping]) -> float:
    """MMBench accuracy under circular evaluation, in [0, 1].

    Circular variants of one question (its options rotated) have indices that agree modulo 1,000,000; a question
    counts as right only when every variant present is answered right (each read with `match_option`).

    Args:
        rows: mappings with `index`, `prediction` (free text), `answer` (the right letter for this variant) and
            `options` (letter → text for this variant).

    Raises:
        ValueError: no rows, or a row lacks a key.
    """
    questions: dict[int, bool] = defaultdict(lambda: True)
    for position, row in enumerate(rows):
        _require_keys("MMBench", position, row, _MMBENCH_ROW_KEYS)
        right = match_option(row["prediction"], row["options"]) == row["answer"]
        question = int(row["index"]) % MMBENCH_INDEX_MODULUS
        questions[question] = questions[question] and right
    if not questions:
        raise ValueError("mmbench_circular_accuracy got no rows to score")
    return sum(questions.values()) / len(questions)


def qbench_accuracy(rows: Iterable[Mapping]) -> float:
    """Q-Bench (LLVisionQA) accuracy in [0, 1].

    The prompt lists the candidates as "A. ...", "B. ...", so a response is read with `match_option` over those
    letters and texts, and is right when it picks the candidate equal to `correct_ans`.

    Args:
        rows: mappings with `response` (free text), `candidates` (option texts in prompt order) and `correct_ans`.

    Raises:
        ValueError: no rows, or a row lacks a key.
    """
    results = []
    for position, row in enumerate(rows):
        _require_keys("Q-Bench", position, row, _QBENCH_ROW_KEYS)
        options = dict(zip(string.ascii_uppercase, row["candidates"], strict=False))
        picked = match_option(row["response"], options)
        results.append(picked is not None and options[picked] == row["correct_ans"])
    if not results:
        raise ValueError("qbench_accuracy got no rows to score")
    return sum(results) / len(results)
