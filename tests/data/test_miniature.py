"""The miniature recipe's scoring and bookkeeping (the learning run itself is in test_miniature_learns.py)."""

import json
from pathlib import Path

import pytest
import torch

from share4v.data.miniature import (
    CELL_CLASSES,
    Recipe,
    cell_accuracy,
    cell_attributes,
    cell_targets,
    claim_table,
    majority_baseline,
    recipe_with,
    score,
    score_table,
    uniform_chance,
)
from share4v.data.synthetic import COLOURS, SHAPES, WORDS, Scene, SceneObject, SceneText


def write_bench(root, answers):
    (root / "bench").mkdir(parents=True)
    lines = [json.dumps({"question_id": qid, "answer": answer, "category": kind}) for qid, answer, kind in answers]
    (root / "bench" / "answers.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def world(tmp_path):
    return write_bench(tmp_path, [
        ("q1", "red", "color"), ("q2", "red", "color"), ("q3", "blue", "color"),
        ("q4", "2", "count"), ("q5", "3", "count"),
    ])  # fmt: skip


def test_score_is_normalised_exact_match_per_category(world):
    predictions = [
        {"question_id": "q1", "prediction": "Red."}, {"question_id": "q2", "prediction": "the red"},
        {"question_id": "q3", "prediction": "green"}, {"question_id": "q4", "prediction": "two"},
        {"question_id": "q5", "prediction": "3 circles"},
    ]  # fmt: skip
    scores = score(predictions, world)
    assert scores == {"color": 2 / 3, "count": 1 / 2, "overall": 3 / 5}


def test_majority_baseline_answers_each_categorys_most_common_answer(world):
    scores = majority_baseline(world)
    assert scores["color"] == 2 / 3 and scores["count"] == 1 / 2 and scores["overall"] == 3 / 5


def test_uniform_chance_is_one_over_each_categorys_distinct_answers(world):
    assert uniform_chance(world) == (3 * (1 / 2) + 2 * (1 / 2)) / 5


def test_score_table_reports_mean_and_spread_over_seeds():
    card = {"majority_baseline": {"color": 0.5, "overall": 0.5}, "runs": [
        {"seed": 0, "arm": "detailed", "scores": {"color": 0.8, "overall": 0.6}},
        {"seed": 1, "arm": "detailed", "scores": {"color": 0.6, "overall": 0.4}},
        {"seed": 0, "arm": "none", "scores": {"color": 0.5, "overall": 0.5}},
    ]}  # fmt: skip
    table = score_table(card).splitlines()
    assert table[0] == "| stage 1 | seeds | color | overall |"
    assert table[2] == "| detailed captions | 2 | 70.0 ± 10.0 | 50.0 ± 10.0 |"
    assert table[3] == "| none (projector only) | 1 | 50.0 ± 0.0 | 50.0 ± 0.0 |"
    assert table[4] == "| majority answer | - | 50.0 | 50.0 |"


def test_claim_table_compares_the_arms_seed_by_seed():
    runs = [
        (0, "detailed", 0.6),
        (0, "brief", 0.5),
        (0, "none", 0.45),
        (1, "detailed", 0.4),
        (1, "brief", 0.45),
        (1, "none", 0.3),
        (2, "brief", 0.2),
    ]  # seed 1 breaks the order; seed 2 has one arm only
    card = {"runs": [{"seed": seed, "arm": arm, "scores": {"overall": value}} for seed, arm, value in runs]}
    lines = claim_table(card).splitlines()
    assert lines[0] == "| seed | detailed | brief | none | detailed − brief | brief − none | detailed − none |"
    assert lines[2:5] == [
        "| 0 | 60.0 | 50.0 | 45.0 | +10.0 | +5.0 | +15.0 |",
        "| 1 | 40.0 | 45.0 | 30.0 | -5.0 | +15.0 | +10.0 |",
        "| 2 | - | 20.0 | - | - | - | - |",
    ]
    assert lines[-3:] == [
        "- detailed > brief on 1 of 2 seeds: margin +2.5 points on average (-5.0 to +10.0)",
        "- brief > none on 2 of 2 seeds: margin +10.0 points on average (+5.0 to +15.0)",
        "- detailed > none on 2 of 2 seeds: margin +12.5 points on average (+10.0 to +15.0)",
    ]


def _two_shapes_and_a_word() -> Scene:
    """Shape 1 in colour 2, small, in the centre; shape 0 in colour 0, large, bottom right; word 3 top left."""
    colours = list(COLOURS)
    return Scene(
        objects=(SceneObject(SHAPES[1], colours[2], "small", 4), SceneObject(SHAPES[0], colours[0], "large", 8)),
        background="white", text=SceneText(WORDS[3], 0), image_size=144, seed=0,
    )  # fmt: skip


def test_cell_targets_name_each_cells_shape_colour_size_or_word():
    colours, scene = list(COLOURS), _two_shapes_and_a_word()
    targets = cell_targets(scene)
    assert targets[4] == 1 + (1 * len(colours) + 2) * 2 + 0 and targets[8] == 1 + 1
    assert targets[0] == 1 + len(SHAPES) * len(colours) * 2 + 3 == CELL_CLASSES - len(WORDS) + 3
    assert targets.count(0) == 6


def test_cell_accuracy_reads_each_attribute_of_the_cells_it_should():
    scene = _two_shapes_and_a_word()
    truth = cell_targets(scene)
    assert cell_accuracy(truth, truth) == {"kind": 1.0, "shape": 1.0, "colour": 1.0, "size": 1.0, "word": 1.0}
    assert cell_attributes(truth[4]) == {"kind": 1, "shape": 1, "colour": 2, "size": 0}
    wrong_shape = cell_targets(Scene((SceneObject(SHAPES[2], scene.objects[0].colour, "small", 4), scene.objects[1]),
                                     "white", scene.text, 144))  # fmt: skip
    assert cell_accuracy(wrong_shape, truth) == {"kind": 1.0, "shape": 0.5, "colour": 1.0, "size": 1.0, "word": 1.0}
    empty_everywhere = [0] * 9
    accuracy = cell_accuracy(empty_everywhere, truth)
    assert accuracy["kind"] == 6 / 9 and accuracy["colour"] == 0.0 and accuracy["word"] == 0.0


def test_recipe_settings_change_named_fields_and_refuse_unknown_ones():
    recipe = recipe_with(Recipe(), ["stage1_steps=7", "learning_rate=0.5", "nudge=0.25"])
    assert recipe.stage1_steps == 7 and recipe.learning_rate == 0.5 and recipe.stage2_steps == Recipe().stage2_steps
    assert recipe.nudge == 0.25
    with pytest.raises(ValueError, match="stage_one"):
        recipe_with(Recipe(), ["stage_one=3"])
    with pytest.raises(ValueError, match=r"nudge=2.0: the nudge must lie in \[0, 1\]"):
        recipe_with(Recipe(), ["nudge=2"])
    recipe = recipe_with(Recipe(), ["llm_corpus=captions", "qa_rounds=8", "projector_lr=0.01"])
    assert (recipe.llm_corpus, recipe.qa_rounds, recipe.projector_lr) == ("captions", 8, 0.01)
    with pytest.raises(ValueError, match="llm_corpus=books: choose one of world, captions"):
        recipe_with(Recipe(), ["llm_corpus=books"])
    with pytest.raises(ValueError, match="qa_rounds=1"):
        recipe_with(Recipe(), ["qa_rounds=1"])
    with pytest.raises(ValueError, match=r"tower_variance_floor=0.0: a share, in \(0, 1\]"):  # balance_loss divides
        recipe_with(Recipe(), ["tower_variance_floor=0"])
    assert recipe_with(Recipe(), ["whole_words=true"]).whole_words is True
    assert recipe_with(Recipe(), ["whole_words=0"]).whole_words is False
    with pytest.raises(ValueError, match="--set whole_words=yes: expected true or false"):
        recipe_with(Recipe(), ["whole_words=yes"])
    with pytest.raises(ValueError, match="--set stage1_steps=many: invalid literal"):
        recipe_with(Recipe(), ["stage1_steps=many"])


@pytest.mark.parametrize("whole_words", [False, True])
def test_whole_words_make_the_written_word_one_token_in_quoted_and_short_answers(tmp_path, whole_words):
    from transformers import AutoTokenizer

    from share4v.data.miniature import make_world, pretrain_llm

    recipe = recipe_with(Recipe.smoke(), [f"whole_words={whole_words}"])
    world = make_world(tmp_path / "world", 0, recipe)
    tokenizer = AutoTokenizer.from_pretrained(pretrain_llm(world, tmp_path / "llm", recipe, seed=0))

    def one_token_in_both(word):
        quoted = tokenizer.convert_ids_to_tokens(tokenizer(f'The text reads "{word}".').input_ids)
        short = tokenizer.convert_ids_to_tokens(tokenizer(f"USER: Which word? ASSISTANT: {word}</s>").input_ids)
        return word in quoted and word in short

    assert all(map(one_token_in_both, WORDS)) if whole_words else not any(map(one_token_in_both, WORDS))
    assert json.loads((tmp_path / "llm" / "recipe_settings.json").read_text())["whole_words"] is whole_words


def test_qa_rounds_sets_how_many_questions_a_row_asks_and_is_part_of_the_world(tmp_path):
    from share4v.data.miniature import WorldMismatch, make_world, world_texts

    def rounds(world):
        return [len(row["conversations"]) // 2 for row in json.loads((world / "instruct.json").read_text())]

    smoke = recipe_with(Recipe.smoke(), ["num_images=40"])
    default = make_world(tmp_path / "a", 0, smoke)
    more = make_world(tmp_path / "b", 0, recipe_with(smoke, ["qa_rounds=8"]))
    assert max(rounds(default)) == 4 and min(rounds(default)) == 2 and max(rounds(more)) > 4
    with pytest.raises(WorldMismatch, match="qa_rounds 4 -> 8"):
        make_world(default, 0, recipe_with(smoke, ["qa_rounds=8"]))
    # a world recorded before the setting existed was made at its default, and is taken as such
    settings = json.loads((default / "world_settings.json").read_text())
    del settings["qa_rounds"]
    (default / "world_settings.json").write_text(json.dumps(settings))
    assert make_world(default, 0, smoke) == default
    with pytest.raises(WorldMismatch, match="qa_rounds 4 -> 8"):
        make_world(default, 0, recipe_with(smoke, ["qa_rounds=8"]))
    # the LLM's pre-training text: everything, or the captions without the instruction rows
    asked = {turn["value"].replace("<image>\n", "") for row in json.loads((default / "instruct.json").read_text())
             for turn in row["conversations"]}  # fmt: skip
    assert asked <= set(world_texts(default)) and not asked & set(world_texts(default, "captions"))


def test_a_world_made_with_other_settings_is_refused_before_anything_trains(tmp_path, capsys):
    from share4v.data.miniature import WorldMismatch, main, make_world

    world = make_world(tmp_path / "seed0" / "world", 0, Recipe.smoke())
    written = (world / "scenes.jsonl").read_text()
    assert make_world(world, 0, Recipe.smoke()) == world and (world / "scenes.jsonl").read_text() == written
    with pytest.raises(WorldMismatch, match=r"nudge 1.0 -> 0.5"):
        make_world(world, 0, recipe_with(Recipe.smoke(), ["nudge=0.5"]))
    with pytest.raises(SystemExit) as exit_info:  # the command line: --quick asks for other sizes than were written
        main(["--out", str(tmp_path), "--seeds", "0", "--quick", "--arms"])
    assert exit_info.value.code == 2 and "holds a world made with other settings (num_images 12 -> 1000" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "seed0" / "llm").exists()


def test_the_whole_recipe_runs_and_writes_a_score_card(tmp_path):
    """World → pre-trained ViT and LLM → alignment → stage 1 (detailed) → stage 2 → benchmark → card (seconds)."""
    from share4v.data.miniature import reproduce

    recipe = recipe_with(Recipe.smoke(), ["projector_lr=0.01", "vision_tower_lr=0.002"])
    card = reproduce(tmp_path, seeds=[0], arms=["detailed", "none"], recipe=recipe)
    assert [run["arm"] for run in card["runs"]] == ["detailed", "none"]
    tower_reads = card["tower_cell_accuracy"]["0"]  # the ViT's own heads on the benchmark images' cells
    assert set(tower_reads) >= {"kind", "shape", "colour", "size"} and all(0 <= v <= 1 for v in tower_reads.values())
    assert list(card["runs"][0]["losses"]) == ["align", "stage1-detailed", "stage2-detailed"]
    assert list(card["runs"][1]["losses"]) == ["align", "stage2-none"]
    for run in card["runs"]:
        assert 0.0 <= run["scores"]["overall"] <= 1.0 and all(run["losses"].values())
        answers = (tmp_path / "seed0" / f"stage2-{run['arm']}" / "bench_answers.jsonl").read_text().splitlines()
        questions = (tmp_path / "seed0" / "world" / "bench" / "questions.jsonl").read_text().splitlines()
        assert len(answers) == len(questions) > 0
    assert json.loads((tmp_path / "score_card.json").read_text())["runs"][1]["scores"] == card["runs"][1]["scores"]
    # share4v.eval.report's card of the score files: one row per seed and arm, the overall score in percent
    report = json.loads((tmp_path / "report" / "score_card.json").read_text())
    assert [column["key"] for column in report["columns"]] == ["miniature"] and report["paper"] == []
    assert {row["checkpoint"]: row["scores"]["miniature"] for row in report["rows"]} == {
        f"seed0-{run['arm']}": round(100 * run["scores"]["overall"], 2) for run in card["runs"]
    }
    # the projector's own learning rate reaches stages 1 and 2 (alignment trains nothing else), the ViT's stage 1
    for stage, projector_lr, vision_tower_lr in (
        ("align", None, None), ("stage1-detailed", 0.01, 0.002), ("stage2-none", 0.01, None)
    ):  # fmt: skip
        args = torch.load(tmp_path / "seed0" / stage / "training_args.bin", weights_only=False)
        assert (args.mm_projector_lr, args.vision_tower_lr) == (projector_lr, vision_tower_lr)
    assert "| none (projector only) | 1 |" in (tmp_path / "score_card.md").read_text()
    # a second call finds every stage done and runs nothing again
    again = reproduce(tmp_path, seeds=[0], arms=["detailed", "none"], recipe=recipe)
    assert again["runs"] == card["runs"]


def test_an_arm_exports_as_a_self_contained_model_folder_with_its_own_vision_tower(tmp_path, capsys):
    """What share4v/assets/share4v-miniature is: the arm's LLM, projector and stage-1 ViT, found relative to the folder
    wherever it is moved, weight for weight the checkpoint's."""
    import shutil

    from share4v.data.miniature import export_model, main, reproduce
    from share4v.model.builder import load_pretrained_model

    card = reproduce(tmp_path / "run", seeds=[0], arms=["detailed"], recipe=Recipe.smoke())
    checkpoint = Path(card["runs"][0]["checkpoint"])
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError, match="is no earlier export"):  # a folder that is no export is left alone
        export_model(checkpoint, tmp_path / "model")
    for folder in (checkpoint, tmp_path / "run" / "seed0" / "stage1-detailed" / "vision_tower", tmp_path / "run"):
        with pytest.raises(FileExistsError, match="which the run uses"):  # the run's own folders, or around them
            export_model(checkpoint, folder)
    assert (checkpoint / "losses.json").is_file()
    (tmp_path / "model" / "config.json").write_text('{"mm_vision_tower": "vision_tower"}')  # an earlier export:
    export_model(checkpoint, tmp_path / "model")  # replaced whole
    moved = shutil.move(tmp_path / "model", tmp_path / "elsewhere")
    assert sorted(path.name for path in Path(moved).iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
        "vision_tower"]  # fmt: skip
    assert json.loads((Path(moved) / "config.json").read_text())["mm_vision_tower"] == "vision_tower"
    _, exported, _, _ = load_pretrained_model(str(moved), None, "share4v-miniature", device_map=None, device="cpu")
    _, trained, _, _ = load_pretrained_model(str(checkpoint), None, "share4v-miniature", device_map=None, device="cpu")
    pretrained_tower = load_pretrained_model(str(checkpoint), None, "share4v-miniature", device_map=None, device="cpu",
                                             vision_tower=str(tmp_path / "run" / "seed0" / "tower"))[1]  # fmt: skip
    weights, expected = exported.state_dict(), trained.state_dict()
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    # stage 1 trained the tower, so the pre-trained one would differ: the export carries the trained one
    assert any(not torch.equal(weights[k], v) for k, v in pretrained_tower.state_dict().items() if "vision_tower" in k)
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "run"), "--arms", "--export", str(tmp_path / "x")])
    assert exit_info.value.code == 2 and "--export needs an arm" in capsys.readouterr().err
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("not a model")
    with pytest.raises(SystemExit) as exit_info:  # refused before any training
        main(["--out", str(tmp_path / "new"), "--arms", "detailed", "--export", str(tmp_path / "notes")])
    assert exit_info.value.code == 2 and "is no earlier export" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a folder the run would make
        main(["--out", str(tmp_path / "new"), "--arms", "detailed", "--export", str(tmp_path / "new" / "seed0")])
    assert exit_info.value.code == 2 and "which the run uses" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_two_runs_with_the_same_seed_give_the_same_card(tmp_path):
    """Determinism on the CPU: the world, both pre-trainings, every stage and the benchmark, run twice from nothing."""
    from share4v.data.miniature import reproduce

    first = reproduce(tmp_path / "a", seeds=[1], arms=["brief"], recipe=Recipe.smoke())
    second = reproduce(tmp_path / "b", seeds=[1], arms=["brief"], recipe=Recipe.smoke())
    for run in (*first["runs"], *second["runs"]):
        run.pop("checkpoint")
    assert first == second and first["runs"][0]["losses"]["stage2-brief"]


