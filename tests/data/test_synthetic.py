"""The miniature world: files are fixed by the seed, and pictures, captions, questions and answers agree with the
scene's ground truth. Images are 64 px and worlds a dozen scenes, so the whole file runs in a few seconds."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from share4v.data.synthetic import (
    BACKGROUNDS,
    CHOICE_ANSWER,
    COLOURS,
    POSITIONS,
    SHORT_ANSWER,
    SIZES,
    Scene,
    SceneObject,
    SceneText,
    bench_rows,
    brief_caption,
    caption_recall,
    cell_box,
    detailed_caption,
    instruct_row,
    main,
    object_centre,
    render,
    scene_for,
    write_world,
)
from share4v.data.synthetic.captions import NUMBER_WORDS
from share4v.data.synthetic.scene import PLURALS
from share4v.data.synthetic.write import bench_scenes
from share4v.train.rows import check_row

SIZE = 64
FILES = ("detailed_captions.json", "brief_captions.json", "instruct.json", "bench/questions.jsonl",
         "bench/answers.jsonl", "scenes.jsonl")  # fmt: skip


@pytest.fixture(scope="module")
def mini_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("mini-world")
    write_world(out, num_images=12, seed=3, image_size=SIZE, num_bench_images=6, progress=False)
    return out


@pytest.fixture(scope="module")
def scenes():
    return [scene_for(5, "fresh", index, SIZE) for index in range(60)]


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pixels(path):
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_the_same_seed_writes_the_same_files_and_another_seed_does_not(mini_world, tmp_path):
    write_world(tmp_path / "again", num_images=12, seed=3, image_size=SIZE, num_bench_images=6, progress=False)
    write_world(tmp_path / "other", num_images=12, seed=4, image_size=SIZE, num_bench_images=6, progress=False)
    for name in FILES:
        assert (tmp_path / "again" / name).read_bytes() == (mini_world / name).read_bytes(), name
        assert (tmp_path / "other" / name).read_bytes() != (mini_world / name).read_bytes(), name
    images = sorted(p.name for p in (mini_world / "images").iterdir())
    assert images == sorted(p.name for p in (tmp_path / "again" / "images").iterdir()) and len(images) == 18
    for name in images:
        assert np.array_equal(_pixels(mini_world / "images" / name), _pixels(tmp_path / "again" / "images" / name))
    assert not list(mini_world.rglob("*.tmp"))  # every temporary file was moved into place


def test_detailed_caption_names_every_object_the_text_and_the_background(scenes):
    openings = set()
    for scene in scenes:
        caption = detailed_caption(scene)
        openings.add(caption.split(".")[0])
        for obj in scene.objects:
            assert f"{obj.size} {obj.colour} {obj.shape}" in caption and f"the {obj.position}" in caption.lower()
        for shape in {obj.shape for obj in scene.objects}:
            number = scene.count(shape)
            assert f"{NUMBER_WORDS[number]} " in caption and (PLURALS[shape] if number > 1 else shape) in caption
        assert scene.background in caption
        if scene.text is not None:
            assert f'"{scene.text.word}"' in caption and scene.text.position in caption
        if len(scene.objects) > 1:
            assert re.search(r"to the (left|right) of|above|below", caption), caption
    assert len({re.sub(r"\w+ shapes?|white|gray|black", "", o) for o in openings}) > 1  # not a single template


def test_brief_caption_is_one_short_sentence_without_most_attributes(scenes):
    for scene in scenes:
        caption = brief_caption(scene)
        words = re.findall(r"\w+", caption.lower())
        assert len(words) <= 10 and caption.count(".") == 1 and caption.endswith("."), caption
        assert not set(words) & set(SIZES), caption
        assert not any(position in caption for position in POSITIONS), caption
        assert scene.text is None or scene.text.word not in caption
        assert sum(colour in words for colour in COLOURS) <= 1, caption


def test_caption_recall_is_complete_for_detailed_and_lower_for_brief_captions(scenes):
    brief = []
    for scene in scenes:
        recall = caption_recall(detailed_caption(scene), scene)
        assert recall == {"object": 1.0, "colour": 1.0, "count": 1.0, "position": 1.0, "overall": 1.0,
                          "text": None if scene.text is None else 1.0}, detailed_caption(scene)  # fmt: skip
        brief.append(caption_recall(brief_caption(scene), scene)["overall"])
    assert np.mean(brief) < 0.5


def test_caption_recall_counts_what_a_caption_names():
    scene = Scene((SceneObject("circle", "red", "small", 0), SceneObject("circle", "red", "large", 4),
                   SceneObject("square", "blue", "small", 8)), text=SceneText("GO", 2))  # fmt: skip
    assert caption_recall("Two red circles on a page.", scene) == {
        "object": 0.5, "colour": 0.5, "count": 0.5, "position": 0.0, "text": 0.0, "overall": 0.5}  # fmt: skip
    assert caption_recall("A small Blue square, 2 circles and GO.", scene) == {
        "object": 1.0, "colour": 0.5, "count": 1.0, "position": 0.0, "text": 1.0, "overall": 2.5 / 3}  # fmt: skip
    # Both shapes named, no right colour, and "a ... square" is the right number of squares.
    assert caption_recall("A red square and one circle.", scene) == {
        "object": 1.0, "colour": 0.0, "count": 0.5, "position": 0.0, "text": 0.0, "overall": 0.5}  # fmt: skip
    # A position counts where the same sentence names the object: the blue square is in the bottom right, the small
    # red circle in the top left; "center" lies in another sentence than the large red circle.
    placed = "A blue square sits in the bottom right. In the top left there is a small red circle."
    assert caption_recall(placed + " The center. A red circle.", scene)["position"] == 2 / 3
    assert caption_recall("The bottom right holds a red circle.", scene)["position"] == 0.0
    assert caption_recall("2 red circle and a blue squares.", scene)["count"] == 0.0  # number and noun must agree


def test_each_object_is_drawn_in_its_own_cell_in_its_colour(scenes):
    areas: dict[tuple[str, str], list[int]] = {}
    for scene in scenes:
        pixels = render(scene).convert("RGB")
        assert pixels.size == (SIZE, SIZE)
        pixels = np.asarray(pixels)
        background = np.array(BACKGROUNDS[scene.background][0])
        for cell in range(9):
            left, top, right, bottom = cell_box(SIZE, cell)
            region = pixels[top:bottom, left:right]
            drawn = {name for name, rgb in COLOURS.items() if (region == rgb).all(axis=-1).any()}
            here = [obj for obj in scene.objects if obj.cell == cell]
            assert drawn == {obj.colour for obj in here}, (scene, cell)
            if not here:
                is_text = scene.text is not None and scene.text.cell == cell
                assert (region != background).any(axis=-1).any() == is_text, (scene, cell)
        for obj in scene.objects:
            x, y = object_centre(scene, obj)
            assert tuple(pixels[int(y), int(x)]) == COLOURS[obj.colour]
            area = int((pixels == COLOURS[obj.colour]).all(axis=-1)[_cell_slice(obj.cell)].sum())
            areas.setdefault((obj.shape, obj.size), []).append(area)
    for shape in {shape for shape, _ in areas}:
        if (shape, "small") in areas and (shape, "large") in areas:
            assert max(areas[shape, "small"]) < min(areas[shape, "large"]), shape


def _cell_slice(cell):
    left, top, right, bottom = cell_box(SIZE, cell)
    return slice(top, bottom), slice(left, right)


def test_rows_pass_the_training_row_check(mini_world):
    instruct = json.loads((mini_world / "instruct.json").read_text())
    assert len(instruct) == 12
    for row in instruct:
        check_row(row, "vicuna_v1")
        assert row["conversations"][0]["value"].startswith("<image>\n") and (mini_world / row["image"]).is_file()
        assert sum("<image>" in turn["value"] for turn in row["conversations"]) == 1
    for name in ("detailed_captions.json", "brief_captions.json"):
        rows = json.loads((mini_world / name).read_text())
        assert [row["image"] for row in rows] == [row["image"] for row in instruct]
        for row in rows:
            check_row(row, "plain")
            check_row(row, "vicuna_v1")
    for index, scene in enumerate(s for s in _jsonl(mini_world / "scenes.jsonl") if s["split"] == "train"):
        assert rows[index]["conversations"][1]["value"] == brief_caption(Scene.from_dict(scene))


def test_instruction_answers_agree_with_the_scene(scenes):
    for scene in scenes:
        turns = instruct_row(scene, "x", "x.png")["conversations"]
        for human, gpt in zip(turns[::2], turns[1::2], strict=True):
            question = human["value"].removeprefix("<image>\n").split(f"\n{SHORT_ANSWER}")[0]
            question = question.split(f"\n{CHOICE_ANSWER}")[0]
            short = human["value"].endswith((SHORT_ANSWER, CHOICE_ANSWER))
            truth = _true_answer(question, scene)
            if short:
                assert gpt["value"] == truth, (question, scene)
            else:  # a sentence: it contains the answer, or starts with it for yes/no
                assert gpt["value"].lower().startswith(truth) or truth in gpt["value"] or (
                    truth.isdigit() and NUMBER_WORDS[int(truth)] in gpt["value"]) or (
                    truth == "0" and " no " in gpt["value"]), (question, gpt["value"])  # fmt: skip


def test_bench_answers_agree_with_the_scene(mini_world, scenes):
    questions, answers = _jsonl(mini_world / "bench/questions.jsonl"), _jsonl(mini_world / "bench/answers.jsonl")
    by_image = {s["image"]: Scene.from_dict(s) for s in _jsonl(mini_world / "scenes.jsonl")}
    rows = [(q, a, by_image[q["image"]]) for q, a in zip(questions, answers, strict=True)]
    for index, scene in enumerate(scenes):
        rows += [(q, a, scene) for q, a in zip(*bench_rows(scene, f"fresh_{index}", "x.png"), strict=True)]
    assert len({q["question_id"] for q, _, _ in rows}) == len(rows) and len(questions) == len(answers)
    categories = set()
    for question, answer, scene in rows:
        assert question["question_id"] == answer["question_id"] and question["category"] == answer["category"]
        suffix = f"\n{CHOICE_ANSWER}" if question["category"] == "choice" else f"\n{SHORT_ANSWER}"
        assert question["text"].endswith(suffix)
        assert answer["answer"] == _true_answer(question["text"].removesuffix(suffix), scene), question
        categories.add(question["category"])
    assert categories == {"color", "shape", "count", "position", "text", "existence", "spatial", "choice"}


def _true_answer(question: str, scene: Scene) -> str:
    """The answer worked out from the scene, independently of the generator's own code."""
    lines = question.split("\n")
    options = dict(line.split(". ", 1) for line in lines[1:])
    question = lines[0]

    def find(phrase):
        words = phrase.removeprefix("the ").split()
        matches = [o for o in scene.objects if all(w in (o.size, o.colour, o.shape) for w in words)]
        assert len(matches) == 1, (phrase, scene)
        return matches[0]

    if match := re.fullmatch(r"What (?:is the )?colou?r (?:is |of )?the (\w+)(?: in the ([a-z ]+))?\?", question):
        shape, position = match.groups()
        obj = find(shape) if position is None else next(o for o in scene.objects if o.position == position)
        assert obj.shape == shape
        answer = obj.colour
    elif match := re.fullmatch(r"What shape is (?:drawn )?in the ([a-z ]+)\?", question):
        answer = next(o.shape for o in scene.objects if o.position == match[1])
    elif match := re.fullmatch(r"How many (\w+ )?(\w+) are there\?", question):
        shape = next((s for s, plural in PLURALS.items() if plural == match[2]), None)
        colour = match[1].strip() if match[1] else None
        answer = str(len(scene.objects) if match[2] == "shapes" else scene.count(shape, colour))
    elif match := re.fullmatch(r"(?:Where is|In which part of the image is) (the [a-z ]+)\?", question):
        answer = find(match[1]).position
    elif question in ("What word is written in the image?", "What does the text say?"):
        answer = scene.text.word
    elif match := re.fullmatch(r"Is there an? (\w+) (\w+) in the image\?", question):
        answer = "yes" if scene.count(match[2], match[1]) else "no"
    elif match := re.fullmatch(r"Is (the [a-z ]+?) (to the left of|above) (the [a-z ]+)\?", question):
        a, b = find(match[1]), find(match[3])
        holds = a.column < b.column if match[2] == "to the left of" else a.row < b.row
        answer = "yes" if holds else "no"
    else:
        raise AssertionError(f"unexpected question {question!r}")
    if options:
        return next(letter for letter, option in options.items() if option == answer)
    return answer


