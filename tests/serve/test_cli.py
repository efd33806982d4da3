"""The interactive chat CLI, driven through its stdin/stdout."""

import io

import pytest

from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.serve.cli import COMMANDS, ChatSession, main


def test_chat_streams_answers_and_keeps_history(tiny_ckpt, tiny, examples_dir):
    stdin = io.StringIO(
        "What is this?\n\nAnd the colours?\n/help\n/what\n/reset\n/image nowhere.png\n/quit\nnever read\n"
    )
    stdout = io.StringIO()
    args = [
        "--model-path",
        str(tiny_ckpt),
        "--image-file",
        str(examples_dir / "sunset.png"),
        "--temperature",
        "0",
        "--max-new-tokens",
        "10",
    ]
    main(args, stdin=stdin, stdout=stdout)
    engine = Share4VEngine(*tiny)
    params = GenerationParams(temperature=0, max_new_tokens=10)
    image = [examples_dir / "sunset.png"]
    first = engine.generate([Chat(["What is this?"], image)], params)[0]
    second = engine.generate([Chat(["What is this?", first, "And the colours?"], image)], params)[0]
    assert stdout.getvalue() == (
        f"share4v chat with {tiny_ckpt.name}; {COMMANDS}\n"
        f"ASSISTANT: {first}\nASSISTANT: {second}\n{COMMANDS}\nunknown command /what; /help lists the commands\n"
        "(chat cleared)\nerror: image file not found: nowhere.png\n"
    )  # an empty line and /help reach no model; the banner names the model and the commands


def test_chat_rejects_a_bad_image(tiny_ckpt, tmp_path):
    with pytest.raises(SystemExit, match="error: image file not found"):
        main(["--model-path", str(tiny_ckpt), "--image-file", str(tmp_path / "gone.jpg")], stdin=io.StringIO(""))


def test_chat_refuses_beam_search_before_loading(tmp_path):
    with pytest.raises(SystemExit, match="needs --num_beams 1"):
        main(["--model-path", str(tmp_path / "nothing"), "--num_beams", "4"], stdin=io.StringIO(""))


def test_a_failing_turn_does_not_end_the_chat(tiny):
    engine = Share4VEngine(*tiny)
    engine.max_positions = 60  # room for a short first turn only
    out = io.StringIO()
    session = ChatSession(engine, GenerationParams(temperature=0, max_new_tokens=4), out)
    assert session.handle("hi")
    assert session.handle("a much longer message " * 10)  # over the context: reported, the chat goes on
    assert "error: the prompt takes" in out.getvalue()
    assert session.handle("/reset") and session.turns == []
