"""data/synthetic/captions.py

The two kinds of caption the paper compares, written from a scene's ground truth, and a recall score that says how
much of that ground truth a free-text caption recovers.

- `detailed_caption`: ShareGPT4V style. Always complete: background, the count of each shape, every object with
  size, colour, shape and grid position, relations between objects (left of / above) and the rendered text in
  quotes. Sentence order and wording vary with the scene's seed.
- `brief_caption`: COCO style. One short sentence naming at most one object; never sizes, positions or text.
"""

from __future__ import annotations

import itertools
import random
import re

from share4v.data.synthetic.scene import COLOURS, PLURALS, SIZES, Scene, SceneObject

NUMBER_WORDS = ("zero", "one", "two", "three", "four")


def detailed_caption(scene: Scene, rng: random.Random | None = None) -> str:
    """A complete, several-sentence description of `scene` (wording picked by `rng`, by default the scene's seed)."""
    rng = rng or random.Random(f"detailed/{scene.seed}")
    order = list(scene.objects)
    if rng.random() < 0.5:
        rng.shuffle(order)
    sentences = [_opening(scene, rng), _counts(scene, rng)]
    sentences += [_describe(obj, rng) for obj in order]
    sentences += [_relation(scene, a, b, rng) for a, b in itertools.pairwise(order)]
    sentences.append(_text_sentence(scene, rng))
    return " ".join(sentences)


def brief_caption(scene: Scene, rng: random.Random | None = None) -> str:
    """One short COCO-style sentence: the number of shapes, or the most prominent object, not every attribute."""
    rng = rng or random.Random(f"brief/{scene.seed}")
    main = next((obj for obj in scene.objects if obj.size == "large"), scene.objects[0])
    count, others = len(scene.objects), len(scene.objects) - 1
    other_shapes = f"{NUMBER_WORDS[others]} other shape{'s' if others > 1 else ''}"
    if count == 1:
        choices = [
            f"{with_article(main.colour)} {main.shape} on a {scene.background} background.",
            f"A single {main.shape} in a picture.",
            f"A simple drawing of a {main.shape}.",
        ]
    else:
        choices = [
            f"{NUMBER_WORDS[count]} shapes on a {scene.background} background.",
            f"{with_article(main.colour)} {main.shape} and {other_shapes}.",
            f"Some colorful shapes, including a {main.shape}.",
            f"A picture of {NUMBER_WORDS[count]} simple shapes.",
        ]
    return _capitalise(rng.choice(choices))


def caption_recall(caption: str, scene: Scene) -> dict[str, float | None]:
    """How much of `scene` the free text `caption` gets right, by case-insensitive word matching.

    Returns fractions in [0, 1]:
        object: distinct shapes of the scene named ("circle" or "circles").
        colour: distinct (colour, shape) pairs named as "<colour> [small|large] <shape(s)>".
        count: distinct shapes whose exact number is given as "<number> [up to two colour/size words] <shape>"
            (number as a word or digit; "a"/"an"/"single" count as one; plural noun above one).
        position: objects placed right: a sentence names the object as "<colour> [size] <shape>" and its grid
            position ("top left", "center", ...).
        text: 1.0 if the rendered word appears, 0.0 if not, None when the scene has no text.
        overall: the mean of object, colour and count.
    Mentions of things not in the scene are not penalised (this is recall, not precision).
    """
    text = caption.lower()
    shapes = sorted({obj.shape for obj in scene.objects})
    pairs = sorted({(obj.colour, obj.shape) for obj in scene.objects})
    modifiers = "|".join([*COLOURS, *SIZES])
    found_objects = [_has(text, rf"\b(?:{shape}|{PLURALS[shape]})\b") for shape in shapes]
    found_colours = [
        _has(text, rf"\b{colour}\s+(?:(?:{'|'.join(SIZES)})\s+)?(?:{shape}|{PLURALS[shape]})\b")
        for colour, shape in pairs
    ]
    found_counts = []
    for shape in shapes:
        number = scene.count(shape)
        spoken = [NUMBER_WORDS[number], str(number), *(["a", "an", "single"] if number == 1 else [])]
        noun = shape if number == 1 else PLURALS[shape]
        found_counts.append(_has(text, rf"\b(?:{'|'.join(spoken)})\s+(?:(?:{modifiers})\s+){{0,2}}{noun}\b"))
    sentences = re.split(r"(?<=[.!?])\s+", text)
    found_positions = [
        any(
            _has(sentence, rf"\b{obj.colour}\s+(?:(?:{'|'.join(SIZES)})\s+)?{obj.shape}\b")
            and _has(sentence, rf"\b{obj.position}\b")
            for sentence in sentences
        )
        for obj in scene.objects
    ]
    recall = {
        "object": _mean(found_objects),
        "colour": _mean(found_colours),
        "count": _mean(found_counts),
        "position": _mean(found_positions),
        "text": None if scene.text is None else float(_has(text, rf"\b{scene.text.word.lower()}\b")),
    }
    recall["overall"] = _mean([recall["object"], recall["colour"], recall["count"]])
    return recall


