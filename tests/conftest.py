"""Shared fixtures: one tiny checkpoint in the released format per test session, loaded through the real path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub in tests

from pathlib import Path

import pytest
import torch

from share4v.model.builder import load_pretrained_model
from share4v.testing.make_tiny_checkpoint import make_tiny_checkpoint

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