def test_train_and_bench_images_are_disjoint(mini_world):
    scenes = _jsonl(mini_world / "scenes.jsonl")
    train = [s for s in scenes if s["split"] == "train"]
    bench = [s for s in scenes if s["split"] == "bench"]
    assert len(train) == 12 and len(bench) == 6
    keys = {split: {Scene.from_dict(s).content_key() for s in rows} for split, rows in (("t", train), ("b", bench))}
    assert not keys["t"] & keys["b"]
    digest = {
        split: {hashlib.sha256((mini_world / s["image"]).read_bytes()).hexdigest() for s in rows}
        for split, rows in (("t", train), ("b", bench))
    }
    assert len(digest["b"]) == 6 and not digest["t"] & digest["b"]
    assert {q["image"] for q in _jsonl(mini_world / "bench/questions.jsonl")} == {s["image"] for s in bench}
    # A benchmark scene that looks like a training scene is passed over.
    first = scene_for(3, "bench", 0, SIZE)
    assert first.content_key() not in {s.content_key() for s in bench_scenes(3, 5, SIZE, {first.content_key()})}


def test_scene_checks_and_round_trip():
    obj = SceneObject("circle", "red", "small", 4)
    with pytest.raises(ValueError, match="share a grid cell"):
        Scene((obj, SceneObject("star", "blue", "large", 4)))
    with pytest.raises(ValueError, match="free grid cell"):
        Scene((obj,), text=SceneText("GO", 4))
    with pytest.raises(ValueError, match="unknown colour 'pink'"):
        Scene((SceneObject("circle", "pink", "small", 0),))
    scene = scene_for(1, "fresh", 2, SIZE)
    assert Scene.from_dict(json.loads(json.dumps(scene.to_dict()))) == scene == scene_for(1, "fresh", 2, SIZE)