def test_a_finished_part_made_with_other_settings_is_refused_and_an_unchanged_one_reused(tmp_path, capsys, caplog):
    from share4v.data.miniature import SettingsMismatch, main, reproduce

    reproduce(tmp_path, seeds=[0], arms=["detailed"], recipe=Recipe.smoke())
    stage2 = tmp_path / "seed0" / "stage2-detailed"
    finished_at = (stage2 / "losses.json").stat().st_mtime_ns
    reproduce(tmp_path, seeds=[0], arms=["detailed"], recipe=Recipe.smoke())  # the same recipe: nothing runs again
    assert (stage2 / "losses.json").stat().st_mtime_ns == finished_at
    with pytest.raises(
        SettingsMismatch, match=r"seed0/stage2-detailed was made with other settings \(stage2_steps 2 -> 3\)"
    ):
        reproduce(tmp_path, seeds=[0], arms=["detailed"], recipe=recipe_with(Recipe.smoke(), ["stage2_steps=3"]))
    with pytest.raises(SettingsMismatch, match=r"seed0/llm was made with other settings \(llm_steps 2 -> 3\)"):
        reproduce(tmp_path, seeds=[0], arms=["detailed"], recipe=recipe_with(Recipe.smoke(), ["llm_steps=3"]))
    with pytest.raises(SettingsMismatch, match=r"seed0/stage1-detailed was made with other settings \(projector_lr"):
        reproduce(tmp_path, seeds=[0], arms=["detailed"], recipe=recipe_with(Recipe.smoke(), ["projector_lr=0.1"]))
    # the "none" arm's stage 2 does not depend on stage 1's steps; the detailed arm's does
    reproduce(tmp_path, seeds=[0], arms=["none"], recipe=Recipe.smoke())
    none_at = (tmp_path / "seed0" / "stage2-none" / "losses.json").stat().st_mtime_ns
    with pytest.raises(SettingsMismatch, match=r"stage1-detailed was made with other settings \(stage1_steps 2 -> 3\)"):
        reproduce(
            tmp_path, seeds=[0], arms=["none", "detailed"], recipe=recipe_with(Recipe.smoke(), ["stage1_steps=3"])
        )
    assert (tmp_path / "seed0" / "stage2-none" / "losses.json").stat().st_mtime_ns == none_at
    # on the command line: one line, exit 2
    sizes = ("num_images", "num_bench_images", "vision_hidden", "vision_layers", "llm_hidden", "llm_layers",
             "vocab_size", "batch_size", "tower_steps", "align_steps", "stage1_steps", "stage2_steps")  # fmt: skip
    smoke = [f"{field}={getattr(Recipe.smoke(), field)}" for field in sizes]
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--seeds", "0", "--arms", "detailed", "--set", *smoke, "llm_steps=5"])
    assert (
        exit_info.value.code == 2 and "llm was made with other settings (llm_steps 2 -> 5)" in capsys.readouterr().err
    )
    # a part finished before settings were recorded is taken as it is, with a warning
    (stage2 / "recipe_settings.json").unlink()
    with caplog.at_level("WARNING"):
        reproduce(tmp_path, seeds=[0], arms=["detailed"], recipe=recipe_with(Recipe.smoke(), ["stage2_steps=3"]))
    assert (stage2 / "losses.json").stat().st_mtime_ns == finished_at and "records no recipe settings" in caplog.text


