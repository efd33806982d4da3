"""Shared fixtures: one tiny checkpoint in the released format per test session, loaded through the real path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub in tests

from pathlib import Path

import pytest
import torch

from share4v.model.builder import load_pretrained_model
from share4v.testing.make_tiny_checkpoint import make_tiny_checkpoint
from share4v.testing.tiny_training import (
    make_tiny_base_llm,
    make_tiny_dataset,
    make_tiny_projector,
    make_tiny_vision_tower,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "weights")


@pytest.fixture(scope="session")
def tiny(tiny_ckpt):
    """(tokenizer, model, image_processor, context_len) of the tiny checkpoint, fp32 on CPU."""
    torch.set_num_threads(1)
    return load_pretrained_model(str(tiny_ckpt), None, "weights", device="cpu")


@pytest.fixture
def examples_dir() -> Path:
    return EXAMPLES


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> dict[str, Path]:
    """What training starts from: a tiny Vicuna-like LLM, CLIP tower, projector file and two data sets."""
    root = tmp_path_factory.mktemp("world")
    return {
        "llm": make_tiny_base_llm(root / "vicuna-tiny"),
        "tower": make_tiny_vision_tower(root / "clip-tiny"),
        "projector": make_tiny_projector(root / "pretrain" / "mm_projector.safetensors"),
        "captions": make_tiny_dataset(root / "captions", "caption", num_samples=24),
        "instruct": make_tiny_dataset(root / "instruct", "instruct", num_samples=24),
    }


@pytest.fixture(autouse=True)
def _private_length_cache(tmp_path, monkeypatch):
    """Training data length caches go to the test's own folder, never ~/.cache."""
    monkeypatch.setenv("SHARE4V_CACHE", str(tmp_path / "share4v-cache"))
