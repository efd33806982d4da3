"""data/check.py

Check a training data file before a multi-day run: every row's structure, its `<image>` markers against its
images, every image (present and decodable), the conversation template, and — with a tokenizer — where each
answer's tokens are, the token-length distribution and how many samples `model_max_length` would truncate or leave
with nothing to learn.

    python -m share4v.data.check data/sharegpt4v/sharegpt4v_mix665k.json --image-folder data \\
        --model-path checkpoints/share4v-7b_pretrained --version v1 --report problems.jsonl

Exits 1 when a row would be skipped by training (malformed, marker mismatch, missing or unreadable image, template
problem, answer not found or truncated away), 0 otherwise; truncated samples that keep an answer are only counted.
Exits 2, in one line, when the file cannot be read or holds no rows (training refuses it), or `--image-folder`
cannot be the right folder (not a folder, or none of the images sampled as training samples them is under it).
With `--text-only` (a model without a vision tower, trained without --vision_tower) every row with images is an
error too: training refuses such a file at start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from share4v.convert.folders import load_tokenizer, read_json
from share4v.mm_utils import ImageLoadError, load_image
from share4v.train.data import check_image_folder, merged_length, sample_turns, truncate_to_budget
from share4v.train.preprocess import SampleError, conv_mode_for_version, conversation_for_training, preprocess
from share4v.train.rows import BadRow, check_image_markers, check_row_structure, image_paths, read_rows, sample_id

KINDS = {  # kind → (label, is an error)
    "malformed": ("malformed rows", True),
    "missing_image": ("missing images", True),
    "unreadable_image": ("unreadable images", True),
    "markers": ("image marker mismatches", True),
    "images_without_tower": ("images for a text-only model", True),
    "template": ("template problems", True),
    "fully_masked": ("answers truncated away", True),
    "truncated": ("truncated, still trainable", False),
}
DEFAULT_IMAGE_TOKENS = 576  # CLIP ViT-L/14 at 336 px: 24 x 24 patches


@dataclass
class Finding:
    kind: str
    row: BadRow


@dataclass
class CheckReport:
    rows: int = 0
    findings: list[Finding] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)  # merged lengths (text + images x image tokens)
    image_rows: int = 0

    @property
    def errors(self) -> int:
        return sum(KINDS[f.kind][1] for f in self.findings)

    def add(self, kind: str, where: str, row: Any, detail: str) -> None:
        self.findings.append(Finding(kind, BadRow(where, sample_id(row), detail)))


def _check_image(path: str) -> tuple[str | None, str]:
    """(None, "") when the image decodes, else (kind, reason)."""
    if not os.path.isfile(path):
        return "missing_image", f"image file not found: {path}"
    try:
        load_image(path)
    except ImageLoadError as err:
        return "unreadable_image", str(err)
    return None, ""


def check_images(paths: list[str], workers: int, decode: bool) -> dict[str, tuple[str | None, str]]:
    """Every distinct path's verdict, decoded on `workers` threads (or only looked up when not `decode`)."""
    unique = sorted(set(paths))
    if not decode:
        return {p: (None, "") if os.path.isfile(p) else ("missing_image", f"image file not found: {p}") for p in unique}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        verdicts = list(tqdm(pool.map(_check_image, unique), total=len(unique), desc="images", unit="img"))
    return dict(zip(unique, verdicts, strict=True))