def test_the_shape_share_is_the_part_of_the_object_cells_features_that_lies_between_shapes():
    from share4v.data.miniature import variance_shares
    from share4v.data.synthetic import SIZES

    def target(shape: int, colour: int) -> int:
        return 1 + (shape * len(COLOURS) + colour) * len(SIZES)

    # four objects (shapes 0 0 1 1, colours 0 1 0 1), one empty cell and one word cell, which do not count
    targets = torch.tensor([[target(0, 0), target(0, 1), target(1, 0), target(1, 1), 0, CELL_CLASSES - 1]])
    by_shape = torch.tensor([[[1.0, 0.0]] * 2 + [[-1.0, 0.0]] * 2 + [[9.0, 9.0]] * 2])
    by_colour = torch.tensor([[[0.0, 1.0], [0.0, -1.0], [0.0, 1.0], [0.0, -1.0], [5.0, 5.0], [7.0, 7.0]]])
    assert variance_shares(by_shape, targets)["shape"].item() == pytest.approx(1.0)
    assert variance_shares(by_colour, targets)["shape"].item() == pytest.approx(0.0)
    both = (by_shape * 2 + by_colour).requires_grad_()
    share = variance_shares(both, targets)["shape"]
    assert share.item() == pytest.approx(4 / 5)  # between shapes 4 x 2², within 4 x 1² (the colour axis)
    share.backward()
    assert both.grad[0, :4].abs().sum() > 0 and both.grad[0, 4:].abs().sum() == 0  # objects only


