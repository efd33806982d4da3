"""Temporaries for atomic writes get the mode a plain write gives (0o666 / 0o777 less the umask), not tempfile's
owner-only 0o600 / 0o700, and tempfile's names; a name already taken is passed over. `widen_to_default_mode` only
adds the bits a plain write would have had."""

import re
import stat

import pytest

from share4v import temp_paths
from share4v.temp_paths import new_temp_file, new_temp_folder, widen_to_default_mode
from tests.helpers import umask

MODES = [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)]


@pytest.mark.parametrize(("mask", "file_mode", "folder_mode"), MODES, ids=["022", "077", "002"])
def test_modes_are_those_of_a_plain_write(tmp_path, mask, file_mode, folder_mode):
    with umask(mask):
        file, folder = new_temp_file(tmp_path), new_temp_folder(tmp_path)
        (tmp_path / "plain").write_text("")
        (tmp_path / "plain_folder").mkdir()
    assert stat.S_IMODE(file.stat().st_mode) == file_mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE(folder.stat().st_mode) == folder_mode
    assert folder_mode == stat.S_IMODE((tmp_path / "plain_folder").stat().st_mode)
    assert file.is_file() and file.stat().st_size == 0 and folder.is_dir() and not any(folder.iterdir())


def test_names_are_tempfiles(tmp_path):
    file = new_temp_file(tmp_path, prefix=".out.json.", suffix=".tmp")
    folder = new_temp_folder(tmp_path, prefix=".out.staging-host-12-")
    assert file.parent == tmp_path and re.fullmatch(r"\.out\.json\.[a-z0-9_]{8}\.tmp", file.name)
    assert folder.parent == tmp_path and re.fullmatch(r"\.out\.staging-host-12-[a-z0-9_]{8}", folder.name)
    assert re.fullmatch(r"tmp[a-z0-9_]{8}", new_temp_file(tmp_path).name)


def test_a_taken_name_is_passed_over(tmp_path, monkeypatch):
    names = iter(["taken000", "taken000", "free0000", "taken000", "free1111"])
    monkeypatch.setattr(temp_paths, "_random_name", lambda: next(names))
    (tmp_path / "ptaken000").write_text("mine")
    assert new_temp_file(tmp_path, prefix="p") == tmp_path / "pfree0000"
    assert new_temp_folder(tmp_path, prefix="p") == tmp_path / "pfree1111"
    assert (tmp_path / "ptaken000").read_text() == "mine"


def test_no_free_name_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(temp_paths, "_random_name", lambda: "same")
    new_temp_folder(tmp_path)
    with pytest.raises(FileExistsError, match="no free temporary name"):
        new_temp_folder(tmp_path)


@pytest.mark.parametrize(("mask", "file_mode"), [(m[0], m[1]) for m in MODES], ids=["022", "077", "002"])
def test_an_owner_only_file_is_widened_to_a_plain_writes_mode(tmp_path, mask, file_mode):
    """As safetensors >= 0.8 leaves its files (0o600): they get 0o644 under umask 0o022, stay 0o600 under 0o077."""
    owner_only = tmp_path / "w.safetensors"
    owner_only.write_bytes(b"x")
    owner_only.chmod(0o600)
    with umask(mask):
        widen_to_default_mode(owner_only)
    assert stat.S_IMODE(owner_only.stat().st_mode) == file_mode and owner_only.read_bytes() == b"x"
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # the probe is gone


@pytest.mark.parametrize("mode", [0o644, 0o666, 0o755], ids=oct)
def test_a_file_the_default_does_not_widen_is_left_alone(tmp_path, mode, monkeypatch):
    """A mode the user chose at least as open as the default (umask 0o022: 0o644) is not touched, not even
    rewritten to itself."""
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"x")
    path.chmod(mode)
    monkeypatch.setattr(temp_paths.os, "chmod", lambda *args: pytest.fail(f"chmod{args}"))
    with umask(0o022):
        widen_to_default_mode(path)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_only_bits_are_added(tmp_path):
    """A mode neither narrower nor wider than the default keeps its own bits and gains the default's."""
    path = tmp_path / "w"
    path.write_bytes(b"x")
    path.chmod(0o710)
    with umask(0o022):
        widen_to_default_mode(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o754
