"""Broken or mismatched checkpoint folders give one clear line naming the file or key, before anything large
loads; a pickle that weights_only refuses runs no code."""

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest

from share4v.model.builder import load_pretrained_model


def _config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _evil_pickle(folder):
    (folder / "model.safetensors").unlink()
    with open(folder / "pytorch_model.bin", "wb") as handle:
        pickle.dump(_Evil(), handle)


BROKEN = {
    "no-tokenizer": (lambda d: (d / "tokenizer.model").unlink(), r"no tokenizer in .*no-tokenizer"),
    "corrupt-tokenizer": (
        lambda d: (d / "tokenizer.model").write_bytes(b"garbage" * 10),
        r"tokenizer\.model is not a valid sentencepiece model",
    ),
    "empty-weights": (lambda d: (d / "model.safetensors").write_bytes(b""), r"model\.safetensors is truncated"),
    "truncated-weights": (
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-1000]),
        r"model\.safetensors is truncated or not a safetensors file",
    ),
    "mm-hidden-size": (lambda d: _config(d, mm_hidden_size=48), r"config\.json: mm_hidden_size give"),
    "hidden-size": (lambda d: _config(d, hidden_size=96), r"config\.json: vocab_size / hidden_size give"),
    "vocab-size": (lambda d: _config(d, vocab_size=600), r"\[600, 64\], but the weights have \[512, 64\]"),
    "select-layer": (lambda d: _config(d, mm_vision_select_layer=-30), r"-30 is outside the 3-layer vision tower"),
    "config-list": (lambda d: (d / "config.json").write_text("[1, 2]"), r"must hold a JSON object, not a list"),
    "config-types": (lambda d: _config(d, hidden_size="64"), r"config\.json: .*'hidden_size' expected int"),
    "evil-pickle": (_evil_pickle, r"pytorch_model\.bin hold Python objects .* could run code"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_checkpoint_is_one_clear_error(tiny_ckpt, tmp_path, monkeypatch, case):
    folder = tmp_path / case
    shutil.copytree(tiny_ckpt, folder)
    mutate, message = BROKEN[case]
    mutate(folder)
    monkeypatch.chdir(tmp_path)
    with pytest.raises((ValueError, FileNotFoundError), match=message) as caught:
        load_pretrained_model(str(folder), None, None, device="cpu")
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("path", ["./checkpoints/shar4v-tiny", "/no/such/folder", "~/no-such-checkpoint"])
def test_mistyped_local_path_is_no_hub_lookup(path):
    with pytest.raises(FileNotFoundError, match=f"no such folder: {path}"):
        load_pretrained_model(path, None, None, device="cpu")


def test_cli_names_the_problem_in_one_line(tiny_ckpt, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, folder)
    (folder / "tokenizer.model").write_bytes(b"garbage")
    result = subprocess.run(
        [sys.executable, "-m", "share4v.eval.run_share4v", "--model-path", str(folder), "--query", "hi"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and "sentencepiece" in result.stderr
