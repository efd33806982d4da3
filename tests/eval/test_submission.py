"""Answer files → the official submission/eval formats, through the original script names."""

import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from share4v.eval import submission
from tests.helpers import umask

ROOT = Path(__file__).resolve().parents[2]


def write_lines(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_gqa_mmvet_and_vizwiz_formats(tmp_path):
    answers = write_lines(tmp_path / "merge.jsonl", [
        {"question_id": "201", "text": "Yes."}, {"question_id": "202", "text": "The Red ball"},
    ])  # fmt: skip
    assert submission.gqa_predictions(answers) == [
        {"questionId": "201", "prediction": "yes"}, {"questionId": "202", "prediction": "the red ball"},
    ]  # fmt: skip
    assert submission.mmvet_predictions(answers) == {"v1_201": "Yes.", "v1_202": "The Red ball"}
    questions = write_lines(tmp_path / "test.jsonl", [
        {"question_id": "201", "image": "VizWiz_test_1.jpg"}, {"question_id": "202", "image": "VizWiz_test_2.jpg"},
        {"question_id": "203", "image": "VizWiz_test_3.jpg"},
    ])  # fmt: skip
    assert submission.vizwiz_predictions(questions, answers) == [
        {"image": "VizWiz_test_1.jpg", "answer": "yes"}, {"image": "VizWiz_test_2.jpg", "answer": "red ball"},
        {"image": "VizWiz_test_3.jpg", "answer": ""},  # unanswered questions stay in the upload
    ]  # fmt: skip


def test_scripts_write_atomically_and_fail_in_one_line(tmp_path):
    answers = write_lines(tmp_path / "merge.jsonl", [{"question_id": 7, "text": "two."}])
    script = ROOT / "scripts" / "convert_gqa_for_eval.py"
    command = [sys.executable, str(script), "--src", str(answers), "--dst", str(tmp_path / "out" / "p.json")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "out" / "p.json").read_text()) == [{"questionId": 7, "prediction": "two"}]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["p.json"]  # no temporary file left
    script = ROOT / "scripts" / "convert_mmvet_for_eval.py"
    command = [sys.executable, str(script), "--src", str(tmp_path / "none.jsonl"), "--dst", str(tmp_path / "r.json")]
    bad = subprocess.run(command, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.strip() == f"error: no such file: {tmp_path / 'none.jsonl'}"


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)], ids=["022", "077"])
def test_outputs_get_the_mode_of_a_plain_write(tmp_path, mask, mode):
    """Not tempfile's owner-only 0o600: a teammate or a serving process reads the submission file."""
    with umask(mask):
        written = submission.write_json({"v1_1": "a"}, tmp_path / "out" / "p.json")
    assert stat.S_IMODE(written.stat().st_mode) == mode and json.loads(written.read_text()) == {"v1_1": "a"}
    assert [p.name for p in written.parent.iterdir()] == ["p.json"]
