"""data/synthetic/write.py

Writing a miniature world to disk: training images with detailed captions, brief captions and instruction rows, a
held-out benchmark drawn from a separate seed stream, and every scene's ground truth.

    python -m share4v.data.synthetic --out data/miniature --num-images 2000 --seed 0 --image-size 336

Layout under --out (image paths in the JSON files are relative to it, i.e. it is the `--image_folder`):
    images/train_000000.png ...     training images        images/bench_000000.png ...   benchmark images
    detailed_captions.json          ShareGPT4V-style caption rows (human "<image>\\n" + instruction, gpt caption)
    brief_captions.json             COCO-style caption rows for the same images (the ablation)
    instruct.json                   multi-turn question/answer rows about the same images
    bench/questions.jsonl           {"question_id", "image", "text", "category"} (model_vqa question format)
    bench/answers.jsonl             {"question_id", "answer", "category"}
    scenes.jsonl                    {"id", "image", "split", ...scene} ground truth of every image

Each file is written to a temporary name and moved into place; the same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
from pathlib import Path

from tqdm.auto import tqdm

from share4v.constants import DEFAULT_IMAGE_TOKEN
from share4v.data.synthetic.captions import brief_caption, detailed_caption
from share4v.data.synthetic.questions import bench_rows, instruct_row
from share4v.data.synthetic.render import render
from share4v.data.synthetic.scene import DEFAULT_IMAGE_SIZE, Scene, scene_for

DETAILED_PROMPTS = (
    "Describe the image in detail.",
    "Analyze the image in a comprehensive and detailed manner.",
    "Give a detailed description of everything in this picture.",
    "What is in the photo? Describe every object and where it is.",
)
BRIEF_PROMPTS = (
    "Describe the image concisely.",
    "Provide a brief description of the given image.",
    "Give a short and clear explanation of the image.",
    "Summarize the visual content of the image.",
)


def caption_row(sample_id: str, image: str, prompt: str, caption: str) -> dict:
    """A LLaVA/ShareGPT4V caption row: the image and an instruction, then the caption."""
    return {
        "id": sample_id,
        "image": image,
        "conversations": [
            {"from": "human", "value": f"{DEFAULT_IMAGE_TOKEN}\n{prompt}"},
            {"from": "gpt", "value": caption},
        ],
    }


def bench_scenes(seed: int, count: int, image_size: int, exclude: set[str], nudge: float = 1.0) -> list[Scene]:
    """`count` scenes of the "bench" stream, skipping any that look like a scene in `exclude` (content keys)."""
    scenes, seen, index = [], set(exclude), 0
    while len(scenes) < count:
        if index > 100 * count + 1000:
            raise RuntimeError(f"could not find {count} benchmark scenes unlike the training scenes")
        scene = scene_for(seed, "bench", index, image_size, nudge)
        index += 1
        if scene.content_key() not in seen:
            seen.add(scene.content_key())
            scenes.append(scene)
    return scenes


def write_world(
    out_dir: str | os.PathLike,
    num_images: int,
    seed: int = 0,
    image_size: int = DEFAULT_IMAGE_SIZE,
    num_bench_images: int | None = None,
    progress: bool = True,
    nudge: float = 1.0,
    qa_rounds: int = 4,
) -> dict[str, Path]:
    """Write `num_images` training images and `num_bench_images` (default: a fifth, at least one) benchmark images
    with all their files under `out_dir`; returns the path of each file by name (see the module docstring). `nudge`
    bounds how far shapes move off their cells' centres (`sample_scene`); each instruction row asks 2 to `qa_rounds`
    questions."""
    if num_images < 1:
        raise ValueError(f"num_images must be at least 1, not {num_images}")
    if not 0.0 <= nudge <= 1.0:
        raise ValueError(f"nudge must lie in [0, 1], not {nudge}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    train = [scene_for(seed, "train", index, image_size, nudge) for index in range(num_images)]
    bench_count = max(1, num_images // 5) if num_bench_images is None else num_bench_images
    bench = bench_scenes(seed, bench_count, image_size, {scene.content_key() for scene in train}, nudge)
    detailed, brief, instruct, scenes, questions, answers = [], [], [], [], [], []
    for split, split_scenes in (("train", train), ("bench", bench)):
        for index, scene in enumerate(tqdm(split_scenes, desc=f"{split} images", disable=not progress)):
            sample_id = f"{split}_{index:06d}"
            image = f"images/{sample_id}.png"
            _write_png(out / image, scene)
            scenes.append({"id": sample_id, "image": image, "split": split, **scene.to_dict()})
            if split == "bench":
                rows, truths = bench_rows(scene, sample_id, image)
                questions += rows
                answers += truths
                continue
            prompts = random.Random(f"prompts/{scene.seed}")
            detailed.append(caption_row(sample_id, image, prompts.choice(DETAILED_PROMPTS), detailed_caption(scene)))
            brief.append(caption_row(sample_id, image, prompts.choice(BRIEF_PROMPTS), brief_caption(scene)))
            instruct.append(instruct_row(scene, sample_id, image, max_rounds=qa_rounds))
    paths = {
        "detailed_captions": out / "detailed_captions.json",
        "brief_captions": out / "brief_captions.json",
        "instruct": out / "instruct.json",
        "questions": out / "bench" / "questions.jsonl",
        "answers": out / "bench" / "answers.jsonl",
        "scenes": out / "scenes.jsonl",
    }
    for name, rows in (("detailed_captions", detailed), ("brief_captions", brief), ("instruct", instruct)):
        _write_atomically(paths[name], (json.dumps(rows, indent=1) + "\n").encode())
    for name, rows in (("questions", questions), ("answers", answers), ("scenes", scenes)):
        _write_atomically(paths[name], "".join(json.dumps(row) + "\n" for row in rows).encode())
    return paths


def _write_png(path: Path, scene: Scene) -> None:
    buffer = io.BytesIO()
    render(scene).save(buffer, format="PNG")
    _write_atomically(path, buffer.getvalue())


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m share4v.data.synthetic",
        description="Write a miniature procedural image world: images, detailed and brief captions, instruction "
        "data, a held-out benchmark and the scenes' ground truth.",
    )
    parser.add_argument("--out", required=True, help="output folder (also the --image_folder for training)")
    parser.add_argument("--num-images", type=int, required=True, help="number of training images")
    parser.add_argument("--seed", type=int, default=0, help="seed of the world (default 0)")
    parser.add_argument("--image-size", type=int, default=DEFAULT_IMAGE_SIZE, help="image side in pixels")
    parser.add_argument("--num-bench-images", type=int, default=None,
                        help="held-out benchmark images (default: a fifth of --num-images, at least 1)")  # fmt: skip
    parser.add_argument("--nudge", type=float, default=1.0,
                        help="how far shapes may move off their cells' centres: 0-1 of the room around them "
                        "(default 1)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error(f"--num-images must be at least 1, not {args.num_images}")
    if args.image_size < 24:
        parser.error(f"--image-size must be at least 24 pixels, not {args.image_size}")
    if args.num_bench_images is not None and args.num_bench_images < 0:
        parser.error(f"--num-bench-images must not be negative, not {args.num_bench_images}")
    if not 0.0 <= args.nudge <= 1.0:
        parser.error(f"--nudge must lie in [0, 1], not {args.nudge}")
    paths = write_world(args.out, args.num_images, args.seed, args.image_size, args.num_bench_images, nudge=args.nudge)
    for name, path in paths.items():
        print(f"{name:18s} {path}")
    return 0