def test_variance_shares_split_the_object_cells_variance_by_attribute_and_balance_loss_asks_each_for_its_floor():
    from share4v.data.miniature import balance_loss, variance_shares
    from share4v.data.synthetic import SIZES

    def target(shape: int, colour: int) -> int:
        return 1 + (shape * len(COLOURS) + colour) * len(SIZES)

    # four objects in cells 0-3 (shapes 0 0 1 1, colours 0 1 0 1), an empty cell and a word cell, which do not count
    targets = torch.tensor([[target(0, 0), target(0, 1), target(1, 0), target(1, 1), 0, CELL_CLASSES - 1]])
    shape_axis = torch.tensor([[1.0, 0, 0], [1, 0, 0], [-1, 0, 0], [-1, 0, 0], [9, 9, 9], [9, 9, 9]])
    colour_axis = torch.tensor([[0.0, 1, 0], [0, -1, 0], [0, 1, 0], [0, -1, 0], [0, 0, 0], [0, 0, 0]])
    cells = (shape_axis + colour_axis).unsqueeze(0)
    shares = variance_shares(cells, targets)
    assert shares["shape"].item() == pytest.approx(0.5) and shares["colour"].item() == pytest.approx(0.5)
    assert shares["size"].item() == pytest.approx(0.0)  # every object is the smallest size
    assert shares["position"].item() == pytest.approx(1.0)  # one object per cell: the cell explains everything
    # each of shape, colour and position carries at least the floor: nothing to ask
    assert balance_loss(cells, targets, floor=0.5).item() == pytest.approx(0.0)
    # colour squeezed to a tenth of the shape axis: only colour falls short, and its gradient widens the colour axis
    squeezed = (shape_axis + 0.1 * colour_axis).unsqueeze(0).requires_grad_()
    loss = balance_loss(squeezed, targets, floor=0.25)
    colour_share = 0.01 / 1.01
    assert loss.item() == pytest.approx((0.25 - colour_share) / 0.25, rel=1e-5)
    loss.backward()
    assert (squeezed.grad[0, :4, 1] * colour_axis[:4, 1]).lt(0).all()  # descent moves each object along its colour
    assert squeezed.grad[0, 4:].abs().sum() == 0


