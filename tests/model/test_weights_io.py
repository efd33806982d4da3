"""Weight files that cannot be read (a truncated `.bin` shard, an index that is not JSON or has no weight_map) are
refused in one line naming the file, through `read_weights` / `read_model_weights` and the to_hf CLI (exit 2).
Written safetensors get the mode of a plain write (a new file the default, a file written over its own mode), and
the package writes them only through `weights_io.save_file` or inside `widened_new_safetensors`."""

import ast
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from safetensors.torch import save_file as owner_only_save_file

from share4v.convert import to_hf
from share4v.model import weights_io
from share4v.model.weights_io import read_model_weights, read_weights, save_file, widened_new_safetensors
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


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664], ids=oct)
def test_save_file_over_an_existing_file_keeps_its_mode(tmp_path, mode):
    """As a plain `open(path, "w")` over an existing file: a file the user restricted stays restricted (and one
    they opened stays open), under any umask."""
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"old")
    weights.chmod(mode)
    with umask(0o022):
        save_file({"a": torch.ones(2)}, weights)
    assert file_mode(weights) == mode and torch.equal(read_weights(weights)["a"], torch.ones(2))


def _save_pretrained_like(folder, names):
    """What transformers' / peft's save_pretrained do: safetensors' own save_file (owner-only, a new inode)."""
    for name in names:
        owner_only_save_file({"a": torch.ones(1)}, folder / name)


def test_widened_new_safetensors_touches_only_what_the_save_wrote(tmp_path, caplog):
    """A file the save creates gets the default mode; one it replaces keeps the mode it had (0o600 stays 0o600);
    files it did not write, symlinks (and their targets) are left as they are."""
    folder, outside = tmp_path / "ckpt", tmp_path / "elsewhere.safetensors"
    folder.mkdir()
    for name, mode in [("replaced.safetensors", 0o600), ("opened.safetensors", 0o664), ("stale.safetensors", 0o600)]:
        (folder / name).write_bytes(b"x")
        (folder / name).chmod(mode)
    outside.write_bytes(b"x")
    outside.chmod(0o600)
    (folder / "link.safetensors").symlink_to(outside)
    with umask(0o022), widened_new_safetensors(folder):
        _save_pretrained_like(folder, ["new.safetensors", "replaced.safetensors", "opened.safetensors"])
        (tmp_path / "new-link-target").write_bytes(b"x")
        (tmp_path / "new-link-target").chmod(0o600)
        (folder / "new-link.safetensors").symlink_to(tmp_path / "new-link-target")
    assert {p.name: file_mode(p) for p in folder.iterdir() if not p.is_symlink()} == {
        "new.safetensors": 0o644,
        "replaced.safetensors": 0o600,
        "opened.safetensors": 0o664,
        "stale.safetensors": 0o600,
    }
    assert file_mode(outside) == 0o600 and file_mode(tmp_path / "new-link-target") == 0o600
    assert caplog.records == []


def test_widened_new_safetensors_never_raises_for_a_mode_it_cannot_set(tmp_path, monkeypatch, caplog):
    """A file that appeared meanwhile may be another user's: its mode is not ours to set, so one warning, no error.
    `enabled=False` (a rank that does not write) does nothing; a folder the save creates is fine."""

    def refuse(path):
        raise PermissionError(1, "Operation not permitted", str(path))

    monkeypatch.setattr(weights_io, "widen_to_default_mode", refuse)
    with caplog.at_level(logging.WARNING, "share4v.model.weights_io"), widened_new_safetensors(tmp_path / "new"):
        (tmp_path / "new").mkdir()
        _save_pretrained_like(tmp_path / "new", ["theirs.safetensors"])
    assert "cannot give" in caplog.text and "theirs.safetensors" in caplog.text
    monkeypatch.undo()
    with widened_new_safetensors(tmp_path / "new", enabled=False):
        _save_pretrained_like(tmp_path / "new", ["other_rank.safetensors"])
    assert file_mode(tmp_path / "new" / "other_rank.safetensors") == 0o600