def check_data(
    data_path: str,
    image_folder: str = "",
    tokenizer: Any = None,
    conv_mode: str = "vicuna_v1",
    image_tokens: int = DEFAULT_IMAGE_TOKENS,
    max_length: int = 2048,
    decode_images: bool = True,
    workers: int = 4,
    text_only: bool = False,
) -> CheckReport:
    """Check every row of `data_path`; see the module docstring for what is checked. `text_only`: the model has no
    vision tower, so a row with images is an error (as `check_no_image_rows` makes training refuse the file).

    Raises:
        ValueError: when the file holds no rows; FileNotFoundError: at an image folder training would refuse.
    """
    report = CheckReport()
    rows, bad_lines = read_rows(data_path)
    if not rows and not bad_lines:  # an input error, as training's "no usable training samples" at start-up
        raise ValueError(f"{data_path} holds no rows: training refuses a file without samples")
    report.rows = len(rows) + len(bad_lines)
    report.findings += [Finding("malformed", bad) for bad in bad_lines]
    good = []
    for where, row in tqdm(rows, desc="rows", unit="row"):
        try:
            check_row_structure(row)
        except SampleError as err:
            report.add("malformed", where, row, str(err))
            continue
        try:  # everything that needs no tokenizer first, as training reads the rows
            check_image_markers(row)
        except SampleError as err:
            report.add("markers", where, row, str(err))
            continue
        if text_only and image_paths(row):
            report.image_rows += 1
            report.add("images_without_tower", where, row, "has images but the model has no vision tower")
            continue
        try:
            conversation_for_training(row["conversations"], conv_mode)
        except SampleError as err:
            report.add("template", where, row, str(err))
            continue
        good.append((where, row))

    if not text_only:  # a folder that cannot be the right one stops training at start-up: say so, not row by row
        check_image_folder(data_path, [row for _, row in good], image_folder, flag="--image-folder")
    folder = image_folder or ""
    verdicts = check_images([os.path.join(folder, p) for _, r in good for p in image_paths(r)], workers, decode_images)
    data_args = argparse.Namespace(is_multimodal=True, conv_mode=conv_mode, mm_use_im_start_end=False)
    for where, row in tqdm(good, desc="tokens" if tokenizer is not None else "rows", unit="row", disable=len(good) < 2):
        paths = image_paths(row)
        report.image_rows += bool(paths)
        problems = [verdicts[os.path.join(folder, p)] for p in paths]
        problems = [(kind, reason) for kind, reason in problems if kind is not None]
        if problems:
            report.add(problems[0][0], where, row, problems[0][1])
            continue
        if tokenizer is None:
            continue
        try:
            sample = preprocess([sample_turns(row, bool(paths), data_args)], tokenizer, bool(paths), conv_mode)
        except SampleError as err:
            report.add("template", where, row, str(err))
            continue
        input_ids, labels = sample["input_ids"][0].tolist(), sample["labels"][0].tolist()
        length = merged_length(input_ids, image_tokens)
        report.lengths.append(length)
        if length > max_length:
            _, kept_labels, _ = truncate_to_budget(input_ids, labels, max_length, image_tokens)
            trainable = any(label >= 0 for label in kept_labels)
            detail = f"length {length} > model_max_length {max_length}"
            report.add("truncated" if trainable else "fully_masked", where, row, detail)
    return report


def format_report(
    report: CheckReport, data_path: str, image_tokens: int, listed: int = 20, text_only: bool = False
) -> str:
    """The summary table, the first `listed` errors and the verdict. Rows with images for a text-only model are not
    counted as skipped: training refuses the whole file for them; their line shows only with `text_only`."""
    counts = Counter(f.kind for f in report.findings)
    lines = [f"checked {report.rows:,} rows of {data_path}"]
    for kind, (label, is_error) in KINDS.items():
        if kind == "images_without_tower" and not text_only:
            continue
        first = next((f for f in report.findings if f.kind == kind), None)
        example = f"  first: {first.row}" if first else ""
        lines.append(f"  {label:<28}{counts.get(kind, 0):>9,}{'' if is_error else ' (warning)'}{example}")
    if report.lengths:
        q = np.percentile(report.lengths, [0, 50, 90, 99, 100]).astype(int)
        lines.append(
            f"token lengths (text + {image_tokens} per image): min {q[0]} / p50 {q[1]} / p90 {q[2]} / p99 {q[3]}"
            f" / max {q[4]}; {report.image_rows:,} rows with images"
        )
    errors = [f for f in report.findings if KINDS[f.kind][1]]
    for finding in errors[:listed]:
        lines.append(f"error: {finding.row}")
    if len(errors) > listed:
        lines.append(f"... and {len(errors) - listed:,} more errors (--report FILE lists all)")
    skipped = report.errors - counts.get("images_without_tower", 0)
    if skipped or not report.errors:
        lines.append(f"{skipped:,} rows would be skipped by training" if skipped else "no errors")
    if counts.get("images_without_tower"):
        lines.append(
            f"training without a vision tower refuses this file at start-up ({counts['images_without_tower']:,} rows "
            "with images): pass --vision_tower, or leave those rows out"
        )
    return "\n".join(lines)


