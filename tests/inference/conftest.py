"""Fixtures shared by the decoding-loop tests."""

import pytest
import torch

from share4v.inference.engine import Chat, Share4VEngine
from tests.helpers import random_image


@pytest.fixture(scope="module")
def prompt(tiny):
    """Prompt embeddings and mask of a left-padded batch (two images, one text-only row), and the engine's model."""
    engine = Share4VEngine(*tiny, compile_decode=False)
    chats = [
        Chat.single("What is shown?", [random_image(1)]),
        Chat.single("Tell me a long story about the sea, please."),
        Chat.single("Describe it.", [random_image(3, (30, 90))]),
    ]
    with torch.inference_mode():
        embeds, mask = engine._prompt_embeddings(engine.prepare(chats))
    return engine.model, embeds, mask
