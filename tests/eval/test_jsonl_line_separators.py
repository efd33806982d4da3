"""JSON lines written with ensure_ascii=False keep U+2028, U+2029 and U+0085 raw inside strings; they are not line
ends in JSON lines, so every reader splits on "\\n" only (str.splitlines would cut such an answer in two)."""

import json

from share4v.appended_jsonl import read_appended_jsonl, values_in_jsonl
from share4v.eval.jsonl import read_jsonl
from share4v.serve.captioner import list_images

ODD = "first\u2028second\u2029third\x85fourth"


def test_answers_with_unicode_line_separators_read_back_whole(tmp_path):
    path = tmp_path / "answers.jsonl"
    rows = [{"question_id": 1, "text": ODD}, {"question_id": 2, "text": "plain"}]
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    assert ODD in path.read_text(encoding="utf-8")  # raw, not escaped
    assert read_jsonl(path) == rows
    assert read_appended_jsonl(path) == rows
    assert values_in_jsonl(path, "text") == {ODD, "plain"}
    images = tmp_path / "images.jsonl"
    images.write_text(json.dumps({"image": f"a{ODD}.png"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert list_images(images) == [f"a{ODD}.png"]
