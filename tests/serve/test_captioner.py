"""The batch captioner: bad images go to the errors file with their reason, a crash loses nothing and a rerun
captions every good image exactly once, batched captions equal one-by-one captions, the original's output format."""

import io
import json
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from share4v.inference.engine import GenerationParams, Share4VEngine
from share4v.serve import captioner
from share4v.serve.captioner import Outputs, caption_images, list_images, merge, shard, torchrun_device
from tests.helpers import random_image, umask

ROOT = Path(__file__).resolve().parents[2]
GREEDY = GenerationParams(temperature=0, max_new_tokens=5)


@pytest.fixture(scope="module")
def engine(tiny):
    return Share4VEngine(*tiny)


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    good = []
    for index in range(7):
        path = folder / ("sub" if index % 2 else "") / f"good{index}.png"
        random_image(index).save(path)
        good.append(str(path))
    random_image(10).convert("CMYK").save(folder / "cmyk.jpg")  # odd modes are converted, not refused
    Image.fromarray(np.random.RandomState(0).randint(0, 65535, (40, 30), dtype=np.uint16)).save(folder / "deep.png")
    good += [str(folder / "cmyk.jpg"), str(folder / "deep.png")]
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    (folder / "empty.png").write_bytes(b"")
    whole = io.BytesIO()
    random_image(11).save(whole, format="PNG")
    (folder / "truncated.png").write_bytes(whole.getvalue()[:200])
    random_image(12, (2000, 10)).save(folder / "sliver.png")  # aspect 200: not a picture to look at
    bad = [str(folder / name) for name in ("corrupt.jpg", "empty.png", "truncated.png", "sliver.png")]
    return folder, sorted(good), sorted(bad)


def captions_of(outputs):
    return [json.loads(line) for line in outputs.captions.read_text().splitlines()]


def test_bad_images_are_listed_with_their_reason_and_the_rest_is_captioned(engine, images, tmp_path):
    folder, good, bad = images
    outputs = Outputs.for_shard(tmp_path / "captions.json", 1, 0)
    counts = caption_images(engine, list_images(folder), outputs, GREEDY, batch_size=4, num_workers=1)
    assert counts == {"captioned": len(good), "failed": len(bad), "skipped": 0}
    assert sorted(row["image"] for row in captions_of(outputs)) == good
    errors = {row["image"]: row["error"] for row in map(json.loads, outputs.errors.read_text().splitlines())}
    assert sorted(errors) == bad and all(errors.values())
    assert "times longer than wide" in errors[str(folder / "sliver.png")]


