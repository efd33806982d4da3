"""The batch captioner as a user runs it: `tools/share-cap_batch_infer.py` in its own process over 200 images, 10 of
them odd (corrupt, truncated, empty, huge, degenerate, CMYK, 16-bit), killed with SIGKILL midway and run again. After
the rerun every good image is captioned exactly once, every bad one is in the errors file once with its reason, and
captions made 8 at a time equal captions made one at a time (greedy)."""

import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import random_image

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tools" / "share-cap_batch_infer.py"
NUM_IMAGES = 200
MAX_NEW_TOKENS = 16  # enough decode steps that a batch takes a while, so the kill lands midway
KILL_AFTER_LINES = 16  # two batches of 8 captioned: the process is killed during the third

# odd image -> what its errors-file reason says, or None when the captioner converts it and captions it
ODD = {
    "corrupt.jpg": "cannot identify image file",
    "noise.webp": "cannot identify image file",
    "empty.png": "cannot identify image file",
    "empty.jpg": "cannot identify image file",
    "truncated.png": "image file is truncated",
    "truncated.jpg": "image file is truncated",
    "huge.png": "exceeds limit",  # over PIL's decompression-bomb limit (2 * Image.MAX_IMAGE_PIXELS)
    "sliver.png": "times longer than wide",
    "cmyk.jpg": None,  # converted to RGB (share4v.mm_utils.to_rgb)
    "deep16.png": None,  # 16-bit grey, rescaled to 8 bits
}


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _huge_png(width: int, height: int) -> bytes:
    """A valid 1-bit black PNG of `width` x `height` (a few kB: rows of zeros deflate well)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" + bytes((width + 7) // 8)) * height  # filter byte "none" + packed pixels
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _write_odd(path: Path, kind: str) -> None:
    if kind == "corrupt.jpg":
        path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)  # a JPEG's magic, then garbage
    elif kind == "noise.webp":
        path.write_bytes(np.random.RandomState(1).bytes(3000))
    elif kind.startswith("empty."):
        path.write_bytes(b"")
    elif kind.startswith("truncated."):
        whole = _encoded(random_image(99, (64, 48)), "PNG" if kind.endswith(".png") else "JPEG")
        path.write_bytes(whole[: len(whole) // 2])
    elif kind == "huge.png":
        pixels = 2 * Image.MAX_IMAGE_PIXELS + 1_000_000
        path.write_bytes(_huge_png(20_000, pixels // 20_000 + 1))
    elif kind == "sliver.png":
        random_image(98, (2000, 10)).save(path)
    elif kind == "cmyk.jpg":
        random_image(97, (24, 16)).convert("CMYK").save(path)
        assert Image.open(path).mode == "CMYK"
    elif kind == "deep16.png":
        Image.fromarray(np.random.RandomState(2).randint(0, 65535, (16, 24), dtype=np.uint16)).save(path)
        assert Image.open(path).mode.startswith("I;16")
    else:
        raise AssertionError(kind)


@pytest.fixture
def folder(tmp_path) -> Path:
    """200 images, named so that sorted order spreads the 10 odd ones over the job (positions 3, 23, 43, ...)."""
    folder = tmp_path / "images"
    folder.mkdir()
    odd = iter(ODD)
    for index in range(NUM_IMAGES):
        if index % 20 == 3:
            _write_odd(folder / f"{index:03d}_{(kind := next(odd))}", kind)
        else:
            random_image(index, (24, 16)).save(folder / f"{index:03d}.png")
    return folder


def _command(ckpt: Path, images: Path, save_path: Path, batch_size: int) -> list[str]:
    return [sys.executable, str(SCRIPT), "--model-path", str(ckpt), "--images-file", str(images),
            "--save-path", str(save_path), "--batch-size", str(batch_size), "--num-workers", "1",
            "--temperature", "0", "--max_new_tokens", str(MAX_NEW_TOKENS)]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _rows(path: Path) -> list[dict]:
    """The whole lines of a JSON-lines output (a line torn by the kill is left out, as the captioner does)."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    done = subprocess.run(command, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _run_and_kill(command: list[str], cwd: Path, captions: Path) -> None:
    """Start the job, SIGKILL it once `captions` has KILL_AFTER_LINES lines (and before it finishes)."""
    log = (cwd / "killed-run.log").open("w")
    process = subprocess.Popen(command, cwd=cwd, env=_env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if captions.is_file() and captions.read_bytes().count(b"\n") >= KILL_AFTER_LINES:
                os.kill(process.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
    finally:
        if process.poll() is None and time.monotonic() >= deadline:
            os.kill(process.pid, signal.SIGKILL)
        returncode = process.wait(timeout=60)
        log.close()
    assert returncode == -signal.SIGKILL, (
        f"the job ended (rc {returncode}) before it could be killed midway:\n{(cwd / 'killed-run.log').read_text()}"
    )


def test_a_killed_job_resumes_captioning_each_good_image_once_and_listing_each_bad_one(folder, tiny_ckpt, tmp_path):
    save_path = tmp_path / "out" / "captions.json"
    captions, errors = Path(f"{save_path}.jsonl"), Path(f"{save_path}.errors.jsonl")
    images = sorted(str(path) for path in folder.iterdir())
    bad = {path: reason for path in images for kind, reason in ODD.items() if path.endswith(kind) and reason}
    good = sorted(set(images) - set(bad))
    assert len(images) == NUM_IMAGES and len(bad) == 8 and len(good) == 192

    _run_and_kill(_command(tiny_ckpt, folder, save_path, batch_size=8), tmp_path, captions)
    first_captions, first_errors = _rows(captions), _rows(errors)
    assert KILL_AFTER_LINES <= len(first_captions) < len(good), "killed midway: some captions, not all"
    assert first_errors, "the odd image in the first batches was already listed before the kill"
    assert not save_path.exists(), "the final JSON is written only when the job completes"
    done_before = {row["image"] for row in first_captions + first_errors}

    rerun = _run(_command(tiny_ckpt, folder, save_path, batch_size=8), tmp_path)
    summary = re.search(r"(\d+) captioned, (\d+) failed .* (\d+) already done", rerun.stdout)
    assert summary, rerun.stdout
    assert [int(n) for n in summary.groups()] == [
        len(good) - len(first_captions), len(bad) - len(first_errors), len(done_before)
    ]  # fmt: skip

    rows = _rows(captions)
    assert sorted(row["image"] for row in rows) == good  # each good image once: none missing, none twice
    assert all(isinstance(row["caption"], str) for row in rows)
    final = json.loads(save_path.read_text())
    assert all(len(row) == 1 for row in final)
    assert sorted(path for row in final for path in row) == good
    listed = _rows(errors)
    assert sorted(row["image"] for row in listed) == sorted(bad)  # each bad image once
    for row in listed:
        assert bad[row["image"]] in row["error"], row

    # --batch-size 8 captions equal --batch-size 1 captions, for images of both runs and the converted odd ones
    subset = good[::12] + [path for path in good if path.endswith(("cmyk.jpg", "deep16.png"))]
    (tmp_path / "subset.json").write_text(json.dumps(subset))
    alone_path = tmp_path / "alone" / "captions.json"
    _run(_command(tiny_ckpt, tmp_path / "subset.json", alone_path, batch_size=1), tmp_path)
    alone = {row["image"]: row["caption"] for row in _rows(Path(f"{alone_path}.jsonl"))}
    batched = {row["image"]: row["caption"] for row in rows}
    assert sorted(alone) == sorted(subset)
    assert alone == {path: batched[path] for path in subset}
    assert len(set(alone.values())) > 1, "the captions should differ between images for this check to mean much"
