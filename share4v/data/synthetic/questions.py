"""data/synthetic/questions.py

Questions about a scene with their true answers, as LLaVA instruction rows (multi-turn, mixed answer styles) and
as benchmark rows in the `model_vqa` question format with a ground-truth file.

Categories: color, shape, count, position, text, existence (yes/no), spatial (yes/no, left of / above) and choice
(multiple choice, answered with an option letter). Benchmark questions use one fixed wording per category;
instruction data varies the wording and answers either in a word or in a full sentence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from share4v.constants import DEFAULT_IMAGE_TOKEN
from share4v.data.synthetic.captions import NUMBER_WORDS, referring_name, with_article
from share4v.data.synthetic.scene import COLOURS, PLURALS, SHAPES, Scene

SHORT_ANSWER = "Answer the question using a single word or phrase."
CHOICE_ANSWER = "Answer with the option's letter from the given choices directly."
CATEGORIES = ("color", "shape", "count", "position", "text", "existence", "spatial", "choice")
LETTERS = "ABCD"


@dataclass(frozen=True)
class QA:
    """A question (without answer-format instruction), its short answer and the same answer as a sentence."""

    category: str
    question: str
    answer: str
    sentence: str


def ask(scene: Scene, category: str, rng: random.Random, canonical: bool = False) -> QA | None:
    """A `category` question about `scene`, or None when the scene cannot answer one (e.g. no text).

    `canonical` picks the benchmark's fixed wording; otherwise the wording varies with `rng`.
    """
    if category not in _ASKERS:
        raise ValueError(f"unknown question category {category!r}; choose one of {list(CATEGORIES)}")
    return _ASKERS[category](scene, rng, canonical)


def instruct_row(
    scene: Scene, sample_id: str, image: str, rng: random.Random | None = None, max_rounds: int = 4
) -> dict:
    """A LLaVA conversation row of 2 to `max_rounds` questions of different categories about `scene`."""
    rng = rng or random.Random(f"instruct/{scene.seed}")
    categories = list(CATEGORIES)
    rng.shuffle(categories)
    rounds = rng.randint(2, max(2, max_rounds))
    turns = []
    for category in categories:
        qa = ask(scene, category, rng)
        if qa is None:
            continue
        if category == "choice":
            prompt, reply = f"{qa.question}\n{CHOICE_ANSWER}", qa.answer
        elif rng.random() < 0.5:
            prompt, reply = f"{qa.question}\n{SHORT_ANSWER}", qa.answer
        else:
            prompt, reply = qa.question, qa.sentence
        turns += [{"from": "human", "value": prompt}, {"from": "gpt", "value": reply}]
        if len(turns) == 2 * rounds:
            break
    turns[0]["value"] = f"{DEFAULT_IMAGE_TOKEN}\n{turns[0]['value']}"
    return {"id": sample_id, "image": image, "conversations": turns}


def bench_rows(scene: Scene, image_id: str, image: str) -> tuple[list[dict], list[dict]]:
    """Benchmark rows for one image: one question per category the scene can answer, and their answers.

    Questions are `{"question_id", "image", "text", "category"}` (text ends with the answer-format instruction);
    answers are `{"question_id", "answer", "category"}`.
    """
    rng = random.Random(f"bench/{scene.seed}")
    questions, answers = [], []
    for category in CATEGORIES:
        qa = ask(scene, category, rng, canonical=True)
        if qa is None:
            continue
        question_id = f"{image_id}-{category}"
        suffix = CHOICE_ANSWER if category == "choice" else SHORT_ANSWER
        questions.append({"question_id": question_id, "image": image, "text": f"{qa.question}\n{suffix}",
                          "category": category})  # fmt: skip
        answers.append({"question_id": question_id, "answer": qa.answer, "category": category})
    return questions, answers


def _there(number: int, noun: str) -> str:
    if number == 0:
        return f"There are no {noun}."
    return f"There {'is' if number == 1 else 'are'} {NUMBER_WORDS[number]} {noun}."


def _capitalise(phrase: str) -> str:
    return phrase[0].upper() + phrase[1:]


def _colour(scene: Scene, rng: random.Random, canonical: bool) -> QA:
    obj = rng.choice(scene.objects)
    where = f"the {obj.shape} in the {obj.position}"
    if not canonical and scene.count(obj.shape) == 1 and rng.random() < 0.4:
        where = f"the {obj.shape}"
    question = f"What color is {where}?" if canonical or rng.random() < 0.5 else f"What is the color of {where}?"
    return QA("color", question, obj.colour, f"{_capitalise(where)} is {obj.colour}.")


def _shape(scene: Scene, rng: random.Random, canonical: bool) -> QA:
    obj = rng.choice(scene.objects)
    verb = "is in" if canonical or rng.random() < 0.5 else "is drawn in"
    return QA("shape", f"What shape {verb} the {obj.position}?", obj.shape,
              f"There is a {obj.size} {obj.colour} {obj.shape} in the {obj.position}.")  # fmt: skip


def _count(scene: Scene, rng: random.Random, canonical: bool) -> QA:
    kind, obj = rng.random(), rng.choice(scene.objects)
    if kind < 0.2:
        number, singular, plural = len(scene.objects), "shape", "shapes"
    elif kind < 0.6:  # one shape, now and then (not in the benchmark) one that is absent
        shape = obj.shape if canonical or rng.random() < 0.85 else rng.choice(SHAPES)
        number, singular, plural = scene.count(shape), shape, PLURALS[shape]
    else:
        number = scene.count(obj.shape, obj.colour)
        singular, plural = f"{obj.colour} {obj.shape}", f"{obj.colour} {PLURALS[obj.shape]}"
    sentence = _there(number, singular if number == 1 else plural)
    return QA("count", f"How many {plural} are there?", str(number), sentence)


def _position(scene: Scene, rng: random.Random, canonical: bool) -> QA | None:
    named = [(obj, referring_name(scene, obj, with_position=False)) for obj in scene.objects]
    named = [(obj, name) for obj, name in named if name is not None]
    if not named:
        return None
    obj, name = rng.choice(named)
    question = f"Where is {name}?" if canonical or rng.random() < 0.5 else f"In which part of the image is {name}?"
    return QA("position", question, obj.position, f"{_capitalise(name)} is in the {obj.position}.")


def _text(scene: Scene, rng: random.Random, canonical: bool) -> QA | None:
    if scene.text is None:
        return None
    question = "What word is written in the image?" if canonical or rng.random() < 0.5 else "What does the text say?"
    return QA("text", question, scene.text.word, f'The text reads "{scene.text.word}".')


def _existence(scene: Scene, rng: random.Random, canonical: bool) -> QA:
    present = sorted({(obj.colour, obj.shape) for obj in scene.objects})
    if rng.random() < 0.5:
        colour, shape = rng.choice(present)
        answer, sentence = "yes", f"Yes, there is {with_article(colour)} {shape}."
    else:
        colour, shape = rng.choice([(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present])
        answer, sentence = "no", f"No, there is no {colour} {shape}."
    return QA("existence", f"Is there {with_article(colour)} {shape} in the image?", answer, sentence)


def _spatial(scene: Scene, rng: random.Random, canonical: bool) -> QA | None:
    named = [(obj, referring_name(scene, obj, with_position=False)) for obj in scene.objects]
    named = [(obj, name) for obj, name in named if name is not None]
    options = [
        (a, b, relation)
        for a in named for b in named if a[0] is not b[0]
        for relation in ("left", "above")
        if (a[0].column != b[0].column if relation == "left" else a[0].row != b[0].row)
    ]  # fmt: skip
    if not options:
        return None
    (a, name_a), (b, name_b), relation = rng.choice(options)
    if relation == "left":
        phrase, holds, opposite = "to the left of", a.column < b.column, "to the right of"
    else:
        phrase, holds, opposite = "above", a.row < b.row, "below"
    sentence = f"{'Yes' if holds else 'No'}, {name_a} is {phrase if holds else opposite} {name_b}."
    return QA("spatial", f"Is {name_a} {phrase} {name_b}?", "yes" if holds else "no", sentence)


def _choice(scene: Scene, rng: random.Random, canonical: bool) -> QA:
    obj = rng.choice(scene.objects)
    if canonical or rng.random() < 0.6:
        question, truth, pool = f"What color is the {obj.shape} in the {obj.position}?", obj.colour, list(COLOURS)
    else:
        question, truth, pool = f"What shape is in the {obj.position}?", obj.shape, list(SHAPES)
    options = [truth, *rng.sample([p for p in pool if p != truth], len(LETTERS) - 1)]
    rng.shuffle(options)
    letter = LETTERS[options.index(truth)]
    lines = "\n".join(f"{letter_}. {option}" for letter_, option in zip(LETTERS, options, strict=True))
    return QA("choice", f"{question}\n{lines}", letter, f"{letter}. {truth}")


_ASKERS = {
    "color": _colour, "shape": _shape, "count": _count, "position": _position,
    "text": _text, "existence": _existence, "spatial": _spatial, "choice": _choice,
}  # fmt: skip