def test_widened_new_safetensors_gives_the_modes_when_the_save_raises(tmp_path, monkeypatch, caplog):
    """A save that fails halfway (a full disk after one shard, an interrupt): its exception propagates unchanged,
    the shard it wrote gets the default mode and a file it replaced gets back its own mode. An error while giving
    them is logged, never raised in the save's place."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "replaced.safetensors").write_bytes(b"x")
    (folder / "replaced.safetensors").chmod(0o640)
    disk_full = OSError(28, "No space left on device")
    with umask(0o022), pytest.raises(OSError) as err, widened_new_safetensors(folder):
        _save_pretrained_like(folder, ["model-00001-of-00002.safetensors"])
        raise disk_full
    assert err.value is disk_full and file_mode(folder / "model-00001-of-00002.safetensors") == 0o644
    with umask(0o022), pytest.raises(KeyboardInterrupt), widened_new_safetensors(folder):
        _save_pretrained_like(folder, ["replaced.safetensors"])
        raise KeyboardInterrupt
    assert file_mode(folder / "replaced.safetensors") == 0o640

    def broken(path):
        raise RuntimeError("not an OSError")

    monkeypatch.setattr(weights_io, "widen_to_default_mode", broken)
    with caplog.at_level(logging.ERROR, "share4v.model.weights_io"), pytest.raises(OSError) as err:
        with widened_new_safetensors(folder):
            _save_pretrained_like(folder, ["new.safetensors"])
            raise disk_full
    assert err.value is disk_full and "not an OSError" in caplog.text


def test_save_file_gives_the_mode_when_the_write_raises(tmp_path, monkeypatch):
    """An interrupt just after safetensors renamed its finished file into place: the file stays, with the default
    mode; a write that fails before (a full disk) leaves no file. Either way the error propagates unchanged."""
    interrupt, disk_full = KeyboardInterrupt(), OSError(28, "No space left on device")

    def written_then(error):
        def write(tensors, filename, metadata=None):
            if error is interrupt:
                owner_only_save_file(tensors, filename, metadata=metadata)
            raise error

        return write

    for error, name in [(interrupt, "w.safetensors"), (disk_full, "none.safetensors")]:
        monkeypatch.setattr(weights_io, "_safetensors_save_file", written_then(error))
        with umask(0o022), pytest.raises(type(error)) as err:
            save_file({"a": torch.ones(2)}, tmp_path / name)
        assert err.value is error
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"] and file_mode(tmp_path / "w.safetensors") == 0o644


def _outside_weights_io():
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() != "model/weights_io.py":
            yield path.relative_to(PACKAGE).as_posix(), ast.parse(path.read_text())


_FRAMEWORKS = {"torch", "numpy", "flax", "tensorflow", "paddle", "mlx"}  # safetensors.<framework>.save_file


def _direct_safetensors_writers(name, tree):
    """Imports that could write a safetensors file past weights_io: a `save*` name, a framework module
    (`from safetensors import torch`), or the module itself (`import safetensors.torch as st`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "safetensors":
            found += [f"{name}: {a.name}" for a in node.names if a.name.startswith("save") or a.name in _FRAMEWORKS]
        elif isinstance(node, ast.Import):
            found += [f"{name}: import {a.name}" for a in node.names if a.name.split(".")[0] == "safetensors"]
    return found


def test_the_package_writes_safetensors_only_through_weights_io():
    """A direct `safetensors.torch.save_file` (or `save_model`) would write an owner-only file again."""
    assert [hit for name, tree in _outside_weights_io() for hit in _direct_safetensors_writers(name, tree)] == []
    planted = [
        "from safetensors.torch import save_file",
        "from safetensors.torch import save_model as write",
        "from safetensors import torch as st",
        "import safetensors.torch as st",
        "import safetensors",
    ]
    assert all(_direct_safetensors_writers("planted", ast.parse(line)) for line in planted)
    assert _direct_safetensors_writers("fine", ast.parse("from safetensors import SafetensorError, safe_open")) == []


# Receivers whose save_pretrained writes no weights (tokenizers, configs, processors), and the share4v model's own
# calls (Share4VLlamaForCausalLM.save_pretrained widens its files itself).
_NO_WEIGHTS = ("tokenizer", "config", "processor", "processing_class")
_SHARE4V_MODEL = {("model/merge_lora.py", "merged"), ("train/saving.py", "base")}


def _unwidened_saves(name, tree):
    """`X.save_pretrained(...)` calls that may write safetensors outside a `with widened_new_safetensors(...)`."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.With) and any(
            isinstance(item.context_expr, ast.Call) and ast.unparse(item.context_expr.func) == "widened_new_safetensors"
            for item in node.items
        ):
            inside |= {id(n) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "save_pretrained":
            receiver = ast.unparse(node.func.value)
            if id(node) in inside or receiver.endswith(_NO_WEIGHTS) or (name, receiver) in _SHARE4V_MODEL:
                continue
            found.append(f"{name}:{node.lineno}: {receiver}.save_pretrained")
    return found


def test_every_save_pretrained_that_writes_weights_is_widened():
    """transformers' and peft's save_pretrained write safetensors owner-only: each call in the package runs inside
    `widened_new_safetensors`, writes no weights, or is the share4v model's (which widens itself)."""
    trees = dict(_outside_weights_io())
    assert [hit for name, tree in trees.items() for hit in _unwidened_saves(name, tree)] == []

    # the check sees a call taken out of its block: the miniature's LLM save, unwrapped
    class Unwrap(ast.NodeTransformer):
        def visit_With(self, node):
            return node.body if "model.save_pretrained" in ast.unparse(node) else node

    unwrapped = Unwrap().visit(ast.parse(ast.unparse(trees["data/miniature.py"])))
    assert [hit.split(": ")[-1] for hit in _unwidened_saves("data/miniature.py", unwrapped)] == [
        "model.save_pretrained"
    ]
