"""The score card (share4v.eval.report) over score files the test writes: values in the paper's column order, "–" for
benchmarks not run, the paper's rows as published, bad files reported and skipped, a JSON round trip, provenance
that never crashes when a piece is missing, and the bar chart when matplotlib is importable."""

import json
import os
import subprocess
import sys
from importlib import metadata

import pytest

from share4v.eval import report
from share4v.eval.scores import BENCHMARKS, write_scores

# The paper's table as published (SPEC §9), typed here independently of the module: column names, 7B and 13B rows.
HEADER = ("| Model | LLaVA-Bench-Wild | MME-P | MME-C | MMBench | MMBench-CN | SEED-Image | MM-Vet | Q-Bench | SQA-IMG "
          "| VQAv2 | VizWiz | GQA | TextVQA | POPE |")  # fmt: skip
PAPER_7B = (
    "| ShareGPT4V-7B (paper) | 72.6 | 1567.4 | 376.4 | 68.8 | 62.2 | 69.7 | 37.6 | 63.4 | 68.4 | 80.6 | 57.2 "
    "| 63.3 | 60.4 | – |"
)
PAPER_13B = (
    "| ShareGPT4V-13B (paper) | 79.9 | 1618.7 | 303.2 | 68.5 | 63.7 | 70.8 | 43.1 | 65.2 | 71.2 | 81.0 "
    "| 55.6 | 64.8 | 62.2 | – |"
)


@pytest.fixture
def scores_root(tmp_path):
    """scores/<checkpoint>/<benchmark>.json as the scripts write them, one answer file carrying decoding settings."""
    root = tmp_path / "scores"
    answers = tmp_path / "merge.jsonl"
    answers.write_text(json.dumps({"question_id": 1, "text": "a", "model_id": "mine",
                                   "metadata": {"conv_mode": "vicuna_v1", "temperature": 0}}) + "\n")  # fmt: skip
    write_scores(root / "mine" / "textvqa.json", "textvqa", {"accuracy": 58.21, "total": 5000}, answers)
    write_scores(root / "mine" / "mme.json", "mme", {"perception": 1500.46, "cognition": 300.3})
    write_scores(root / "mine" / "mmbench_en.json", "mmbench_en", {"accuracy": 66.04})
    write_scores(root / "other" / "pope.json", "pope", {"f1": 85.87, "accuracy": 86.0})
    return root


def table_row(markdown: str, name: str) -> list[str]:
    [line] = [line for line in markdown.splitlines() if line.startswith(f"| {name} |")]
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def test_values_land_in_the_paper_s_columns_in_order_missing_as_dash(scores_root):
    card = report.build_report(report.find_score_files(scores_root))
    assert [column["key"] for column in card["columns"]] == list(BENCHMARKS)
    assert [row["checkpoint"] for row in card["rows"]] == ["mine", "other"]  # the folder names, sorted
    mine = card["rows"][0]["scores"]
    assert mine["textvqa"] == 58.21 and mine["mme_perception"] == 1500.46 and mine["mme_cognition"] == 300.3
    assert mine["mmbench_en"] == 66.04 and mine["pope"] is None and mine["gqa"] is None
    assert card["rows"][1]["scores"]["pope"] == 85.87  # the headline metric (f1), not accuracy

    markdown = report.render_markdown(card)
    lines = markdown.splitlines()
    assert HEADER in lines and PAPER_7B in lines and PAPER_13B in lines
    assert lines.index(HEADER) < lines.index(PAPER_7B) < lines.index(PAPER_13B)
    dash = "–"
    assert table_row(markdown, "mine") == [dash, "1500.5", "300.3", "66.0", *[dash] * 8, "58.2", dash]
    assert table_row(markdown, "other") == [dash] * 13 + ["85.9"]


