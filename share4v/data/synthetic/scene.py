"""data/synthetic/scene.py

What a scene of the miniature world is, and how one is drawn from a seed: 1-4 shapes on a plain background, each
in its own cell of a 3x3 grid (so objects never overlap and "left of" / "above" are never in doubt), plus at most
one short word of text in a free cell.

Every scene comes from `scene_for(seed, split, index)`, a pure function of its arguments: the split names a seed
stream ("train", "bench", "fresh", ...), so scenes of different splits are drawn independently and generating more
images only appends to a split.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

# fmt: off
COLOURS = {                # name → RGB; six hues far apart, none close to a background
    "red":    (220, 40, 40),
    "green":  (40, 170, 60),
    "blue":   (40, 90, 230),
    "yellow": (240, 210, 30),
    "purple": (150, 60, 190),
    "orange": (245, 140, 20),
}
BACKGROUNDS = {            # name → (RGB, colour of rendered text)
    "white": ((255, 255, 255), "black"),
    "gray":  ((190, 190, 190), "black"),
    "black": ((0, 0, 0), "white"),
}
TEXT_RGB = {"black": (0, 0, 0), "white": (255, 255, 255)}
# fmt: on
SHAPES = ("circle", "square", "triangle", "star", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "star": "stars", "cross": "crosses"}
SIZES = ("small", "large")
WORDS = ("STOP", "GO", "SUN", "CAT", "DOG", "BOX", "OPEN", "EXIT", "MILK", "ZOO")
POSITIONS = (  # grid cell index (row-major) → name
    "top left", "top middle", "top right",
    "middle left", "center", "middle right",
    "bottom left", "bottom middle", "bottom right",
)  # fmt: skip
MAX_OBJECTS = 4
DEFAULT_IMAGE_SIZE = 336
_OBJECT_COUNT_WEIGHTS = (0.15, 0.3, 0.3, 0.25)  # for 1, 2, 3, 4 objects
_REPEAT_SHAPE = 0.4  # chance that a later object copies an earlier object's shape (so counts go above one)
_REPEAT_COLOUR = 0.6  # ...and, given that, its colour too ("two red circles")
_TEXT_CHANCE = 0.7


@dataclass(frozen=True)
class SceneObject:
    """One shape: what it is, and which grid cell (0-8, row-major) it sits in.

    `offset` nudges it inside its cell, as fractions (-1..1) of the room left around the shape.
    """

    shape: str
    colour: str
    size: str
    cell: int
    offset: tuple[float, float] = (0.0, 0.0)

    @property
    def row(self) -> int:
        return self.cell // 3

    @property
    def column(self) -> int:
        return self.cell % 3

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


@dataclass(frozen=True)
class SceneText:
    """A word of rendered text, centred in a grid cell that holds no object."""

    word: str
    cell: int

    @property
    def position(self) -> str:
        return POSITIONS[self.cell]


@dataclass(frozen=True)
class Scene:
    """A picture of the world: its objects (in reading order), background, optional text and size in pixels.

    `seed` picks the phrasings of its captions and questions, so those are fixed for a given scene too.
    """

    objects: tuple[SceneObject, ...]
    background: str = "white"
    text: SceneText | None = None
    image_size: int = DEFAULT_IMAGE_SIZE
    seed: int = 0

    def __post_init__(self) -> None:
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, not {len(self.objects)}")
        if self.background not in BACKGROUNDS:
            raise ValueError(f"unknown background {self.background!r}; choose one of {sorted(BACKGROUNDS)}")
        if self.image_size < 24:
            raise ValueError(f"image_size must be at least 24 pixels, not {self.image_size}")
        for obj in self.objects:
            _check_object(obj)
        cells = [obj.cell for obj in self.objects]
        if len(set(cells)) != len(cells):
            raise ValueError(f"two objects share a grid cell (cells {cells}); each object needs its own cell")
        if self.text is not None:
            if self.text.word not in WORDS:
                raise ValueError(f"unknown text {self.text.word!r}; choose one of {list(WORDS)}")
            if self.text.cell in cells or not 0 <= self.text.cell < 9:
                raise ValueError(f"the text needs a free grid cell (0-8), not cell {self.text.cell}")

    @property
    def text_colour(self) -> str:
        return BACKGROUNDS[self.background][1]

    def count(self, shape: str | None = None, colour: str | None = None) -> int:
        """How many objects have this shape and/or colour (all objects when both are None)."""
        return sum(
            (shape is None or obj.shape == shape) and (colour is None or obj.colour == colour) for obj in self.objects
        )

    def content_key(self) -> str:
        """What the picture shows, ignoring small nudges: two scenes with the same key look the same."""
        objects = ",".join(f"{o.cell}:{o.size}-{o.colour}-{o.shape}" for o in sorted(self.objects, key=_by_cell))
        text = f"{self.text.cell}:{self.text.word}" if self.text else "-"
        return f"{self.image_size}|{self.background}|{objects}|{text}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; `Scene.from_dict` reads it back."""
        data = asdict(self)
        for obj in data["objects"]:
            obj["offset"] = list(obj["offset"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        """The scene of `to_dict` (extra keys such as `id` or `image` are ignored)."""
        objects = tuple(
            SceneObject(o["shape"], o["colour"], o["size"], int(o["cell"]), tuple(o.get("offset", (0.0, 0.0))))
            for o in data["objects"]
        )
        text = SceneText(data["text"]["word"], int(data["text"]["cell"])) if data.get("text") else None
        return cls(objects, data["background"], text, int(data["image_size"]), int(data.get("seed", 0)))


def _by_cell(obj: SceneObject) -> int:
    return obj.cell


def _check_object(obj: SceneObject) -> None:
    if obj.shape not in SHAPES:
        raise ValueError(f"unknown shape {obj.shape!r}; choose one of {list(SHAPES)}")
    if obj.colour not in COLOURS:
        raise ValueError(f"unknown colour {obj.colour!r}; choose one of {list(COLOURS)}")
    if obj.size not in SIZES:
        raise ValueError(f"unknown size {obj.size!r}; choose 'small' or 'large'")
    if not 0 <= obj.cell < 9:
        raise ValueError(f"grid cell must be 0-8 (row-major), not {obj.cell}")
    if not all(-1.0 <= v <= 1.0 for v in obj.offset):
        raise ValueError(f"offset must lie in [-1, 1], not {obj.offset}")


def sample_scene(rng: random.Random, image_size: int = DEFAULT_IMAGE_SIZE, nudge: float = 1.0) -> Scene:
    """A random scene drawn with `rng` (objects listed in reading order).

    `nudge` (0-1) bounds how far each shape is moved off its cell's centre, as a fraction of the room around it. It
    changes no other draw: the same `rng` state gives the same objects, cells, background and text at any nudge.
    """
    if not 0.0 <= nudge <= 1.0:
        raise ValueError(f"nudge must lie in [0, 1], not {nudge}")
    count = rng.choices(range(1, MAX_OBJECTS + 1), weights=_OBJECT_COUNT_WEIGHTS)[0]
    cells = sorted(rng.sample(range(9), count))
    drawn: list[tuple[str, str]] = []
    for _ in cells:
        shape, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
        if drawn and rng.random() < _REPEAT_SHAPE:
            shape, earlier_colour = rng.choice(drawn)
            colour = earlier_colour if rng.random() < _REPEAT_COLOUR else colour
        drawn.append((shape, colour))
    objects = tuple(
        SceneObject(shape, colour, rng.choice(SIZES), cell, (_nudge(rng, nudge), _nudge(rng, nudge)))
        for (shape, colour), cell in zip(drawn, cells, strict=True)
    )
    text = None
    if rng.random() < _TEXT_CHANCE:
        free = [cell for cell in range(9) if cell not in cells]
        text = SceneText(rng.choice(WORDS), rng.choice(free))
    return Scene(objects, rng.choice(list(BACKGROUNDS)), text, image_size, rng.getrandbits(31))


def _nudge(rng: random.Random, bound: float) -> float:
    return round(rng.uniform(-1.0, 1.0) * bound, 2)


def scene_for(seed: int, split: str, index: int, image_size: int = DEFAULT_IMAGE_SIZE, nudge: float = 1.0) -> Scene:
    """Scene `index` of the seed stream `split` (e.g. "train", "bench", "fresh"): the same arguments always give
    the same scene, on any machine and Python version (string seeds are hashed with SHA-512 by `random`)."""
    return sample_scene(random.Random(f"share4v-synthetic/{seed}/{split}/{index}"), image_size, nudge)
