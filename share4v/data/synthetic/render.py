"""data/synthetic/render.py

Drawing a scene: flat colours, no anti-aliasing (every object pixel is exactly its palette colour), each shape
inside its own grid cell, the text drawn with PIL's built-in default font and clipped to its cell.
"""

from __future__ import annotations

import math
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont, features

from share4v.data.synthetic.scene import BACKGROUNDS, COLOURS, TEXT_RGB, Scene, SceneObject

_RADIUS = {"small": 0.45, "large": 0.78}  # shape radius as a fraction of half a cell
_ROOM = 0.95  # a nudged shape stays within this fraction of half a cell from the cell's centre
_TEXT_WIDTH = 0.9  # the text fits in this fraction of a cell's width


def cell_box(image_size: int, cell: int) -> tuple[int, int, int, int]:
    """Pixel box `(left, top, right, bottom)` (right/bottom exclusive) of grid cell `cell` (0-8, row-major)."""
    row, column = divmod(cell, 3)
    edges = [round(image_size * k / 3) for k in range(4)]
    return edges[column], edges[row], edges[column + 1], edges[row + 1]


def object_centre(scene: Scene, obj: SceneObject) -> tuple[float, float]:
    """Where the object's centre lies in pixels (its cell's centre, nudged by its offset)."""
    half = scene.image_size / 6
    room = (_ROOM - _RADIUS[obj.size]) * half
    row, column = divmod(obj.cell, 3)
    return (2 * column + 1) * half + obj.offset[0] * room, (2 * row + 1) * half + obj.offset[1] * room


def render(scene: Scene) -> Image.Image:
    """The scene as an RGB image of `scene.image_size` pixels square."""
    image = Image.new("RGB", (scene.image_size, scene.image_size), BACKGROUNDS[scene.background][0])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw_shape(draw, obj.shape, object_centre(scene, obj), _RADIUS[obj.size] * scene.image_size / 6,
                    COLOURS[obj.colour])  # fmt: skip
    if scene.text is not None:
        _draw_text(image, scene)
    return image


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, centre: tuple[float, float], radius: float, rgb) -> None:
    x, y = centre
    if shape == "circle":
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=rgb)
    elif shape == "square":
        side = 0.85 * radius  # half the side: a square looks as big as a circle of the same radius
        draw.rectangle([x - side, y - side, x + side, y + side], fill=rgb)
    elif shape == "triangle":  # pointing up, centroid at the centre
        draw.polygon([_polar(x, y, radius, 90 + 120 * k) for k in range(3)], fill=rgb)
    elif shape == "star":  # five points, inner radius 0.45 of the outer
        points = [_polar(x, y, radius if k % 2 == 0 else 0.45 * radius, 90 + 36 * k) for k in range(10)]
        draw.polygon(points, fill=rgb)
    elif shape == "cross":  # a plus sign whose arms are 0.4 of its width
        arm, reach = 0.34 * radius, 0.9 * radius
        draw.rectangle([x - reach, y - arm, x + reach, y + arm], fill=rgb)
        draw.rectangle([x - arm, y - reach, x + arm, y + reach], fill=rgb)
    else:
        raise ValueError(f"cannot draw unknown shape {shape!r}")


def _polar(x: float, y: float, radius: float, degrees: float) -> tuple[float, float]:
    angle = math.radians(degrees)
    return x + radius * math.cos(angle), y - radius * math.sin(angle)


def _draw_text(image: Image.Image, scene: Scene) -> None:
    left, top, right, bottom = cell_box(scene.image_size, scene.text.cell)
    width, height = right - left, bottom - top
    tile = Image.new("RGB", (width, height), BACKGROUNDS[scene.background][0])
    font = _fitting_font(scene.text.word, width)
    draw = ImageDraw.Draw(tile)
    x0, y0, x1, y1 = draw.textbbox((0, 0), scene.text.word, font=font)
    origin = ((width - (x1 - x0)) / 2 - x0, (height - (y1 - y0)) / 2 - y0)
    draw.text(origin, scene.text.word, fill=TEXT_RGB[scene.text_colour], font=font)
    image.paste(tile, (left, top))  # the tile is the cell: text never spills onto a neighbour's object


@lru_cache(maxsize=64)
def _fitting_font(word: str, cell_width: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """The largest built-in default font size (at most ~0.4 of the cell) whose `word` fits the cell's width."""
    if not features.check("freetype2"):
        return ImageFont.load_default()  # the fixed-size bitmap font; the tile clips it if it is too wide
    for size in range(max(6, int(0.4 * cell_width)), 5, -1):
        font = ImageFont.load_default(size=size)
        left, _, right, _ = font.getbbox(word)
        if right - left <= _TEXT_WIDTH * cell_width:
            return font
    return ImageFont.load_default(size=6)