def with_article(word: str) -> str:
    """`word` after "a" or "an" ("an orange", "a red")."""
    return f"{'an' if word[0] in 'aeiou' else 'a'} {word}"


def _has(text: str, pattern: str) -> bool:
    return re.search(pattern, text) is not None


def _mean(values: list) -> float:
    return sum(values) / len(values)


def _capitalise(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _noun(shape: str, number: int) -> str:
    return shape if number == 1 else PLURALS[shape]


def _opening(scene: Scene, rng: random.Random) -> str:
    count, background = len(scene.objects), scene.background
    shapes = f"{NUMBER_WORDS[count]} shape{'s' if count > 1 else ''}"
    return rng.choice([
        f"The image shows {shapes} on a plain {background} background.",
        f"This picture has a {background} background with {shapes} on it.",
        f"On a plain {background} background, {shapes} {'is' if count == 1 else 'are'} drawn.",
    ])  # fmt: skip


def _counts(scene: Scene, rng: random.Random) -> str:
    groups = []
    for shape in dict.fromkeys(obj.shape for obj in scene.objects):  # shapes in order of first appearance
        colours = [obj.colour for obj in scene.objects if obj.shape == shape]
        number = NUMBER_WORDS[len(colours)]
        if len(set(colours)) == 1:
            groups.append(f"{number} {colours[0]} {_noun(shape, len(colours))}")
        else:
            split = ", ".join(f"{NUMBER_WORDS[colours.count(c)]} {c}" for c in dict.fromkeys(colours))
            groups.append(f"{number} {PLURALS[shape]} ({split})")
    listed = groups[0] if len(groups) == 1 else ", ".join(groups[:-1]) + " and " + groups[-1]
    verb = "is" if groups[0].startswith("one ") else "are"
    return rng.choice([f"There {verb} {listed}.", f"In total, the image contains {listed}.",
                       f"Altogether there {verb} {listed}."])  # fmt: skip


def _describe(obj: SceneObject, rng: random.Random) -> str:
    thing = f"{obj.size} {obj.colour} {obj.shape}"
    return rng.choice([
        f"In the {obj.position} there is a {thing}.",
        f"A {thing} sits in the {obj.position}.",
        f"The {obj.position} holds a {thing}.",
        f"There is a {thing} in the {obj.position}.",
    ])  # fmt: skip


def referring_name(scene: Scene, obj: SceneObject, with_position: bool = True) -> str | None:
    """The shortest phrase that picks `obj` out of `scene` ("the red circle", "the small red circle", ...).

    Falls back to naming its position; with `with_position=False` returns None when only the position would tell.
    """
    for words in ((obj.colour, obj.shape), (obj.size, obj.colour, obj.shape)):
        matches = [o for o in scene.objects if all(w in (o.size, o.colour, o.shape) for w in words)]
        if len(matches) == 1:
            return "the " + " ".join(words)
    return f"the {obj.colour} {obj.shape} in the {obj.position}" if with_position else None


def _relation(scene: Scene, a: SceneObject, b: SceneObject, rng: random.Random) -> str:
    if rng.random() < 0.5:
        a, b = b, a
    parts = []
    if a.row != b.row:
        parts.append("above" if a.row < b.row else "below")
    if a.column != b.column:
        parts.append("to the left of" if a.column < b.column else "to the right of")
    relation = " and ".join(parts)
    if len(parts) == 1 or rng.random() < 0.5:
        return _capitalise(f"{referring_name(scene, a)} is {relation} {referring_name(scene, b)}.")
    return _capitalise(f"{referring_name(scene, a)} lies {relation} {referring_name(scene, b)}.")


def _text_sentence(scene: Scene, rng: random.Random) -> str:
    if scene.text is None:
        return rng.choice(["There is no text in the image.", "No text appears in the picture."])
    word, where, colour = scene.text.word, scene.text.position, scene.text_colour
    return rng.choice([
        f'The word "{word}" is written in {colour} letters in the {where}.',
        f'In the {where}, the text "{word}" is written in {colour}.',
        f'There is also some {colour} text in the {where} that reads "{word}".',
    ])  # fmt: skip