def _image_tokens_of(tower_folder: Path) -> int | None:
    config = tower_folder / "config.json"
    if not config.is_file():
        return None
    values = read_json(config)
    values = values.get("vision_config", values) if isinstance(values, dict) else {}
    if not isinstance(values.get("image_size"), int) or not isinstance(values.get("patch_size"), int):
        raise ValueError(f"{config} has no image_size and patch_size: not a vision tower's config")
    return (values["image_size"] // values["patch_size"]) ** 2


def _load_tokenizer(model_path: str) -> Any:
    """The tokenizer of `--model-path`, failing with one line that names it."""
    where = "" if os.path.isdir(model_path) else " (not a folder here)"
    return load_tokenizer(model_path, name=f"--model-path {model_path}{where}")


def _image_tokens(args: argparse.Namespace) -> int:
    if args.image_tokens:
        return args.image_tokens
    candidates = [Path(args.vision_tower)] if args.vision_tower else []
    if args.model_path:
        config_file = Path(args.model_path) / "config.json"
        config = read_json(config_file) if config_file.is_file() else None
        tower = config.get("mm_vision_tower") if isinstance(config, dict) else None
        if tower:
            candidates += [Path(tower), Path(args.model_path) / tower]
    return next((n for n in map(_image_tokens_of, candidates) if n), DEFAULT_IMAGE_TOKENS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m share4v.data.check", description=__doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("data_path", help="training data: a JSON list or JSONL file")
    parser.add_argument("--image-folder", default="", help="folder the rows' image paths start from")
    parser.add_argument("--model-path", help="folder with the tokenizer (enables token lengths and answer checks)")
    parser.add_argument("--version", default="v1", help="conversation template as training's --version (v1)")
    tower = parser.add_mutually_exclusive_group()
    tower.add_argument("--vision-tower", help="tower folder, for the image token count (else from the model)")
    tower.add_argument("--text-only", action="store_true", help="the model has no vision tower (training without "
                       "--vision_tower): rows with images are errors, as training refuses them")  # fmt: skip
    parser.add_argument("--image-tokens", type=int, help=f"positions per image (default from the tower, else "
                        f"{DEFAULT_IMAGE_TOKENS})")  # fmt: skip
    parser.add_argument("--model-max-length", type=int, default=2048, help="training's --model_max_length (2048)")
    parser.add_argument("--no-decode", action="store_true", help="only check that images exist (fast)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image decoding threads")
    parser.add_argument("--report", help="write every finding to this JSONL file")
    args = parser.parse_args(argv)
    try:
        report_folder = Path(args.report).parent if args.report else None
        if report_folder is not None and not report_folder.is_dir():  # before the check, which may take hours
            raise FileNotFoundError(f"--report {args.report}: the folder {report_folder} does not exist")
        conv_mode = conv_mode_for_version(args.version)
        tokenizer = _load_tokenizer(args.model_path) if args.model_path else None
        image_tokens = _image_tokens(args)
        report = check_data(
            args.data_path, args.image_folder, tokenizer, conv_mode, image_tokens, args.model_max_length,
            decode_images=not args.no_decode, workers=args.workers, text_only=args.text_only,
        )  # fmt: skip
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report, args.data_path, image_tokens, text_only=args.text_only))
    if args.report:
        lines = [json.dumps({"kind": f.kind, "where": f.row.where, "id": f.row.sample_id, "reason": f.row.reason})
                 for f in report.findings]  # fmt: skip
        staging = Path(f"{args.report}.{os.getpid()}.tmp")
        try:
            staging.write_text("".join(line + "\n" for line in lines))
            os.replace(staging, args.report)
        except OSError as err:
            staging.unlink(missing_ok=True)
            print(f"error: cannot write --report {args.report}: {err}", file=sys.stderr)
            return 2
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
