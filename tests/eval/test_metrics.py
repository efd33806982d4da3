"""share4v.eval.metrics: each scorer on a small hand-made fixture against values worked out by hand from the
official definitions, the normalisation edge cases, one-line errors, and imports with no torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from share4v.eval.metrics import (
    exact_match_accuracy,
    gqa_accuracy,
    match_option,
    mmbench_circular_accuracy,
    mme_parse_answer,
    mme_scores,
    pope_parse_answer,
    pope_scores,
    qbench_accuracy,
    scienceqa_accuracy,
    scienceqa_extract_letter,
    seed_scores,
    vqa_accuracy,
    vqa_normalize,
)

METRICS_DIR = Path(__file__).resolve().parents[2] / "share4v" / "eval" / "metrics"


# --- imports -------------------------------------------------------------------------------------------------------


def test_importing_metrics_pulls_in_neither_torch_nor_transformers():
    check = "import share4v.eval.metrics, sys; assert not {'torch', 'transformers'} & set(sys.modules), sys.modules"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_scorers_the_judge_and_the_report_import_without_torch():
    modules = ["report", "eval_pope", "eval_mmvet", "eval_gpt_review_bench", "judge", "eval_textvqa", "eval_gqa",
               "convert_answer_to_mme", "summarize_gpt_review", "submission"]  # fmt: skip
    check = (f"import sys; sys.modules['torch'] = None; import {', '.join('share4v.eval.' + m for m in modules)}; "
             "assert 'transformers' not in sys.modules")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_metrics_modules_import_only_the_standard_library():
    for path in sorted(METRICS_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module]
            else:
                continue
            for name in names:
                allowed = name.split(".")[0] in sys.stdlib_module_names or name.startswith("share4v.eval.metrics")
                assert allowed, f"{path.name} imports {name}"


# --- VQA normalisation and soft accuracy ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Two dogs.", "2 dogs"),  # number word, trailing period, lower case
        ("ten", "10"),
        ("none", "0"),  # the official table maps "none" to 0 too
        ("The cat", "cat"),  # articles dropped
        ("an apple on a table", "apple on table"),
        ("dont know", "don't know"),  # contractions
        ("isnt", "isn't"),
        ("couldnt've", "couldn't've"),  # double contraction missing one apostrophe
        ("im", "im"),  # the official "Im" entry never matches lower-cased words
        ("black-and-white", "black and white"),  # a mark touching no space becomes a space
        ("red, white", "red white"),  # a mark touching a space is deleted
        ("red,white", "red white"),
        ("1,000", "1000"),  # comma between digits: every mark is deleted, not spaced
        ("1,000-2,000", "10002000"),
        ("1-2", "1 2"),
        ("3.5", "3.5"),  # a period before a digit stays
        ("5.", "5"),
        ("U.S.", "us"),
        ("  Yes!\n", "yes"),  # whitespace trimmed, newline, exclamation mark
        ("What?", "what"),
        ("left\tside", "left side"),
        ("(left)", "left"),
        ("man's hat", "man's hat"),  # apostrophes are not punctuation
    ],
)
def test_vqa_normalize_follows_the_official_rules(raw, expected):
    assert vqa_normalize(raw) == expected


TEN_ANSWERS = ["2"] * 3 + ["3"] * 7


@pytest.mark.parametrize(
    ("prediction", "answers", "expected"),
    [
        # 3 of 10 agree: the 3 subsets leaving out a match have 2 matches (2/3), the 7 others have 3 (1): 9/10
        ("2", TEN_ANSWERS, 0.9),
        ("two", TEN_ANSWERS, 0.9),  # number word
        ("Two.", TEN_ANSWERS, 0.9),
        ("3", TEN_ANSWERS, 1.0),  # 7 agree: every subset keeps at least 3 matches
        ("4", TEN_ANSWERS, 0.0),
        ("dog", ["dog"] + ["cat"] * 9, 0.3),  # 1 of 10: 9 subsets with 1/3, one with 0
        ("The dog", ["a dog", "dog", "the dog"] + ["cat"] * 7, 0.9),  # articles
        ("black and white", ["black-and-white"] * 2 + ["gray"] * 8, 0.6),  # punctuation: 2 of 10
        ("dont know", ["don't know"] * 10, 1.0),  # contraction
        # VizWiz: "unanswerable" is an ordinary answer string
        ("Unanswerable.", ["unanswerable"] * 5 + ["unsuitable"] * 3 + ["blurry"] * 2, 1.0),
        ("unsuitable", ["unanswerable"] * 5 + ["unsuitable"] * 3 + ["blurry"] * 2, 0.9),
        ("no", ["unanswerable"] * 5 + ["unsuitable"] * 3 + ["blurry"] * 2, 0.0),
        # fewer than 10: 2 of 3 agree -> (2 subsets with 1/3 + 1 subset with 2/3) / 3 = 4/9
        ("yes", ["yes", "yes", "no"], 4 / 9),
        ("Yes", ["yes"], 1.0),  # a single answer: exact match after normalisation
        ("no", ["yes"], 0.0),
    ],
)
def test_vqa_accuracy_is_the_official_leave_one_out_mean(prediction, answers, expected):
    assert vqa_accuracy(prediction, answers) == pytest.approx(expected)


def test_vqa_accuracy_without_answers_is_an_error():
    with pytest.raises(ValueError, match="at least one ground-truth answer"):
        vqa_accuracy("yes", [])


# --- POPE ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes, there is a dog in the image.", "yes"),
        ("No.", "no"),
        ("There is no dog.", "no"),
        ("Yes. There is no cat.", "yes"),  # only the first sentence counts
        ("No, there is not.", "no"),
        ("I do not see one", "no"),
        ("NO", "yes"),  # the original's words are case-sensitive
        ("Nothing there", "yes"),
    ],
)
def test_pope_parse_answer(text, expected):
    assert pope_parse_answer(text) == expected


def test_pope_scores_on_a_hand_counted_fixture():
    predictions = [
        "Yes, there is a dog in the image.",  # yes / yes: TP
        "No.",  # no / no: TN
        "There is no dog.",  # no / yes: FN
        "Yes",  # yes / no: FP
        "No, there is not.",  # no / no: TN
        "NO",  # read as yes / no: FP
        "Yes. There is no cat.",  # yes / yes: TP
        "I do not see one",  # no / no: TN
    ]
    labels = ["yes", "no", "yes", "no", "no", "no", "yes", "no"]
    scores = pope_scores(predictions, labels)
    assert (scores["tp"], scores["fp"], scores["tn"], scores["fn"]) == (2, 2, 3, 1)
    assert scores["accuracy"] == pytest.approx(5 / 8)
    assert scores["precision"] == pytest.approx(2 / 4)
    assert scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(4 / 7)  # 2 * 1/2 * 2/3 / (1/2 + 2/3)
    assert scores["yes_ratio"] == pytest.approx(4 / 8)


def test_pope_scores_with_no_yes_prediction_report_zero_precision():
    scores = pope_scores(["No.", "No."], ["yes", "no"])
    assert (scores["precision"], scores["recall"], scores["f1"], scores["yes_ratio"]) == (0.0, 0.0, 0.0, 0.0)
    assert scores["accuracy"] == 0.5


@pytest.mark.parametrize(
    ("predictions", "labels", "message"),
    [
        (["yes"], ["yes", "no"], "1 predictions but 2 labels"),
        (["yes"], ["Yes"], "label 0 is 'Yes'"),
        ([], [], "no predictions"),
    ],
)
def test_pope_scores_bad_input_is_one_line(predictions, labels, message):
    with pytest.raises(ValueError, match=message):
        pope_scores(predictions, labels)


# --- MME -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", "yes"),
        (" no.", "no"),
        ("Yes, there is", "yes"),
        ("No, it is not", "no"),
        ("Not sure", "no"),  # "no" within the first four characters
        ("Nope", "no"),
        ("There is no dog", "other"),  # nothing in "ther": neither, counts as wrong
        ("**No**", "no"),  # markdown bold: "no" is still within "**no"
        ("I think yes", "other"),  # "yes" only after the first four characters
        ("Sure", "other"),
    ],
)
def test_mme_parse_answer(text, expected):
    assert mme_parse_answer(text) == expected


def mme_row(category, image, prediction, answer):
    return {"category": category, "image": image, "prediction": prediction, "answer": answer}


def test_mme_scores_sum_acc_and_acc_plus_per_subtask():
    rows = [
        # existence: 3 of 4 questions right (acc 75), 1 of 2 images fully right (acc+ 50) -> 125
        mme_row("existence", "a.jpg", "Yes", "Yes"),
        mme_row("existence", "a.jpg", "No.", "No"),
        mme_row("existence", "b.jpg", "Yes, there is", "Yes"),
        mme_row("existence", "b.jpg", "Yes", "No"),
        # count: 1 of 2 right, no image fully right -> 50
        mme_row("count", "c.jpg", "Not sure", "Yes"),
        mme_row("count", "c.jpg", "no", "No"),
        # artwork reuses the name a.jpg: images are grouped within their subtask -> 200
        mme_row("artwork", "a.jpg", "yes", "Yes"),
        mme_row("artwork", "a.jpg", "No", "No"),
        # code_reasoning: "Sure" is "other" (wrong), "Nope" is no (right) -> 50 + 0
        mme_row("code_reasoning", "d.png", "Sure", "Yes"),
        mme_row("code_reasoning", "d.png", "Nope", "No"),
    ]
    scores = mme_scores(rows)
    assert scores == pytest.approx(
        {"existence": 125, "count": 50, "artwork": 200, "code_reasoning": 50, "perception": 375, "cognition": 50}
    )
    assert list(scores) == ["existence", "count", "artwork", "code_reasoning", "perception", "cognition"]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (mme_row("colour", "a.jpg", "Yes", "Yes"), "unknown category 'colour'"),
        (mme_row("color", "a.jpg", "Yes", "Maybe"), "answer 'Maybe'"),
        ({"category": "color", "image": "a.jpg", "answer": "Yes"}, "lacks prediction"),
    ],
)
def test_mme_scores_bad_rows_are_one_line(row, message):
    with pytest.raises(ValueError, match=message):
        mme_scores([row])


# --- GQA and SEED --------------------------------------------------------------------------------------------------


def test_gqa_accuracy_is_exact_match_after_lower_case_and_trailing_period():
    predictions = ["Yes.", "left", "Blue", "the cat"]
    answers = ["yes", "right", "blue", "cat"]  # GQA drops no articles: "the cat" is wrong
    assert gqa_accuracy(predictions, answers) == 0.5


def test_exact_match_counts_a_missing_prediction_wrong_and_checks_lengths():
    assert exact_match_accuracy(["A", None], ["A", "B"]) == 0.5
    with pytest.raises(ValueError, match="2 predictions but 1 answers"):
        exact_match_accuracy(["A", "B"], ["A"])


SEED_ROWS = [
    {"question_type": "Scene Understanding", "prediction": "A", "answer": "A"},
    {"question_type": "Scene Understanding", "prediction": "A.", "answer": "A"},
    {"question_type": "Instance Identity", "prediction": "B", "answer": "C"},
    {"question_type": "Instance Identity", "prediction": None, "answer": "D"},  # never answered
]


def test_seed_scores_strict_and_tolerant():
    assert seed_scores(SEED_ROWS) == {"overall": 0.25, "Scene Understanding": 0.5, "Instance Identity": 0.0}
    tolerant = seed_scores(SEED_ROWS, tolerant=True)
    assert tolerant == {"overall": 0.5, "Scene Understanding": 1.0, "Instance Identity": 0.0}


# --- ScienceQA -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "num_choices", "lenient", "expected"),
    [
        ("B", 4, False, "B"),
        ("B. sunny", 4, False, "B"),
        ("The answer is C.", 4, False, "C"),
        ("The answer is C", 4, False, None),  # the original pattern needs one character after the letter
        ("The answer is A. The answer is B.", 4, False, None),  # two answers: failed
        ("E", 4, False, None),  # beyond the question's choices
        ("b", 4, False, None),
        ("(B)", 4, False, None),  # not a form the original accepts...
        ("(B)", 4, True, "B"),  # ...but the lenient mode does
        ("B) sunny", 4, True, "B"),
        ("Because it rains", 4, True, None),  # a capital opening a word is no letter
        ("", 4, False, None),  # unanswered
        ("AB", 4, False, None),  # not one letter
    ],
)
def test_scienceqa_extract_letter(text, num_choices, lenient, expected):
    assert scienceqa_extract_letter(text, num_choices, lenient=lenient) == expected


def test_scienceqa_accuracy_compares_the_letter_with_the_answer_index():
    rows = [
        {"prediction": "B", "choices": ["x", "y", "z"], "answer": 1},
        {"prediction": "The answer is A.", "choices": ["x", "y"], "answer": 1},
        {"prediction": "(C)", "choices": ["x", "y", "z"], "answer": 2},
        {"prediction": "D", "choices": ["x", "y", "z"], "answer": 0},
    ]
    assert scienceqa_accuracy(rows) == 0.25
    assert scienceqa_accuracy(rows, lenient=True) == 0.5


# --- MMBench and Q-Bench -------------------------------------------------------------------------------------------

ANIMALS = {"A": "cat", "B": "dog"}


@pytest.mark.parametrize(
    ("prediction", "options", "expected"),
    [
        ("B", ANIMALS, "B"),
        ("(B) dog", ANIMALS, "B"),
        ("The answer is B.", ANIMALS, "B"),
        ("答案是A", ANIMALS, "A"),  # a letter right after CJK text
        ("dog", ANIMALS, "B"),  # no letter: the option's text
        ("It is a Dog.", ANIMALS, "B"),
        ("A or B", ANIMALS, None),  # two letters and no text
        ("cat and dog", ANIMALS, None),  # two texts
        ("hotdog", ANIMALS, None),  # an option's text inside a longer word is not a match
        ("No, it is not", {"A": "Yes", "B": "No"}, "B"),
        ("It is not blurry", {"A": "Yes", "B": "No"}, None),  # "No" is not found in "not"
    ],
)
def test_match_option(prediction, options, expected):
    assert match_option(prediction, options) == expected


def test_mmbench_circular_accuracy_needs_every_variant_right():
    rows = [
        # question 5: three rotations, all answered right (by letter, by text, by "C. text")
        {"index": 5, "prediction": "B", "answer": "B", "options": {"A": "cat", "B": "dog", "C": "bird"}},
        {"index": 1_000_005, "prediction": "dog", "answer": "A", "options": {"A": "dog", "B": "bird", "C": "cat"}},
        {"index": 2_000_005, "prediction": "C. dog", "answer": "C", "options": {"A": "bird", "B": "cat", "C": "dog"}},
        # question 7: always "A", right only before the rotation -> the question fails
        {"index": 7, "prediction": "A", "answer": "A", "options": {"A": "red", "B": "blue"}},
        {"index": 1_000_007, "prediction": "A", "answer": "B", "options": {"A": "blue", "B": "red"}},
        # question 9: a single variant, right by its text
        {"index": 9, "prediction": "The moon", "answer": "B", "options": {"A": "sun", "B": "moon"}},
    ]
    assert mmbench_circular_accuracy(rows) == pytest.approx(2 / 3)  # 5 of 6 rows are right, 2 of 3 questions


def test_mmbench_rows_need_their_keys():
    with pytest.raises(ValueError, match="MMBench row 0 lacks options"):
        mmbench_circular_accuracy([{"index": 1, "prediction": "A", "answer": "A"}])


def test_qbench_accuracy():
    rows = [
        {"response": "No, the image is not blurry.", "candidates": ["Yes", "No"], "correct_ans": "No"},
        {"response": "Yes, it is not noisy", "candidates": ["Yes", "No"], "correct_ans": "Yes"},
        {"response": "C", "candidates": ["High", "Medium", "Low"], "correct_ans": "Low"},
        {"response": "B. Medium", "candidates": ["High", "Medium", "Low"], "correct_ans": "High"},
    ]
    assert qbench_accuracy(rows) == 0.75


@pytest.mark.parametrize("scorer", [scienceqa_accuracy, mmbench_circular_accuracy, qbench_accuracy, seed_scores])
def test_scorers_refuse_empty_input(scorer):
    with pytest.raises(ValueError, match="no rows"):
        scorer([])