def test_cli_help_and_run(tmp_path, capsys):
    done = subprocess.run([sys.executable, "-m", "share4v.data.synthetic", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "--num-images" in done.stdout and "--image-size" in done.stdout
    assert main(["--out", str(tmp_path), "--num-images", "3", "--seed", "1", "--image-size", "48"]) == 0
    for name in FILES:
        assert (tmp_path / name).is_file(), name
    assert len(list((tmp_path / "images").glob("train_*.png"))) == 3
    assert len(list((tmp_path / "images").glob("bench_*.png"))) == 1
    assert _pixels(tmp_path / "images" / "train_000000.png").shape == (48, 48, 3)
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--num-images", "0"])
    assert exit_info.value.code == 2 and "--num-images must be at least 1" in capsys.readouterr().err


def test_nudge_bounds_the_offsets_and_changes_nothing_else():
    for index in range(20):
        full, quarter = scene_for(4, "train", index, SIZE), scene_for(4, "train", index, SIZE, nudge=0.25)
        assert quarter.content_key() == full.content_key() and quarter.seed == full.seed
        for near, far in zip(quarter.objects, full.objects, strict=True):
            assert all(abs(q - f / 4) <= 0.006 for q, f in zip(near.offset, far.offset, strict=True))
        centred = scene_for(4, "train", index, SIZE, nudge=0.0)
        assert all(obj.offset == (0.0, 0.0) for obj in centred.objects)
    assert any(abs(v) > 0.5 for i in range(20) for o in scene_for(4, "train", i, SIZE).objects for v in o.offset)
    with pytest.raises(ValueError, match=r"nudge must lie in \[0, 1\], not 1.5"):
        scene_for(4, "train", 0, SIZE, nudge=1.5)


def test_cli_writes_a_world_with_a_smaller_nudge(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--num-images", "4", "--image-size", "48", "--nudge", "0.1"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "scenes.jsonl").read_text().splitlines()]
    assert all(abs(v) <= 0.1 for row in rows for obj in row["objects"] for v in obj["offset"])
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--num-images", "4", "--nudge", "-0.5"])
    assert exit_info.value.code == 2 and "--nudge must lie in [0, 1], not -0.5" in capsys.readouterr().err


def test_the_default_nudge_draws_the_scenes_drawn_before_it_existed():
    # scene_for(0, "train", 0, 96) as the world drew it before the nudge setting (716fc34): worlds, the shipped model's
    # training data and every score card on record depend on these draws staying the same
    scene = scene_for(0, "train", 0, 96)
    assert [(o.shape, o.colour, o.size, o.cell, o.offset) for o in scene.objects] == [
        ("circle", "orange", "small", 2, (0.69, -0.2)),
        ("circle", "orange", "large", 3, (-0.38, -0.65)),
        ("cross", "yellow", "small", 8, (-0.24, -0.9)),
    ]
    assert (scene.background, scene.text) == ("white", SceneText("GO", 1))
