"""Repairing an append-only JSON-lines file after a kill: a torn last line is cut, a whole one gets its newline, and
only the file's end is read."""

import pytest

from share4v.appended_jsonl import _TAIL_BLOCK, cut_torn_line, values_in_jsonl

LONG = b'{"a": "' + b"x" * (3 * _TAIL_BLOCK) + b'"}'  # a last line longer than one block read from the end


@pytest.mark.parametrize(
    ("written", "kept"),
    [
        (b'{"a": 1}\n{"b": ', b'{"a": 1}\n'),
        (b'{"a": 1}\n{"b": 2}', b'{"a": 1}\n{"b": 2}\n'),
        (b'{"b": ', b""),
        (b'{"a": 1}\n', b'{"a": 1}\n'),
        (b'{"z": 0}\n' + LONG, b'{"z": 0}\n' + LONG + b"\n"),
        (b'{"z": 0}\n' + LONG[:-3], b'{"z": 0}\n'),
        (b'{"z": 0}\n' + '{"t": "答'.encode()[:-1], b'{"z": 0}\n'),  # torn inside a character
        (b'{"z": 0}\r\n{"q": ', b'{"z": 0}\r\n'),
    ],
)
def test_a_torn_last_line_is_cut_and_a_whole_one_ended(tmp_path, written, kept):
    path = tmp_path / "out.jsonl"
    path.write_bytes(written)
    cut_torn_line(path)
    assert path.read_bytes() == kept
    cut_torn_line(tmp_path / "absent.jsonl")  # nothing to repair
    assert not (tmp_path / "absent.jsonl").exists()


def test_values_survive_a_torn_character(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"image": "a.png"}\n' + '{"image": "答'.encode()[:-1] + b"\n" + b'{"image": "b.png"}\n')
    assert values_in_jsonl(path, "image") == {"a.png", "b.png"}
