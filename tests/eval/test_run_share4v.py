"""eval_model(args) with the original argument object, and its CLI."""

import base64
import importlib.util
import subprocess
import sys
from types import SimpleNamespace

import pytest

from share4v.eval.run_share4v import eval_model, main, split_image_files
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.mm_utils import ImageLoadError


def original_args(model_path, image_file, **overrides):
    """Exactly the fields of the original README example (no device flag: CPU is the fallback here)."""
    fields = dict(
        model_path=str(model_path),
        model_base=None,
        model_name="weights",
        query="What is in the picture?",
        conv_mode=None,
        image_file=str(image_file),
        sep=",",
        temperature=0,
        top_p=None,
        num_beams=1,
        max_new_tokens=16,
    )
    return SimpleNamespace(**{**fields, **overrides})


def test_eval_model_prints_and_returns(tiny_ckpt, tiny, examples_dir, capsys):
    answer = eval_model(original_args(tiny_ckpt, examples_dir / "sunset.png"))
    assert capsys.readouterr().out == answer + "\n"
    expected = Share4VEngine(*tiny).generate(
        [Chat.single("What is in the picture?", [examples_dir / "sunset.png"])],
        GenerationParams(temperature=0, max_new_tokens=16),
    )[0]
    assert answer == expected


def test_eval_model_splits_several_images(tiny_ckpt, tiny, examples_dir):
    files = f"{examples_dir / 'sunset.png'};{examples_dir / 'chart.png'}"
    answer = eval_model(original_args(tiny_ckpt, files, sep=";", query="Compare them."))
    images = [examples_dir / "sunset.png", examples_dir / "chart.png"]
    expected = Share4VEngine(*tiny).generate(
        [Chat.single("Compare them.", images)], GenerationParams(temperature=0, max_new_tokens=16)
    )[0]
    assert answer == expected


def test_bad_image_fails_before_loading(tmp_path):
    with pytest.raises(ImageLoadError, match="image file not found"):
        eval_model(original_args(tmp_path / "no-model-here", tmp_path / "missing.png"))


def test_cli_reports_errors_in_one_line(tiny_ckpt, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--model-path", str(tiny_ckpt), "--image-file", str(tmp_path / "x.png"), "--query", "hi"])
    assert str(info.value).startswith("error: image file not found:") and "\n" not in str(info.value)
    with pytest.raises(SystemExit, match="unknown conversation template 'mpt'"):
        main(["--model-path", str(tiny_ckpt), "--query", "hi", "--conv-mode", "mpt"])


def test_cli_runs_as_a_module(tiny_ckpt, examples_dir):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "share4v.eval.run_share4v",
            "--model-path",
            str(tiny_ckpt),
            "--image-file",
            str(examples_dir / "shapes.png"),
            "--query",
            "What shapes?",
            "--temperature",
            "0",
            "--max_new_tokens",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    help_text = subprocess.run(
        [sys.executable, "-m", "share4v.eval.run_share4v", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for flag in ("--model-path", "--image-file", "--query", "--sep", "--temperature", "--vision-tower"):
        assert flag in help_text


def test_split_image_files_keeps_data_uris_whole():
    uri = "data:image/png;base64,iVBORw0KGgo="
    assert split_image_files(f"a.png, {uri},b.jpg", ",") == ["a.png", uri, "b.jpg"]
    assert split_image_files(uri, ",") == [uri]
    assert split_image_files("a.png;b.png", ";") == ["a.png", "b.png"]
    assert split_image_files(None, ",") == []


def test_cli_accepts_a_data_uri(tiny_ckpt, examples_dir, capsys):
    uri = "data:image/png;base64," + base64.b64encode((examples_dir / "chart.png").read_bytes()).decode()
    main(["--model-path", str(tiny_ckpt), "--image-file", uri, "--query", "hi", "--max_new_tokens", "4"])
    assert capsys.readouterr().out.strip()


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_cli_missing_bitsandbytes_is_one_line(tiny_ckpt):
    with pytest.raises(SystemExit, match=r"^error: load_8bit/load_4bit need bitsandbytes"):
        main(["--model-path", str(tiny_ckpt), "--query", "hi", "--load-8bit", "--device", "cpu"])
