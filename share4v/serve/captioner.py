"""serve/captioner.py

Captioning a data set the ShareGPT4V-PT way, with a share4v model, built to survive anything: images are decoded in
DataLoader workers (a corrupt, truncated, empty, odd-mode or huge image becomes a line in the errors file with its
reason, never a stopped job), each batch's captions are appended to a JSON-lines file and flushed, and a rerun skips
every image already captioned or already found bad — kill it at any point and run it again. The command line is
`tools/share-cap_batch_infer.py`.

Inputs: a JSON list of paths, a JSON-lines file (strings or objects with "image"), or a folder (searched
recursively for image files). Sharding: `num_chunks` / `chunk_idx` (or torchrun's RANK / WORLD_SIZE) give each
process every n-th image and its own output files; under torchrun each process takes the GPU of its LOCAL_RANK
unless `--device` names one; `merge` writes the final JSON — the original's list of `{path: caption}` objects — from
all of them (the shards found beside it, unless told how many).
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from share4v.appended_jsonl import cut_torn_line, read_appended_jsonl, values_in_jsonl
from share4v.constants import MINIATURE_MODEL_PATH
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.inference.fp8_cache import DEFAULT_KV_CACHE_DTYPE
from share4v.inference.requests import Request, RequestEncoder
from share4v.temp_paths import atomic_output
from share4v.utils import dist_info

DEFAULT_PROMPT = "Analyze the image in a comprehensive and detailed manner."
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def list_images(source: str | Path) -> list[str]:
    """The image paths named by `source`: a folder (recursive, sorted), a JSON list or a JSON-lines file."""
    source = Path(source)
    if source.is_dir():
        return sorted(str(p) for p in source.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not source.is_file():
        raise FileNotFoundError(f"no such file or folder: {source}")
    text = source.read_text(encoding="utf-8")
    try:
        rows = json.loads(text)
    except json.JSONDecodeError:
        rows = None
    if not isinstance(rows, list):  # JSON lines (one line of them also parses as a whole)
        rows = []
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{source}:{number}: not JSON ({err.msg})") from None
    images = []
    for number, row in enumerate(rows, start=1):
        image = row.get("image") if isinstance(row, dict) else row
        if not isinstance(image, str):
            raise ValueError(f"{source}: entry {number} names no image path (a string, or an object with 'image')")
        images.append(image)
    return images


@dataclass(frozen=True)
class Outputs:
    """Where one shard writes: captions (JSON lines), errors (JSON lines)."""

    captions: Path
    errors: Path

    @classmethod
    def for_shard(cls, save_path: str | Path, num_chunks: int, chunk_idx: int) -> Outputs:
        stem = str(save_path) if num_chunks == 1 else f"{save_path}.{chunk_idx}-of-{num_chunks}"
        return cls(Path(f"{stem}.jsonl"), Path(f"{stem}.errors.jsonl"))

    def done(self) -> set[str]:
        """Images this shard already captioned or found bad (a torn last line from a kill is ignored)."""
        return values_in_jsonl(self.captions, "image") | values_in_jsonl(self.errors, "image")


class _Encoded(torch.utils.data.Dataset):
    """Encodes (loads, checks, pre-processes) one image per item, in whichever process the DataLoader puts it."""

    def __init__(self, images: list[str], encoder: RequestEncoder, prompt: str):
        self.images, self.encoder, self.prompt = images, encoder, prompt

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[str, Request]:
        path = self.images[index]
        return path, self.encoder.encode(Chat.single(self.prompt, [path]))


def caption_images(
    engine: Share4VEngine | Any,  # or anything with the same encoder / collate / run (ShareCaptionerEngine)
    images: list[str],
    outputs: Outputs,
    params: GenerationParams,
    prompt: str = DEFAULT_PROMPT,
    batch_size: int = 4,
    num_workers: int = 2,
    progress: bool = True,
) -> dict[str, int]:
    """Caption every image of `images` not yet in `outputs`; returns counts of `captioned`, `failed`, `skipped`."""
    outputs.captions.parent.mkdir(parents=True, exist_ok=True)
    for path in (outputs.captions, outputs.errors):
        cut_torn_line(path)
    done = outputs.done()
    todo = [image for image in dict.fromkeys(images) if image not in done]
    loader = torch.utils.data.DataLoader(
        _Encoded(todo, engine.encoder, prompt), batch_size=batch_size, num_workers=num_workers, collate_fn=list
    )
    counts = {"captioned": 0, "failed": 0, "skipped": len(images) - len(todo)}
    bar = tqdm(total=len(todo), unit="img", desc="captioning", disable=not progress or None, smoothing=0.1)
    with outputs.captions.open("a", encoding="utf-8") as captions, outputs.errors.open("a", encoding="utf-8") as errors:
        for batch in loader:
            good = [(path, request) for path, request in batch if request.error is None]
            for path, request in batch:
                if request.error is not None:
                    errors.write(json.dumps({"image": path, "error": request.error}) + "\n")
                    counts["failed"] += 1
            if good:
                completions = engine.run(engine.collate([request for _, request in good]), params)
                for (path, _), completion in zip(good, completions, strict=True):
                    captions.write(json.dumps({"image": path, "caption": completion.text}) + "\n")
                counts["captioned"] += len(good)
            captions.flush()
            errors.flush()
            bar.update(len(batch))
    bar.close()
    return counts


def merge(save_path: str | Path, num_chunks: int | None = None) -> Path:
    """Write the final `save_path` JSON (the original's `[{path: caption}, ...]`) from every shard's captions,
    atomically. `num_chunks` None: as many shards as the files beside `save_path` say (`<save_path>.I-of-N.jsonl`),
    or the one unsharded file."""
    if num_chunks is None:
        num_chunks = _shards_on_disk(Path(save_path))
    rows = []
    for chunk in range(num_chunks):
        outputs = Outputs.for_shard(save_path, num_chunks, chunk)
        if not outputs.captions.is_file():
            raise FileNotFoundError(f"shard {chunk} of {num_chunks} has no captions file: {outputs.captions}")
        # a line torn by a kill is passed over; that image is captioned again on the next run
        rows += [{row["image"]: row["caption"]} for row in read_appended_jsonl(outputs.captions)]
    save_path = Path(save_path)
    with atomic_output(save_path) as temporary, temporary.open("w", encoding="utf-8") as f:
        json.dump(rows, f, indent=4, ensure_ascii=False)
    return save_path


def _shards_on_disk(save_path: Path) -> int:
    """How many shards wrote captions for `save_path` (1 when none did: the unsharded run's file)."""
    counts = set()
    for path in save_path.parent.glob(f"{glob.escape(save_path.name)}.*-of-*.jsonl"):
        match = re.fullmatch(re.escape(save_path.name) + r"\.(\d+)-of-(\d+)\.jsonl", path.name)
        if match:
            counts.add(int(match.group(2)))
    if len(counts) > 1:
        raise ValueError(f"captions of runs with {sorted(counts)} shards lie beside {save_path}: give --num-chunks")
    return counts.pop() if counts else 1


def torchrun_device(environ: Mapping[str, str], gpus: int) -> str | None:
    """The GPU a process launched by torchrun (LOCAL_RANK set) should take: its local rank's; None elsewhere."""
    place = dist_info(environ)
    if not place.launched or gpus < 1:
        return None
    return f"cuda:{place.local_rank % gpus}"


def shard(images: list[str], num_chunks: int, chunk_idx: int) -> list[str]:
    """Every `num_chunks`-th image starting at `chunk_idx` (so shards stay balanced whatever the order)."""
    if not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"--chunk-idx must be in [0, {num_chunks}), not {chunk_idx}")
    return images[chunk_idx::num_chunks]


def rate(counts: dict[str, int], seconds: float) -> str:
    done = counts["captioned"] + counts["failed"]
    return f"{done / max(seconds, 1e-9):.2f} images/s"


def captioning_engine(args) -> Any:
    """A share4v engine for `--model-path`, or with `--trust-remote-code` ShareCaptioner's (its own model code, from
    `--model-path`, or from `--model-name` as the original spelled it when no model path is given)."""
    from share4v.inference.cli_args import engine_from_args
    from share4v.serve.sharecaptioner import ShareCaptionerEngine, ships_model_code

    given_path = args.model_path != MINIATURE_MODEL_PATH
    if getattr(args, "trust_remote_code", False):
        for flag in ("load_4bit", "load_8bit", "model_base"):
            if getattr(args, flag, None):
                raise ValueError(f"--{flag.replace('_', '-')} is for share4v models, not with --trust-remote-code")
        if (getattr(args, "kv_cache_dtype", None) or DEFAULT_KV_CACHE_DTYPE) != DEFAULT_KV_CACHE_DTYPE:
            raise ValueError("--kv-cache-dtype is for share4v models, not with --trust-remote-code")
        path = args.model_path if given_path or not args.model_name else args.model_name
        return ShareCaptionerEngine.from_pretrained(
            path, trust_remote_code=args.trust_remote_code, device=getattr(args, "device", None),
            dtype=getattr(args, "dtype", None),
        )  # fmt: skip
    if ships_model_code(args.model_path):
        raise ValueError(f"{args.model_path} ships its own model code (ShareCaptioner?): it needs --trust-remote-code")
    if not given_path and args.model_name:
        raise ValueError(
            f"--model-name {args.model_name} only picks the template of --model-path; for ShareCaptioner give its "
            "folder with --trust-remote-code (--model-path PATH, or --model-name PATH as the original)"
        )
    return engine_from_args(args)


def run(args) -> dict[str, int]:
    """The command line's job (see tools/share-cap_batch_infer.py)."""
    launched = dist_info()  # torchrun's processes shard by rank unless the flags say how
    num_chunks, chunk_idx = (
        (launched.world_size, launched.rank) if args.num_chunks == 1 else (args.num_chunks, args.chunk_idx)
    )
    images = shard(list_images(args.images_file), num_chunks, chunk_idx)
    from share4v.inference.cli_args import generation_params

    if getattr(args, "device", None) in (None, "auto"):  # one GPU per process, not each spread over all of them
        args.device = torchrun_device(os.environ, torch.cuda.device_count()) or getattr(args, "device", None)

    engine = captioning_engine(args)
    outputs = Outputs.for_shard(args.save_path, num_chunks, chunk_idx)
    start = time.perf_counter()
    counts = caption_images(engine, images, outputs, generation_params(args), args.prompt, args.batch_size,
                            args.num_workers)  # fmt: skip
    print(f"{counts['captioned']} captioned, {counts['failed']} failed ({outputs.errors}), {counts['skipped']} "
          f"already done; {rate(counts, time.perf_counter() - start)}")  # fmt: skip
    if num_chunks == 1:
        merge(args.save_path, 1)
    return counts
