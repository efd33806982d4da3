"""The local Gradio demo of ShareGPT4V: chat about an image with a model loaded in this process (no controller or
worker), answers streamed as they are written.

    pip install -e ".[demo]"
    python tools/app.py --model-path checkpoints/share4v-7b                     # http://127.0.0.1:7860
    python tools/app.py --model-path checkpoints/share4v-tiny --device cpu      # a tiny random model, for trying it

It listens on 127.0.0.1 unless --host says otherwise; --share asks gradio for a public link (off by default). The UI
is built by share4v.serve.gradio_demo.
"""

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from share4v.inference.cli_args import add_model_args, add_warm_up_arg, engine_from_args, warm_up
from share4v.serve.gradio_demo import UploadLimits, build_demo, example_rows, launch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_model_args(p)
    web = p.add_argument_group("web")
    web.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    web.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    web.add_argument("--share", action="store_true", help="also serve through a public gradio.live link")
    web.add_argument("--concurrency", type=int, default=1,
                     help="answers generated at once; others wait in the queue (default: %(default)s)")  # fmt: skip
    web.add_argument("--max-upload-mb", type=float, default=UploadLimits.max_bytes / 2**20,
                     help="largest image file accepted (default: %(default)s)")  # fmt: skip
    web.add_argument("--max-image-pixels", type=int, default=UploadLimits.max_pixels,
                     help="largest width x height accepted (default: %(default)s)")  # fmt: skip
    add_warm_up_arg(web)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own requests at start-up
    try:
        import gradio  # noqa: F401
    except ImportError:
        sys.exit('error: the demo needs gradio: pip install -e ".[demo]"')
    limits = UploadLimits(int(args.max_upload_mb * 2**20), args.max_image_pixels)
    try:
        if args.concurrency < 1:
            raise ValueError(f"--concurrency must be at least 1, not {args.concurrency}")
        engine = engine_from_args(args)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    warm_up(engine, args)
    name = args.model_name or Path(args.model_path.rstrip("/")).name
    demo = build_demo(engine, name, limits=limits, examples=example_rows(EXAMPLES), concurrency=args.concurrency)
    launch(demo, args.host, args.port, args.share, limits, allowed_paths=[EXAMPLES])
    return 0


if __name__ == "__main__":
    main()
