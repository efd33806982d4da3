"""Caption a folder or list of images with a share4v model (the ShareGPT4V-PT way), resumable and fault tolerant.

    python tools/share-cap_batch_infer.py --model-path checkpoints/share4v-7b --images-file images_to_describe.json \\
        --save-path captions.json --batch-size 4

Writes captions.json.jsonl as it goes (one {"image", "caption"} per line, flushed per batch), bad images with their
reason to captions.json.errors.jsonl, and at the end captions.json as the original's [{path: caption}, ...] list.
Rerun the same command after any interruption: finished images are skipped. Several GPUs: one process per GPU with
--num-chunks N --chunk-idx i (or torchrun, each process on its LOCAL_RANK's GPU), then once more with --merge to
write the final JSON (from the shards' files found beside --save-path).
ShareCaptioner (the original's captioner, InternLM-XComposer-based: --model-path PATH --trust-remote-code, or the
original's --model-name PATH --trust-remote-code) ships its model class as Python code inside the checkpoint, which
transformers imports and runs: pass --trust-remote-code only for a checkpoint whose code you trust. It then decodes as
the original did unless told otherwise (3 beams, sampling at temperature 1.0, repetition penalty 1.5, at most 500
tokens).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from share4v.inference.cli_args import add_generation_args, add_model_args
from share4v.serve.captioner import DEFAULT_PROMPT, merge, run
from share4v.serve.sharecaptioner import SHARECAPTIONER_DEFAULTS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    add_model_args(p)
    add_generation_args(p, max_new_tokens=500)
    p.set_defaults(temperature=0.0)  # captions for a data set: deterministic unless asked otherwise
    job = p.add_argument_group("job")
    job.add_argument("--images-file", default="images_to_describe.json",
                     help="JSON list of paths, JSON lines, or a folder (default: %(default)s)")  # fmt: skip
    job.add_argument("--save-path", default="captions.json", help="final JSON (default: %(default)s)")
    job.add_argument("--batch-size", type=int, default=4, help="images per generation batch (default: %(default)s)")
    job.add_argument(
        "--prompt", default=DEFAULT_PROMPT, help="instruction given with each image (default: %(default)r)"
    )
    job.add_argument("--num-workers", type=int, default=2, help="image-decoding processes (default: %(default)s)")
    job.add_argument("--num-chunks", type=int, default=1, help="shards over processes (default: %(default)s)")
    job.add_argument("--chunk-idx", type=int, default=0, help="this process's shard (default: %(default)s)")
    several = "accepted for the original's scripts; use --num-chunks or torchrun for several GPUs"
    job.add_argument("--num_gpus", "--num-gpus", type=int, default=1, help=several)
    job.add_argument("--merge", action="store_true", help="only write --save-path from the shards' captions")
    job.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="run ShareCaptioner: import and execute the model code its checkpoint ships (default: off)",
    )
    return p


def parse_args(argv) -> argparse.Namespace:
    """The flags, with the original's decoding as defaults when ShareCaptioner runs (--trust-remote-code)."""
    p = parser()
    if p.parse_known_args(argv)[0].trust_remote_code:
        p.set_defaults(**SHARECAPTIONER_DEFAULTS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        if args.merge:
            print(f"wrote {merge(args.save_path, args.num_chunks if args.num_chunks > 1 else None)}")
            return 0
        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, not {args.batch_size}")
        run(args)
    except (OSError, ValueError) as err:
        sys.exit(f"error: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
