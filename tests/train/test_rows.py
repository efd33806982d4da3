"""Reading training files: JSON list or JSONL decided by the suffix or by whether the file parses, a UTF-8 byte-order
mark allowed, and every problem one line naming the file (and the line)."""

import codecs
import json
import tracemalloc

import pytest

from share4v.train.rows import read_rows

ROWS = [
    {"id": "a", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    {"id": "b", "conversations": [{"from": "human", "value": "Ça va ?"}, {"from": "gpt", "value": "Oui"}]},
]


def _ids(rows):
    return [row["id"] for _, row in rows]


def test_a_pretty_printed_object_is_one_error_not_a_skip_per_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text(json.dumps({"data": ROWS}, indent=2))
    with pytest.raises(ValueError, match=r"data.json: expected a JSON list of samples, found an object \(keys: data\)"):
        read_rows(path)


def test_a_byte_order_mark_is_allowed(tmp_path):
    listed = tmp_path / "data.json"
    listed.write_bytes(codecs.BOM_UTF8 + json.dumps(ROWS, indent=1).encode())
    rows, bad = read_rows(listed)
    assert _ids(rows) == ["a", "b"] and not bad and rows[0][0] == f"{listed}[0]"
    lines = tmp_path / "data.jsonl"
    lines.write_bytes(codecs.BOM_UTF8 + "".join(json.dumps(row) + "\n" for row in ROWS).encode())
    rows, bad = read_rows(lines)
    assert _ids(rows) == ["a", "b"] and not bad


def test_jsonl_under_a_json_name(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS) + "{broken\n")
    rows, bad = read_rows(path)
    assert _ids(rows) == ["a", "b"] and [b.where for b in bad] == [f"{path}:3"]
    path.write_text(json.dumps(ROWS[0]) + "\n")  # one row
    assert [where for where, _ in read_rows(path)[0]] == [f"{path}:1"]


def test_invalid_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(json.dumps(ROWS, indent=1, ensure_ascii=False).encode().replace("Ç".encode(), b"\xff"))
    with pytest.raises(ValueError, match=r"data.json: not valid UTF-8 \(line 20, byte \d+\)") as err:
        read_rows(path)
    assert "\n" not in str(err.value)
    lines = tmp_path / "data.jsonl"
    lines.write_bytes(
        b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in ROWS).replace(b"\xc3", b"\xff")
    )
    rows, bad = read_rows(lines)
    assert _ids(rows) == ["a"] and str(bad[0]).startswith(f"{lines}:2: not valid UTF-8")


def test_a_broken_json_list_is_one_error_with_its_place(tmp_path):
    path = tmp_path / "data.json"
    path.write_text('[\n  {"id": 1},\n  oops\n]')
    with pytest.raises(ValueError, match=r"data.json: not valid JSON \(line 3, column 3\)"):
        read_rows(path)


def test_a_json_list_is_parsed_from_one_copy_of_its_text(tmp_path):
    # the released files are over a gigabyte: their bytes go before the parse, which holds the text and what it
    # builds (here one long answer as big as the file), so the peak is about twice the file, not three times
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{"id": "a", "conversations": [{"from": "human", "value": "x" * 4_000_000}]}]))
    tracemalloc.start()
    try:
        rows, _ = read_rows(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert _ids(rows) == ["a"] and peak < 2.5 * path.stat().st_size


def test_a_large_file_is_announced_before_it_is_parsed(tmp_path, monkeypatch, caplog):
    import share4v.train.rows as rows_module

    path = tmp_path / "data.json"
    path.write_text(json.dumps(ROWS))
    with caplog.at_level("INFO", logger="share4v.train.rows"):
        read_rows(path)
        assert "reading" not in caplog.text  # a small file: parsed at once, nothing to announce
        monkeypatch.setattr(rows_module, "ANNOUNCED_FILE_BYTES", path.stat().st_size)
        assert _ids(read_rows(path)[0]) == ["a", "b"]
    assert f"reading {path} (0.00 GB)" in caplog.text
