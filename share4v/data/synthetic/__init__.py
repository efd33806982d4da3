"""data/synthetic: the miniature world, a procedural image world that is deterministic by seed.

Scenes of 1-4 coloured shapes on a 3x3 grid with an optional word of text (`scene`), drawn with PIL (`render`),
described by ShareGPT4V-style detailed and COCO-style brief captions scored by `caption_recall` (`captions`),
questioned in LLaVA instruction rows and a held-out benchmark (`questions`), and written to disk by
`python -m share4v.data.synthetic` (`write`).

    from share4v.data.synthetic import scene_for, render, detailed_caption
    scene = scene_for(seed=0, split="fresh", index=7, image_size=336)
    render(scene).save("scene.png"); print(detailed_caption(scene))
"""

from share4v.data.synthetic.captions import brief_caption, caption_recall, detailed_caption, referring_name
from share4v.data.synthetic.questions import (
    CATEGORIES,
    CHOICE_ANSWER,
    QA,
    SHORT_ANSWER,
    ask,
    bench_rows,
    instruct_row,
)
from share4v.data.synthetic.render import cell_box, object_centre, render
from share4v.data.synthetic.scene import (
    BACKGROUNDS,
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    WORDS,
    Scene,
    SceneObject,
    SceneText,
    sample_scene,
    scene_for,
)
from share4v.data.synthetic.write import caption_row, main, write_world

__all__ = [
    "BACKGROUNDS", "CATEGORIES", "CHOICE_ANSWER", "COLOURS", "POSITIONS", "QA", "SHAPES", "SHORT_ANSWER", "SIZES",
    "WORDS", "Scene", "SceneObject", "SceneText", "ask", "bench_rows", "brief_caption", "caption_recall",
    "caption_row", "cell_box", "detailed_caption", "instruct_row", "main", "object_centre", "referring_name",
    "render", "sample_scene", "scene_for", "write_world",
]  # fmt: skip
