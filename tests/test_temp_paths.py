"""Temporaries for atomic writes get the mode a plain write gives (0o666 / 0o777 less the umask), not tempfile's
owner-only 0o600 / 0o700, and tempfile's names; a name already taken is passed over."""

import re
import stat

import pytest

from share4v import temp_paths
from share4v.temp_paths import new_temp_file, new_temp_folder
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