def test_a_crash_loses_nothing_and_a_rerun_captions_each_image_once(engine, images, tmp_path, monkeypatch):
    folder, good, _ = images
    outputs = Outputs.for_shard(tmp_path / "captions.json", 1, 0)
    calls = {"n": 0}
    real_run = engine.run

    def crash_on_second_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real_run(*args, **kwargs)

    monkeypatch.setattr(engine, "run", crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        caption_images(engine, list_images(folder), outputs, GREEDY, batch_size=3, num_workers=0)
    first = captions_of(outputs)
    assert 0 < len(first) < len(good)
    with outputs.captions.open("ab") as f:
        f.write(('{"image": "' + good[-1] + '", "caption": "答').encode()[:-1])  # torn by the kill, in a character
    monkeypatch.setattr(engine, "run", real_run)
    counts = caption_images(engine, list_images(folder), outputs, GREEDY, batch_size=3, num_workers=0)
    assert counts["skipped"] > 0
    final = merge(tmp_path / "captions.json", 1)
    rows = json.loads(final.read_text())
    assert sorted(path for row in rows for path in row) == good  # each good image exactly once
    assert all(len(row) == 1 for row in rows)
    assert all(json.loads(line) for line in outputs.captions.read_text(encoding="utf-8").splitlines())  # cut


def test_batched_captions_equal_one_by_one(engine, images, tmp_path):
    _, good, _ = images
    together = Outputs.for_shard(tmp_path / "a.json", 1, 0)
    alone = Outputs.for_shard(tmp_path / "b.json", 1, 0)
    caption_images(engine, good, together, GREEDY, batch_size=4, num_workers=0)
    caption_images(engine, good, alone, GREEDY, batch_size=1, num_workers=0)
    assert {r["image"]: r["caption"] for r in captions_of(together)} == {
        r["image"]: r["caption"] for r in captions_of(alone)
    }


def test_inputs_and_shards(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(["a.png", "b.png"]))
    (tmp_path / "rows.jsonl").write_text('{"image": "a.png"}\n"b.png"\n')
    assert list_images(tmp_path / "list.json") == list_images(tmp_path / "rows.jsonl") == ["a.png", "b.png"]
    (tmp_path / "bad.jsonl").write_text('{"image": "a.png"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: not JSON"):
        list_images(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="entry 1 names no image"):
        (tmp_path / "nums.json").write_text("[1]")
        list_images(tmp_path / "nums.json")
    images = [f"{i}.png" for i in range(7)]
    shards = [shard(images, 3, i) for i in range(3)]
    assert sorted(name for part in shards for name in part) == sorted(images)
    assert shards[0] == ["0.png", "3.png", "6.png"]
    with pytest.raises(ValueError, match="--chunk-idx"):
        shard(images, 3, 3)


def test_command_line_help_and_errors(tmp_path):
    script = [sys.executable, str(ROOT / "tools" / "share-cap_batch_infer.py")]
    shown = subprocess.run([*script, "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and "--save-path" in shown.stdout and "--trust-remote-code" in shown.stdout
    missing = subprocess.run([*script, "--merge", "--save-path", str(tmp_path / "c.json"), "--num-chunks", "2",
                              "--model-path", "unused"], capture_output=True, text=True)  # fmt: skip
    assert missing.returncode == 1 and missing.stderr.strip().startswith("error: shard 0 of 2 has no captions file")


def test_merge_finds_the_shards_and_torchrun_processes_take_their_own_gpu(tmp_path):
    save = tmp_path / "caps.json"
    for index in range(3):
        line = json.dumps({"image": f"{index}.png", "caption": "c"}) + "\n"
        Outputs.for_shard(save, 3, index).captions.write_text(line)
    rows = json.loads(merge(save).read_text())  # no count given: the three shards beside it
    assert sorted(next(iter(row)) for row in rows) == ["0.png", "1.png", "2.png"]
    Outputs.for_shard(save, 2, 0).captions.write_text("")
    with pytest.raises(ValueError, match=r"runs with \[2, 3\] shards lie beside .*: give --num-chunks"):
        merge(save)
    assert torchrun_device({"LOCAL_RANK": "3", "RANK": "11"}, gpus=8) == "cuda:3"
    assert torchrun_device({}, gpus=8) is None and torchrun_device({"LOCAL_RANK": "0"}, gpus=0) is None


def test_the_merged_captions_get_the_mode_of_a_plain_write(tmp_path):
    """Not tempfile's owner-only 0o600: a teammate or a training job of another user reads the captions."""
    save = tmp_path / "caps.json"
    Outputs.for_shard(save, 1, 0).captions.write_text(json.dumps({"image": "0.png", "caption": "c"}) + "\n")
    with umask(0o022):
        merged = merge(save)
    assert stat.S_IMODE(merged.stat().st_mode) == 0o644 and json.loads(merged.read_text()) == [{"0.png": "c"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps.json", "caps.json.jsonl"]


def test_a_failed_merge_leaves_no_temporary(tmp_path, monkeypatch):
    """A write that fails (a full disk) raises and leaves neither the final file nor a half-written `*.tmp`."""
    save = tmp_path / "caps.json"
    Outputs.for_shard(save, 1, 0).captions.write_text(json.dumps({"image": "0.png", "caption": "c"}) + "\n")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(captioner.json, "dump", full_disk)
    with pytest.raises(OSError, match="No space left"):
        merge(save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps.json.jsonl"]
