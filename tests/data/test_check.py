"""The data checker names every bad row and exits non-zero; training over the same file skips and reports them."""

import json
import re
import shutil

import pytest

from share4v.data.check import check_data, main
from share4v.train.train import train


@pytest.fixture(scope="module")
def broken(world, tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    shutil.copytree(world["instruct"].parent / "images", folder / "images")
    rows = json.loads(world["instruct"].read_text())[:10]
    (folder / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    rows[1]["image"] = "images/corrupt.png"
    rows[2]["image"] = "images/missing.png"
    rows[3]["conversations"] = "not a list"
    rows[4]["conversations"][0]["value"] += " word" * 300  # every answer lies past model_max_length 256
    rows[5]["conversations"][1]["value"] += " more" * 40  # cut inside its last answer: truncated, still trainable
    path = folder / "data.json"
    path.write_text(json.dumps(rows))
    return path


def test_checker_names_each_problem_and_fails(broken, tiny_ckpt, tmp_path, capsys):
    report = tmp_path / "problems.jsonl"
    code = main([
        str(broken), "--image-folder", str(broken.parent), "--model-path", str(tiny_ckpt), "--version", "v1",
        "--model-max-length", "256", "--report", str(report), "--workers", "2",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert "token lengths (text + 16 per image)" in out  # image tokens read from the checkpoint's tower
    findings = {e["id"]: e for e in map(json.loads, report.read_text().splitlines())}
    assert {k: v["kind"] for k, v in findings.items()} == {
        "instruct-1": "unreadable_image", "instruct-2": "missing_image", "instruct-3": "malformed",
        "instruct-4": "fully_masked", "instruct-5": "truncated",
    }  # fmt: skip
    for sample in ("instruct-1", "instruct-2", "instruct-3", "instruct-4"):
        assert f"(id {sample})" in out
    assert "4 rows would be skipped by training" in out


def test_checker_without_tokenizer_and_a_clean_file(world, capsys):
    assert main([str(world["instruct"]), "--image-folder", str(world["instruct"].parent), "--no-decode"]) == 0
    assert "no errors" in capsys.readouterr().out
    assert main([str(world["instruct"].parent / "nope.json")]) == 2


def test_training_over_the_same_file_finishes_and_reports(broken, tiny_ckpt, tmp_path):
    out = tmp_path / "run"
    out.mkdir()  # an earlier run into the same folder left its list: this run's starts afresh
    (out / "skipped_samples.jsonl").write_text('{"where": "old.json[0]", "id": "old", "reason": "gone"}\n')
    trainer = train(argv=[
        "--model_name_or_path", str(tiny_ckpt), "--version", "v1", "--data_path", str(broken),
        "--image_folder", str(broken.parent), "--use_cpu", "True", "--max_steps", "6", "--save_strategy", "no",
        "--per_device_train_batch_size", "3", "--model_max_length", "256", "--mm_projector_type", "mlp2x_gelu",
        "--mm_vision_select_layer", "-2", "--mm_use_im_patch_token", "False", "--report_to", "none",
        "--output_dir", str(out),
    ])  # fmt: skip
    assert trainer.state.global_step == 6 and (out / "model.safetensors").is_file()
    skipped = {e["id"] for e in map(json.loads, (out / "skipped_samples.jsonl").read_text().splitlines())}
    assert skipped == {"instruct-1", "instruct-2", "instruct-3", "instruct-4"}


@pytest.fixture(scope="module")
def marker_mismatches(world, tmp_path_factory):
    """Two rows whose <image> markers do not match their images: one without any image, one with too many markers."""
    folder = tmp_path_factory.mktemp("markers")
    shutil.copytree(world["instruct"].parent / "images", folder / "images")
    rows = json.loads(world["instruct"].read_text())[:10]
    text_row = next(index for index, row in enumerate(rows) if "image" not in row)
    rows[text_row]["conversations"][0]["value"] = "<image>\n" + rows[text_row]["conversations"][0]["value"]
    rows[0]["conversations"][0]["value"] += " <image>"  # two markers, one image
    path = folder / "data.json"
    path.write_text(json.dumps(rows))
    return path, rows[text_row]["id"]


def test_checker_reports_marker_mismatches_with_a_tokenizer(marker_mismatches, tiny_ckpt, tmp_path):
    path, text_id = marker_mismatches
    report = tmp_path / "problems.jsonl"
    argv = [str(path), "--image-folder", str(path.parent), "--model-path", str(tiny_ckpt), "--report", str(report)]
    assert main(argv) == 1
    found = {e["id"]: (e["kind"], e["reason"]) for e in map(json.loads, report.read_text().splitlines())}
    assert found == {
        "instruct-0": ("markers", "2 <image> markers in the text but 1 images"),
        text_id: ("markers", "1 <image> markers in the text but no 'image' in the row"),
    }


def test_checker_finds_marker_mismatches_without_a_tokenizer(marker_mismatches, tmp_path, capsys):
    path, text_id = marker_mismatches
    report = tmp_path / "problems.jsonl"
    assert main([str(path), "--image-folder", str(path.parent), "--no-decode", "--report", str(report)]) == 1
    found = {e["id"]: e["kind"] for e in map(json.loads, report.read_text().splitlines())}
    assert found == {"instruct-0": "markers", text_id: "markers"}
    assert "2 rows would be skipped by training" in capsys.readouterr().out


def test_checker_for_a_text_only_model_reports_the_image_rows_training_refuses(world, tmp_path, capsys):
    """Training without --vision_tower refuses a file with image rows (check_no_image_rows); --text-only says so."""
    data, folder = world["instruct"], str(world["instruct"].parent)
    rows = json.loads(data.read_text())
    image_ids = {row["id"] for row in rows if "image" in row}
    assert image_ids and len(image_ids) < len(rows)
    report = tmp_path / "problems.jsonl"
    llm = str(world["llm"])
    assert main([str(data), "--image-folder", folder, "--model-path", llm, "--text-only", "--report", str(report)]) == 1
    out = capsys.readouterr().out
    found = {e["id"]: e["kind"] for e in map(json.loads, report.read_text().splitlines())}
    assert found == dict.fromkeys(image_ids, "images_without_tower")
    assert f"training without a vision tower refuses this file at start-up ({len(image_ids)} rows" in out
    assert "would be skipped" not in out  # training skips none of them: it refuses the file
    assert re.search(rf"\n  images for a text-only model +{len(image_ids)}  first: ", out)
    rows[0]["conversations"] = "not a list"  # a row training would skip, besides the image rows it refuses
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps(rows))
    assert main([str(mixed), "--model-path", llm, "--text-only"]) == 1
    out = capsys.readouterr().out
    assert "\n1 rows would be skipped by training\n" in out and "refuses this file at start-up" in out
    assert main([str(data), "--image-folder", folder, "--no-decode"]) == 0  # with a tower, no text-only line
    assert "images for a text-only model" not in capsys.readouterr().out
    text_rows = tmp_path / "text.json"
    text_rows.write_text(json.dumps([row for row in rows if "image" not in row]))
    assert main([str(text_rows), "--model-path", str(world["llm"]), "--text-only"]) == 0
    assert "no errors" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # a tower and no tower at once
        main([str(data), "--text-only", "--vision-tower", str(world["tower"])])


@pytest.mark.parametrize(
    ("name", "text"), [("data.json", "[]"), ("data.jsonl", ""), ("data.jsonl", "\n\n")], ids=["list", "empty", "blank"]
)
def test_checker_refuses_a_file_without_rows_in_one_line(tmp_path, capsys, name, text):
    """Training refuses a file without samples ("no usable training samples"); the checker used to say "no errors",
    then exited 1 (as for bad rows) with its error on stdout: it is an input error, exit 2 and one line on stderr."""
    path = tmp_path / name
    path.write_text(text)
    assert main([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"error: {path} holds no rows: training refuses a file without samples"
    assert captured.out == ""


def test_checker_stops_at_a_wrong_image_folder_as_training_does(world, tmp_path, capsys):
    """Training refuses to start when no sampled image is under --image_folder; the checker used to list every
    image row as missing and say they "would be skipped by training"."""
    data = str(world["instruct"])
    for folder in (str(world["tower"]), str(tmp_path / "nowhere")):
        assert main([data, "--image-folder", folder, "--no-decode"]) == 2
        captured = capsys.readouterr()
        last = captured.err.strip().splitlines()[-1]  # after the progress bars
        assert last.startswith("error: ") and folder in last and "\n" not in captured.err.strip().split("error: ")[1]
        assert f"--image-folder {folder}" in last and "--image_folder" not in last  # the checker's flag, not training's
        assert "would be skipped" not in captured.out
    assert main([data, "--image-folder", str(tmp_path / "nowhere"), "--text-only"]) == 1  # images never looked for


def test_checker_inputs_that_cannot_be_read_fail_in_one_line_naming_them(world, tiny_ckpt, tmp_path, capsys):
    """A folder without a tokenizer, a missing --model-path, a --vision-tower that is not a tower and a corrupt
    config.json: exit 2 and one line naming them (there were multi-line messages, a KeyError traceback and JSON
    errors naming no file)."""
    data = [str(world["instruct"]), "--image-folder", str(world["instruct"].parent), "--no-decode"]
    no_tokenizer = tmp_path / "no-tokenizer"
    no_tokenizer.mkdir()
    shutil.copy(tiny_ckpt / "config.json", no_tokenizer)
    bad_tower = tmp_path / "bad-tower"
    shutil.copytree(tiny_ckpt / "vision_tower", bad_tower)
    (bad_tower / "config.json").write_text("{oops")
    cases = [
        (["--model-path", str(no_tokenizer)], f"error: --model-path {no_tokenizer}: cannot load the tokenizer"),
        (["--model-path", str(tmp_path / "nope")], f"error: --model-path {tmp_path / 'nope'} (not a folder here)"),
        (["--vision-tower", str(world["llm"])], f"error: {world['llm'] / 'config.json'} has no image_size"),
        (["--vision-tower", str(bad_tower)], f"error: {bad_tower / 'config.json'} is not valid JSON"),
    ]
    for extra, expected in cases:
        assert main([*data, *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        message = err[err.index("error: ") :]
        assert message.startswith(expected) and "\n" not in message, message


def test_checker_refuses_a_report_it_cannot_write_before_checking(world, tmp_path, capsys, monkeypatch):
    """A --report in a missing folder used to end a (possibly hours-long) check with a traceback and exit 1."""
    data = [str(world["instruct"]), "--image-folder", str(world["instruct"].parent), "--no-decode"]
    checked = []
    monkeypatch.setattr("share4v.data.check.check_data", lambda *a, **k: checked.append(1))
    missing = tmp_path / "nodir" / "problems.jsonl"
    assert main([*data, "--report", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --report {missing}: the folder {missing.parent} does not exist"
    assert not checked
    monkeypatch.setattr("share4v.data.check.check_data", check_data)
    (tmp_path / "a-folder").mkdir()  # the write itself fails: one line, exit 2, no staging file left
    assert main([*data, "--report", str(tmp_path / "a-folder")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: cannot write --report {tmp_path}")
    assert not any(path.name.endswith(".tmp") for path in tmp_path.iterdir())
