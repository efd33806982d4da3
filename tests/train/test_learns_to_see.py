"""The pipeline learns, fast: a tiny LLM and CLIP tower, trained through the entry the scripts call (projector + LLM,
as stage 2), learn to name the colour of the square in an image — a question only the image answers — and answer
held-out images far above chance through the engine. Breaking the image path, the label masks or the loss turns this
red; the miniature reproduction (docs/Miniature.md) is the long version."""

import json
import random

import pytest
from PIL import Image

from share4v.inference import Chat, GenerationParams, Share4VEngine
from share4v.train.train import train

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 215, 30)}
QUESTION = "What color is the square?"


def square_image(rng: random.Random, colour: str) -> Image.Image:
    """A square of `colour` at a random place and size on a light, slightly noisy background."""
    image = Image.new("RGB", (56, 56), tuple(rng.randint(225, 255) for _ in range(3)))
    side = rng.randint(24, 40)
    left, top = rng.randint(0, 56 - side), rng.randint(0, 56 - side)
    image.paste(COLOURS[colour], (left, top, left + side, top + side))
    return image


def write_rows(folder, rng: random.Random, count: int) -> list[dict]:
    rows = []
    for index in range(count):
        colour = rng.choice(sorted(COLOURS))
        name = f"{folder.name}-{index}.png"
        square_image(rng, colour).save(folder / name)
        rows.append({
            "id": f"{folder.name}-{index}", "image": name, "colour": colour,
            "conversations": [{"from": "human", "value": f"<image>\n{QUESTION}"},
                              {"from": "gpt", "value": colour}],
        })  # fmt: skip
    return rows


@pytest.fixture(scope="module")
def trained(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("learns")
    rng = random.Random(0)
    (root / "train").mkdir()
    (root / "heldout").mkdir()
    rows = write_rows(root / "train", rng, 256)
    (root / "train.json").write_text(json.dumps(rows))
    heldout = write_rows(root / "heldout", rng, 40)
    trainer = train(argv=[
        "--use_cpu", "True", "--report_to", "none", "--save_strategy", "no", "--logging_steps", "5", "--seed", "0",
        "--model_name_or_path", str(world["llm"]), "--version", "v1", "--vision_tower", str(world["tower"]),
        "--data_path", str(root / "train.json"), "--image_folder", str(root / "train"),
        "--mm_projector_type", "mlp2x_gelu", "--mm_vision_select_layer", "-2", "--mm_use_im_start_end", "False",
        "--mm_use_im_patch_token", "False", "--image_aspect_ratio", "pad", "--per_device_train_batch_size", "8",
        "--learning_rate", "2e-3", "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.05",
        "--num_train_epochs", "3", "--model_max_length", "256", "--dataloader_num_workers", "0",
        "--output_dir", str(root / "out"),
    ])  # fmt: skip
    return trainer, root, heldout


def test_the_loss_falls_to_a_fraction_of_its_start(trained):
    trainer, _, _ = trained
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert sum(losses[-3:]) / 3 < 0.25 * sum(losses[:2]) / 2, losses


def test_held_out_images_are_answered_far_above_chance(trained):
    _, root, heldout = trained
    engine = Share4VEngine.from_pretrained(str(root / "out"), device="cpu")
    chats = [Chat.single(QUESTION, [str(root / "heldout" / row["image"])]) for row in heldout]
    answers = engine.generate(chats, GenerationParams(temperature=0, max_new_tokens=4))
    right = sum(answer.strip().lower().startswith(row["colour"]) for answer, row in zip(answers, heldout, strict=True))
    most_common = max(sum(row["colour"] == colour for row in heldout) for colour in COLOURS)
    # chance: a quarter; answering the most common colour every time: most_common / 40
    assert right >= 0.8 * len(heldout) > 2 * most_common, (right, answers[:8])
