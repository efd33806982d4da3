"""Decoding settings are validated the same way everywhere: API, CLI flags, before any model is loaded."""

import math
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from share4v.inference.cli_args import generation_params
from share4v.inference.engine import GenerationParams


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be an integer >= 1, not 0"),
        ({"num_beams": 0}, "num_beams must be an integer >= 1, not 0"),
        ({"temperature": math.nan}, "temperature must be a finite number"),
        ({"temperature": math.inf}, "temperature must be a finite number"),
        ({"temperature": -0.5}, "temperature must be >= 0"),
        ({"top_p": 0.0}, "top_p must be in"),
        ({"top_p": math.nan}, "top_p must be in"),
    ],
)
def test_bad_settings_are_rejected_by_the_api_and_the_flag_reader(settings, message):
    with pytest.raises(ValueError, match=message):
        GenerationParams(**settings)
    args = SimpleNamespace(**{"temperature": 0.2, "top_p": None, "num_beams": 1, "max_new_tokens": 64, **settings})
    with pytest.raises(ValueError, match=message):
        generation_params(args)


def test_missing_flags_default_and_tiny_temperatures_are_greedy():
    params = generation_params(SimpleNamespace(temperature=None, top_p=None, num_beams=None, max_new_tokens=None))
    assert params == GenerationParams()
    assert not GenerationParams(temperature=1e-30).sampling and GenerationParams(temperature=0.01).sampling


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max_new_tokens", "0"], "max_new_tokens must be an integer >= 1"),
        (["--num_beams", "0"], "num_beams must be an integer >= 1"),
        (["--temperature", "nan"], "temperature must be a finite number"),
        (["--device", "bogus"], "unknown device 'bogus'"),
    ],
)
def test_cli_answers_bad_settings_with_one_line(tiny_ckpt, flags, message):
    result = subprocess.run(
        [sys.executable, "-m", "share4v.eval.run_share4v", "--model-path", str(tiny_ckpt), "--query", "hi", *flags],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("error:") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_every_generation_default_is_shown_in_help():
    """Issue 8: each front end's --help shows the defaults of temperature, top_p, num_beams and max_new_tokens."""
    from share4v.eval import model_vqa_loader, run_share4v

    for build_parser, max_new_tokens in ((run_share4v.build_parser, 1024), (model_vqa_loader.build_parser, 128)):
        text = " ".join(build_parser().format_help().split())
        for flag, default in (("--temperature", "0.2"), ("--top-p", "None"), ("--num-beams", "1"),
                              ("--max-new-tokens", str(max_new_tokens))):  # fmt: skip
            assert re.search(rf"{flag} \S+ [^-]*\(default: {default}\)", text), (flag, text)


def test_stop_takes_a_string_or_a_list_of_them():
    assert GenerationParams(stop="###").stop == ("###",)
    assert GenerationParams(stop=["a", "b"]) == GenerationParams(stop=("a", "b"))  # equal settings batch together
    for bad in ([""], [3], 5):
        with pytest.raises(ValueError, match="stop must be a string or a list of non-empty strings"):
            GenerationParams(stop=bad)
