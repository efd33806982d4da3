"""eval/run_share4v.py

Answer one query about one or more images.

    python -m share4v.eval.run_share4v --model-path checkpoints/share4v-7b \
        --image-file examples/shapes.png --query "What is in the picture?"

From Python, `eval_model(args)` takes any object with the attributes model_path, model_base, model_name, query,
conv_mode, image_file, sep, temperature, top_p, num_beams, max_new_tokens (plus, optionally, the extra flags of
`--help`), prints the answer and returns it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from share4v.inference.cli_args import add_generation_args, add_model_args, engine_from_args, generation_params
from share4v.inference.engine import Chat
from share4v.mm_utils import ImageLoadError, load_image


def split_image_files(value: str | None, sep: str) -> list[str]:
    """Split `--image-file` on `sep`, keeping a `data:<type>;base64,<payload>` URI whole."""
    parts = [part.strip() for part in (value or "").split(sep)]
    files: list[str] = []
    for part in parts:
        if files and files[-1].startswith("data:") and "," not in files[-1]:
            files[-1] += sep + part
        elif part:
            files.append(part)
    return files


def eval_model(args: Any) -> str:
    """Load the model named by `args`, answer `args.query` about `args.image_file` (split on `args.sep`)."""
    image_files = split_image_files(args.image_file, getattr(args, "sep", ",") or ",")
    params = generation_params(args)  # fail on bad settings or a bad image before loading the model
    images = [load_image(source) for source in image_files]
    engine = engine_from_args(args)
    [answer] = engine.generate([Chat.single(args.query, images)], params)
    print(answer)
    return answer


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m share4v.eval.run_share4v", description="Answer a question about images with a share4v model."
    )
    add_model_args(parser)
    parser.add_argument("--image-file", default=None, help="image path/URL; several joined by --sep")
    parser.add_argument("--query", required=True, help="the question; <image> marks where images go (optional)")
    parser.add_argument("--sep", default=",", help="separator between several --image-file entries")
    add_generation_args(parser)
    return parser


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        eval_model(args)
    except (ImageLoadError, FileNotFoundError, ImportError, ValueError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
