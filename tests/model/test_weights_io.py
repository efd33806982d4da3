"""Weight files that cannot be read (a truncated `.bin` shard, an index that is not JSON or has no weight_map) are
refused in one line naming the file, through `read_weights` / `read_model_weights` and the to_hf CLI (exit 2).
Written safetensors get the mode of a plain write, and the package writes them only through `weights_io.save_file`."""

import ast
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from share4v.convert import to_hf
from share4v.model.weights_io import read_model_weights, read_weights, save_file
from tests.helpers import file_mode, umask

PACKAGE = Path(__file__).resolve().parents[2] / "share4v"


@pytest.fixture(params=[0, 100, 0.5, -10], ids=["empty", "head-only", "half", "tail-cut"])
def bin_folder(tmp_path, request):
    """A folder with a truncated `pytorch_model.bin`, as a released .bin checkpoint cut off by a failed download
    (torch raises EOFError, RuntimeError from PytorchStreamReader or OSError, depending on where the cut is)."""
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save({"a.weight": torch.ones(64, 64), "b.weight": torch.zeros(64)}, folder / "pytorch_model.bin")
    data = (folder / "pytorch_model.bin").read_bytes()
    cut = int(len(data) * request.param) if isinstance(request.param, float) else request.param % len(data)
    (folder / "pytorch_model.bin").write_bytes(data[:cut])
    return folder


def _one_line(err: pytest.ExceptionInfo, starts: str) -> None:
    assert str(err.value).startswith(starts) and "\n" not in str(err.value), str(err.value)


def test_a_truncated_bin_file_is_a_value_error_naming_it(bin_folder):
    path = bin_folder / "pytorch_model.bin"
    for read in (lambda: read_weights(path), lambda: read_model_weights(bin_folder)):
        with pytest.raises(ValueError) as err:
            read()
        _one_line(err, f"{path} is not a readable PyTorch weights file")


@pytest.mark.parametrize(
    ("text", "message"),
    [("{oops", "is not valid JSON"), ('{"metadata": {}}', "has no weight_map"), ("[1]", "has no weight_map")],
    ids=["not-json", "no-weight-map", "a-list"],
)
def test_a_broken_index_is_a_value_error_naming_it(tmp_path, text, message):
    index = tmp_path / "pytorch_model.bin.index.json"
    index.write_text(text)
    with pytest.raises(ValueError) as err:
        read_model_weights(tmp_path)
    _one_line(err, f"{index} {message}")


def test_to_hf_refuses_a_truncated_bin_checkpoint_in_one_line(tiny_ckpt, tmp_path, capsys):
    """The released ShareGPT4V checkpoints are .bin shards: a truncated one used to end to_hf with a traceback."""
    src = tmp_path / "bin-ckpt"
    shutil.copytree(tiny_ckpt, src)
    torch.save(load_file(src / "model.safetensors"), src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    data = (src / "pytorch_model.bin").read_bytes()
    (src / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    assert to_hf.main([str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {src / 'pytorch_model.bin'} is not a readable PyTorch weights file"), err
    assert "\n" not in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)], ids=["022", "077"])
def test_save_file_gives_the_mode_of_a_plain_write(tmp_path, mask, mode):
    """Not safetensors' owner-only 0o600 (safetensors/safetensors#782): other users read the weights."""
    with umask(mask):
        save_file({"a": torch.ones(2)}, tmp_path / "w.safetensors", metadata={"format": "pt"})
    weights = tmp_path / "w.safetensors"
    assert file_mode(weights) == mode and torch.equal(read_weights(weights)["a"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_the_package_writes_safetensors_only_through_weights_io():
    """A direct `safetensors.torch.save_file` (or `save_model`) would write an owner-only file again."""
    direct = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() == "model/weights_io.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("safetensors"):
                direct += [f"{path.relative_to(PACKAGE)}: {a.name}" for a in node.names if a.name.startswith("save")]
    assert direct == []
