"""vqa.py

The VQA answer normalisation and soft accuracy used by VQAv2, VizWiz and TextVQA (the official VQA evaluation's
rules: punctuation, digit words, articles, contractions). Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

# Marks the official rules remove or turn into a space. Apostrophes, colons and periods are not among them
# (periods have their own rule below; apostrophes belong to contractions).
_PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')
_COMMA_BETWEEN_DIGITS = re.compile(r"\d,\d")
# The official pattern meant "a period that is not part of a number", but its look-behind is malformed, so in effect
# it removes every period that is not followed by a digit: "3.5" stays, "5." becomes "5". We keep that behaviour.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")

_ARTICLES = frozenset({"a", "an", "the"})
# "none" maps to "0" in the official table too.
_NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

# The contractions the official table knows, in their correct spelling. Left out: "let's" and "she's" (the table maps
# them only to themselves) and the "I" forms (I'm, I've, I'd've), which the table spells with a capital I and so never
# match the lower-cased words they are looked up with.
_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've might've mustn't must've "
    "needn't not've o'clock oughtn't 'ow's'at shan't she'd've should've shouldn't shouldn't've somebody'd "
    "somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've "
    "something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't "
    "we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll who's "
    "who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll "
    "you're you've"
).split()


def _misspellings(contraction: str) -> list[str]:
    """The spellings the official table corrects: without the apostrophe, or, where there are several, missing one."""
    positions = [i for i, char in enumerate(contraction) if char == "'"]
    if len(positions) == 1:
        return [contraction.replace("'", "")]
    return [contraction[:i] + contraction[i + 1 :] for i in positions]


_CONTRACTION_FIXES = {wrong: right for right in _CONTRACTIONS for wrong in _misspellings(right)}


def _process_punctuation(text: str) -> str:
    """Remove or space out punctuation by the official rules.

    A mark is deleted when it touches a space in the input, or when the input has a comma between two digits
    ("1,000" → "1000"); otherwise it becomes a space ("black-and-white" → "black and white"). Then every period not
    followed by a digit is deleted.
    """
    delete_marks = _COMMA_BETWEEN_DIGITS.search(text) is not None
    processed = text
    for mark in _PUNCTUATION:
        if delete_marks or mark + " " in text or " " + mark in text:
            processed = processed.replace(mark, "")
        else:
            processed = processed.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", processed)


def _process_words(text: str) -> str:
    """Lower-case, map number words to digits, drop articles, fix contractions; words joined by single spaces."""
    words = (_NUMBER_WORDS.get(word, word) for word in text.lower().split())
    kept = (_CONTRACTION_FIXES.get(word, word) for word in words if word not in _ARTICLES)
    return " ".join(kept)


def vqa_normalize(answer: str) -> str:
    """Normalise an answer as the official VQA evaluation does before comparing answers.

    Steps: newlines and tabs become spaces; punctuation is removed or spaced out (see `_process_punctuation`);
    the text is lower-cased; "zero".."ten" (and "none") become digits; the articles a/an/the are dropped; contractions
    written without their apostrophe are corrected ("dont" → "don't"); whitespace is collapsed and trimmed.

    Args:
        answer: a predicted or ground-truth answer.

    Returns:
        The normalised answer, e.g. `vqa_normalize("Two dogs.") == "2 dogs"`.
    """
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _process_words(_process_punctuation(text))


def vqa_accuracy(prediction: str, gt_answers: Sequence[str]) -> float:
    """The official VQA soft accuracy of one prediction, in [0, 1].

    Both sides are normalised with `vqa_normalize`. For each ground-truth answer, leave it out and score
    min(1, matches among the others / 3); the accuracy is the mean over these leave-one-out subsets. With the usual
    10 answers this gives 1.0 when 4 or more annotators agree with the prediction, and 0.3 / 0.6 / 0.9 for 1 / 2 / 3.

    Fewer than 10 answers: the same mean over however many leave-one-out subsets there are. A single answer leaves
    nothing to compare with, so it is scored by exact match (1.0 or 0.0) instead.

    Args:
        prediction: the model's answer.
        gt_answers: the annotators' answers (10 in VQAv2, VizWiz and TextVQA).

    Returns:
        The soft accuracy.

    Raises:
        ValueError: no ground-truth answers were given.
    """
    if len(gt_answers) == 0:
        raise ValueError("vqa_accuracy needs at least one ground-truth answer; got none")
    predicted = vqa_normalize(prediction)
    matches = [vqa_normalize(answer) == predicted for answer in gt_answers]
    if len(matches) == 1:
        return float(matches[0])
    total_matches = sum(matches)
    subset_scores = [min(1.0, (total_matches - left_out) / 3) for left_out in matches]
    return sum(subset_scores) / len(subset_scores)
