"""Fixtures for training tests: a tiny Vicuna-like LLM, CLIP tower, projector and data sets, made once per session."""

from pathlib import Path

import pytest

from share4v.testing.tiny_training import (
    make_tiny_base_llm,
    make_tiny_dataset,
    make_tiny_projector,
    make_tiny_vision_tower,
)


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    return {
        "llm": make_tiny_base_llm(root / "vicuna-tiny"),
        "tower": make_tiny_vision_tower(root / "clip-tiny"),
        "projector": make_tiny_projector(root / "pretrain" / "mm_projector.safetensors"),
        "captions": make_tiny_dataset(root / "captions", "caption", num_samples=24),
        "instruct": make_tiny_dataset(root / "instruct", "instruct", num_samples=24),
    }


@pytest.fixture(autouse=True)
def _length_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SHARE4V_CACHE", str(tmp_path / "cache"))
