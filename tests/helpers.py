"""Small helpers shared by tests."""

from __future__ import annotations

import numpy as np
from PIL import Image


def random_image(seed: int, size: tuple[int, int] = (70, 40)) -> Image.Image:
    """A reproducible noise image of `size` (width, height)."""
    pixels = np.random.RandomState(seed).randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)
