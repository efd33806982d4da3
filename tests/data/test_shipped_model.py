"""The shipped miniature model (share4v/assets/share4v-miniature): the default of every `--model-path`, in the released
checkpoint layout, loaded through the real loader, small, and it has learned its world."""

import argparse
import json
from pathlib import Path

import pytest

from share4v.constants import MINIATURE_MODEL_PATH
from share4v.data.miniature import caption_accuracy
from share4v.inference.cli_args import add_model_args

MODEL = Path(MINIATURE_MODEL_PATH)


def test_it_is_small_and_in_the_released_layout():
    size = sum(path.stat().st_size for path in MODEL.rglob("*") if path.is_file())
    assert size <= 25 * 2**20
    config = json.loads((MODEL / "config.json").read_text())
    assert config["model_type"] == "share4v" and config["mm_projector_type"] == "mlp2x_gelu"
    assert config["mm_vision_tower"] == "vision_tower"  # found relative to the checkpoint folder, wherever it is
    assert (MODEL / "model.safetensors").is_file() and (MODEL / "vision_tower" / "model.safetensors").is_file()


def test_every_front_end_defaults_to_it():
    parser = argparse.ArgumentParser()
    add_model_args(parser)
    assert parser.parse_args([]).model_path == MINIATURE_MODEL_PATH


@pytest.fixture(scope="module")
def captions():
    return caption_accuracy(MODEL, seed=3, num_images=40, batch_size=40)


def test_it_describes_fresh_scenes_of_its_world(captions):
    """Scenes no stage saw, against each scene's one-sentence brief caption, which names at most one object and never
    a position or the written word. The shipped model names the shapes with their colours and counts, places them on
    the grid and reads the word (on these 40 scenes: 75 / 73 / 48 / 63 / 100 %; docs/Miniature.md has 200)."""
    model, brief = captions["model"], captions["brief_caption"]
    assert model["object"] >= brief["object"] + 0.2 and model["colour"] >= brief["colour"] + 0.4
    assert model["count"] >= brief["count"] + 0.2
    assert model["position"] >= 0.3 and brief["position"] == 0.0
    assert model["text"] >= 0.8 and brief["text"] == 0.0
    texts = [example["caption"] for example in captions["examples"]]
    assert all(texts) and len(set(texts)) == len(texts)  # it describes each picture, not one stock sentence