def test_bad_score_files_are_reported_in_one_line_and_skipped(scores_root, tmp_path, capsys):
    (scores_root / "mine" / "broken.json").write_text("{not json")
    (scores_root / "mine" / "list.json").write_text("[1, 2]")
    (scores_root / "mine" / "unknown.json").write_text(json.dumps({"benchmark": "coco", "scores": {"x": 1}}))
    (scores_root / "mine" / "text.json").write_text(json.dumps({"benchmark": "gqa", "scores": {"accuracy": "high"}}))
    card = report.build_report(report.find_score_files(scores_root))
    reasons = {os.path.basename(item["file"]): item["reason"] for item in card["skipped"]}
    assert set(reasons) == {"broken.json", "list.json", "unknown.json", "text.json"}
    assert (
        "not a readable score file" in reasons["broken.json"] and "unknown benchmark 'coco'" in reasons["unknown.json"]
    )
    assert "scores.accuracy" in reasons["text.json"]
    assert all(reason.startswith(str(scores_root)) and "\n" not in reason for reason in reasons.values())
    assert card["rows"][0]["scores"]["textvqa"] == 58.21  # the good files still count

    assert report.main([str(scores_root), "--out", str(tmp_path / "card")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("skipped ") for line in err) == 4
    assert any(line.startswith(f"skipped {scores_root / 'mine' / 'broken.json'}: ") for line in err)


def test_json_round_trip_and_the_written_card(scores_root, tmp_path, capsys):
    assert report.main([str(scores_root), "--out", str(tmp_path / "card")]) == 0
    assert PAPER_7B in capsys.readouterr().out
    written = json.loads((tmp_path / "card" / "score_card.json").read_text())
    assert (tmp_path / "card" / "score_card.md").read_text() == report.render_markdown(written)
    assert written["rows"] == report.build_report(report.find_score_files(scores_root))["rows"]
    assert not list((tmp_path / "card").glob("*.tmp"))  # written atomically, nothing left behind
    # the card written into ANSWERS_ROOT itself is not collected as a score file on the next run
    assert report.main([str(scores_root)]) == 0 and report.main([str(scores_root)]) == 0
    assert "skipped" not in capsys.readouterr().err


def test_checkpoint_names_filter_and_duplicates(scores_root):
    write_scores(scores_root / "flat" / "gqa.json", "gqa", {"accuracy": 61.0})
    data = {"benchmark": "gqa", "scores": {"accuracy": 62.5}, "source": "", "checkpoint": "named"}
    (scores_root / "flat" / "named_gqa.json").write_text(json.dumps(data))
    card = report.build_report(report.find_score_files(scores_root), checkpoints=["named", "mine", "absent"])
    assert [row["checkpoint"] for row in card["rows"]] == ["named", "mine"]
    assert card["rows"][0]["scores"]["gqa"] == 62.5
    assert "no score file for checkpoint absent" in card["notes"]

    old, new = scores_root / "mine" / "textvqa_old.json", scores_root / "mine" / "textvqa.json"
    write_scores(old, "textvqa", {"accuracy": 1.0})
    os.utime(old, (1, 1))
    card = report.build_report(report.find_score_files(scores_root))
    assert {row["checkpoint"]: row for row in card["rows"]}["mine"]["scores"]["textvqa"] == 58.21
    assert any(str(new) in note and str(old) in note for note in card["notes"])


def test_provenance_from_files_and_a_missing_environment_never_crashes(scores_root, monkeypatch):
    card = report.build_report(report.find_score_files(scores_root))
    provenance = card["rows"][0]["provenance"]
    assert provenance["template"] == ["vicuna_v1"] and provenance["temperature"] == ["0"]
    assert provenance["model_id"] == ["mine"]
    env = card["environment"]
    assert set(env["versions"]) == {"share4v", "torch", "transformers"} and env["device"]

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(subprocess, "run", no_git)
    monkeypatch.setattr(metadata, "version", not_installed)
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    (scores_root / "mine" / "mme.json").write_text(json.dumps({"benchmark": "mme", "scores": {
        "perception": 1.0, "cognition": 2.0}, "source": "/no/such/answers.jsonl"}))  # fmt: skip
    card = report.build_report(report.find_score_files(scores_root))
    assert card["environment"]["git"] is None and card["environment"]["device"] is None
    assert card["environment"]["versions"] == {"share4v": None, "torch": None, "transformers": None}
    markdown = report.render_markdown(card)
    assert "share4v not installed" in markdown and "git commit: unknown" in markdown


def test_bar_chart_when_matplotlib_is_importable(scores_root, tmp_path):
    pytest.importorskip("matplotlib")
    paths = report.write_report(report.build_report(report.find_score_files(scores_root)), tmp_path / "card")
    assert paths["png"] == tmp_path / "card" / "score_card.png"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_matplotlib_the_png_is_skipped_with_a_note(scores_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    assert report.main([str(scores_root), "--out", str(tmp_path / "card")]) == 0
    assert not (tmp_path / "card" / "score_card.png").exists()
    [note] = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note:")]
    assert "matplotlib" in note


def test_no_score_files_still_gives_the_paper_rows(tmp_path):
    (tmp_path / "empty").mkdir()
    markdown = report.render_markdown(report.build_report(report.find_score_files(tmp_path / "empty")))
    assert PAPER_7B in markdown and "No score files were found." in markdown
    with pytest.raises(FileNotFoundError, match="no such folder"):
        report.find_score_files(tmp_path / "absent")


def test_the_project_s_own_benchmarks_get_a_column_where_a_score_file_has_one(scores_root, tmp_path):
    without = report.build_report(report.find_score_files(scores_root))
    assert [column["key"] for column in without["columns"]] == list(BENCHMARKS)  # no empty column of ours
    write_scores(scores_root / "seed0-detailed" / "miniature.json", "miniature", {"overall": 34.56, "color": 65.0})
    card = report.build_report(report.find_score_files(scores_root))
    assert [column["key"] for column in card["columns"]] == [*BENCHMARKS, "miniature"]
    markdown = report.render_markdown(card)
    assert table_row(markdown, "seed0-detailed") == ["–"] * len(BENCHMARKS) + ["34.6"]
    assert table_row(markdown, "ShareGPT4V-7B (paper)")[-1] == "–"

    # only the asked-for columns; the paper's rows, with nothing in them, left out
    only = report.build_report(report.find_score_files(scores_root), benchmarks=["miniature"])
    assert [column["key"] for column in only["columns"]] == ["miniature"] and only["paper"] == []
    assert [(row["checkpoint"], row["scores"]) for row in only["rows"]] == [("seed0-detailed", {"miniature": 34.56})]
    assert report.render_markdown(only).splitlines()[2:5] == [
        "| Model | Miniature |",
        "|---|---:|",
        "| seed0-detailed | 34.6 |",
    ]
    if report.plot_report(only, tmp_path / "one_panel.png"):  # drawn without an MME column
        assert (tmp_path / "one_panel.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a checkpoint asked for with none of the columns is named in a note; an empty card draws nothing
    mine_only = report.build_report(report.find_score_files(scores_root), ["mine"], benchmarks=["miniature"])
    assert mine_only["rows"] == [] and mine_only["notes"] == ["mine has no score in miniature"]
    assert "- mine has no score in miniature" in report.render_markdown(mine_only)
    assert report.plot_report(mine_only, tmp_path / "empty.png") is False and not (tmp_path / "empty.png").exists()
    with pytest.raises(ValueError, match="unknown benchmark.*coco"):
        report.build_report([], benchmarks=["coco"])
    with pytest.raises(ValueError, match="unknown benchmark 'coco'; expected one of .*miniature"):
        write_scores(tmp_path / "x.json", "coco", {"overall": 1.0})