def test_a_record_from_before_a_setting_existed_counts_as_made_without_it(tmp_path):
    from share4v.data.miniature import ADDED_SETTINGS, TOWER_SETTINGS, SettingsMismatch, reproduce

    without = recipe_with(Recipe.smoke(), [f"{name}={value}" for name, value in ADDED_SETTINGS.items()])
    reproduce(tmp_path, seeds=[0], arms=[], recipe=without)
    tower = tmp_path / "seed0" / "tower"
    record = json.loads((tower / "recipe_settings.json").read_text())
    added = {name for name in ADDED_SETTINGS if name in TOWER_SETTINGS}
    assert added == {"tower_balance_weight", "tower_variance_floor"} and added <= record.keys()
    older = {name: value for name, value in record.items() if name not in ADDED_SETTINGS}
    (tower / "recipe_settings.json").write_text(json.dumps(older))
    made_at = (tower / "model.safetensors").stat().st_mtime_ns
    reproduce(tmp_path, seeds=[0], arms=[], recipe=without)  # the same as before the settings existed: reused
    assert (tower / "model.safetensors").stat().st_mtime_ns == made_at
    with pytest.raises(SettingsMismatch, match=r"seed0/tower was made with other settings \(tower_balance_weight 0.0"):
        reproduce(tmp_path, seeds=[0], arms=[], recipe=recipe_with(without, ["tower_balance_weight=2"]))
    # made with a setting since removed, at a value other than today's behaviour: no recipe makes it any more
    (tower / "recipe_settings.json").write_text(json.dumps({**older, "tower_shape_weight": 1.0}))
    with pytest.raises(SettingsMismatch, match=r"tower_shape_weight 1.0 \(no longer a setting\)"):
        reproduce(tmp_path, seeds=[0], arms=[], recipe=without)
    (tower / "recipe_settings.json").write_text(json.dumps({**older, "tower_shape_weight": 0.0}))
    reproduce(tmp_path, seeds=[0], arms=[], recipe=without)
