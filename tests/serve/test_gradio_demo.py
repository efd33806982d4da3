"""The Gradio demo: its chat-state functions (no gradio needed), the app on 127.0.0.1 driven with gradio_client
(answers equal the engine's, streamed; bad uploads become chat messages), and a headless Chromium clicking through
the page. Browser tests skip when Playwright or /usr/bin/chromium is missing (CI installs both).

SHARE4V_SAVE_SCREENSHOT=1 makes the browser test also write docs/images/demo.png."""

import dataclasses
import importlib.util
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.serve.gradio_demo import (
    CURSOR,
    TEXT_LIMIT,
    TEXT_LIMIT_WITH_IMAGE,
    DemoState,
    UploadError,
    UploadLimits,
    add_text,
    chat_messages,
    example_rows,
    load_upload,
    regenerate,
    slider_params,
    stream_answer,
)
from tests.helpers import random_image

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CHROMIUM = "/usr/bin/chromium"
GREEDY = GenerationParams(temperature=0, top_p=0.7, max_new_tokens=64)
LIMITS = UploadLimits(max_bytes=200 * 1024, max_pixels=100_000)  # the examples (320x240) pass

pytestmark = pytest.mark.filterwarnings("ignore::Warning:gradio.queueing")  # pandas 3 deprecations inside gradio


@pytest.fixture(scope="module")
def engine(tiny):
    return Share4VEngine(*tiny)


@pytest.fixture
def sunset():
    return load_upload(str(EXAMPLES / "sunset.png"))[0]


# ---- (a) the chat-state functions ------------------------------------------------------------------------------


def test_add_text_cuts_text_as_the_original_and_a_new_image_starts_a_new_chat(sunset):
    long = "x" * 2000
    assert add_text(DemoState(), long).turns == ["x" * TEXT_LIMIT]
    with_image = add_text(DemoState(), long, sunset, "sunset.png")
    assert with_image.turns == ["x" * TEXT_LIMIT_WITH_IMAGE] and with_image.image is sunset
    assert with_image.awaiting_answer and with_image.chat().images == [sunset]

    chatting = DemoState(["first question", "first answer"], sunset, "sunset.png")
    follow_up = add_text(chatting, "a <image> marker typed by hand")
    assert follow_up.turns == ["first question", "first answer", "a  marker typed by hand"]
    assert follow_up.image is sunset
    assert chatting.turns == ["first question", "first answer"]  # the state given is left as it was

    other = random_image(1)
    restarted = add_text(chatting, "what about this one?", other, "other.png")
    assert restarted == DemoState(["what about this one?"], other, "other.png")
    assert add_text(chatting, "  ").turns == chatting.turns  # nothing to send
    assert add_text(DemoState(), "", sunset, "s.png").turns == [""]  # an image alone is a question
    busy = add_text(follow_up, "one more")
    assert busy.turns == follow_up.turns and "still being written" in busy.notice


def test_regenerate_drops_the_last_answer_only():
    state = DemoState(["q1", "a1", "q2", "a2"], notice="old notice")
    again = regenerate(state)
    assert again.turns == ["q1", "a1", "q2"] and again.awaiting_answer and again.notice is None
    assert state.turns == ["q1", "a1", "q2", "a2"]
    assert regenerate(again).turns == ["q1", "a1", "q2"]  # a question still waiting keeps its place
    assert regenerate(DemoState()).turns == []


def test_the_prompt_is_the_engines_template_with_the_image_first(engine, sunset):
    state = add_text(DemoState(["q1", "a1"], sunset, "s.png"), "q2")
    conversation = engine.conversation(state.chat())
    assert [text for _role, text in conversation.messages] == ["<image>\nq1", "a1", "q2", None]
    prompt = conversation.get_prompt()
    assert prompt.count("<image>") == 1 and prompt.index("<image>\nq1") < prompt.index("a1") < prompt.index("q2")
    assert prompt.endswith(f"{conversation.roles[1]}:")


def test_slider_values_become_engine_settings():
    assert slider_params(0, 0.7, 5000) == GenerationParams(temperature=0.0, top_p=0.7, max_new_tokens=1024)
    assert slider_params(0.2, 1.0, 64.0).max_new_tokens == 64
    with pytest.raises(ValueError, match="top_p"):
        slider_params(0.2, 0.0, 64)


def test_streamed_answer_is_the_engines_greedy_answer(engine, sunset):
    state = add_text(DemoState(), "What is in the picture?", sunset, "s.png")
    steps = list(stream_answer(engine, state, GREEDY))
    [expected] = engine.generate([Chat(["What is in the picture?"], [sunset])], GREEDY)
    partials = [partial for _state, partial in steps[:-1]]
    assert len(partials) > 1 and all(expected.startswith(partial) for partial in partials)
    final, partial = steps[-1]
    assert partial is None and final.turns == ["What is in the picture?", expected] and final.image is sunset
    assert list(stream_answer(engine, final, GREEDY)) == [(final, None)]  # nothing is waiting for an answer


def test_stop_keeps_what_was_written(engine, sunset):
    state = add_text(DemoState(), "Describe it.", sunset, "s.png")
    stop = threading.Event()
    steps = stream_answer(engine, state, dataclasses.replace(GREEDY, max_new_tokens=1024), stop)
    _state, first = next(steps)
    stop.set()
    [(final, partial)] = list(steps)  # the flag is checked as soon as a piece has been shown
    assert partial is None and final.turns == ["Describe it.", first]


class _FailingEngine:
    def stream(self, chat, params):
        yield "half an ans"
        raise RuntimeError("CUDA out of memory")


def test_a_failed_answer_withdraws_the_question_and_says_why():
    state = DemoState(["q1", "a1", "q2"])
    *_partials, (final, partial) = stream_answer(_FailingEngine(), state, GREEDY)
    assert partial is None and final.turns == ["q1", "a1"] and final.notice == "error: CUDA out of memory"


def test_chat_messages_show_image_turns_cursor_and_notice():
    state = DemoState(["", "a1", "q2"], random_image(2), "/tmp/up/s.png", notice="upload refused: x")
    messages = chat_messages(state, partial="writ")
    assert messages[0] == {"role": "user", "content": {"path": "/tmp/up/s.png"}}
    texts = [(m["role"], m["content"]["text"]) for m in messages[1:]]
    assert texts == [("assistant", "a1"), ("user", "q2"), ("assistant", "writ" + CURSOR),
                     ("assistant", "⚠️ upload refused: x")]  # fmt: skip
    assert chat_messages(DemoState()) == []


def test_uploads_are_checked_before_they_reach_the_chat(tmp_path):
    good = tmp_path / "good.png"
    random_image(3, (64, 48)).save(good)
    image, path = load_upload({"path": str(good), "orig_name": "mine.png"})
    assert image.size == (64, 48) and image.mode == "RGB" and path == str(good)
    assert load_upload(None) is None

    (tmp_path / "notes.png").write_text("not an image at all")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    random_image(4, (1000, 5)).save(tmp_path / "thin.png")
    cases = {
        "is not an image": ({"path": str(tmp_path / "notes.png"), "orig_name": "notes.png"}, UploadLimits()),
        "cut.png could not be read": (str(truncated), UploadLimits()),
        "over the limit of 1000": (str(good), UploadLimits(max_pixels=1000)),
        "over the upload limit of 100": (str(good), UploadLimits(max_bytes=100)),
        "longer than wide": (str(tmp_path / "thin.png"), UploadLimits()),
        "did not arrive": ({"path": str(tmp_path / "gone.png")}, UploadLimits()),
    }
    for message, (upload, limits) in cases.items():
        with pytest.raises(UploadError, match=message):
            load_upload(upload, limits)
    assert [Path(row[0]).name for row in example_rows(EXAMPLES)] == [
        "miniature_0.png",
        "miniature_1.png",
        "sunset.png",
        "shapes.png",
        "chart.png",
    ]


# ---- (b) the app, driven with gradio_client ------------------------------------------------------------------


def test_tools_app_reads_its_flags_and_launches_the_demo(tiny_ckpt, monkeypatch):
    pytest.importorskip("gradio")
    spec = importlib.util.spec_from_file_location("share4v_tools_app", ROOT / "tools" / "app.py")
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    args = app.parser().parse_args(["--model-path", "m"])
    assert (args.host, args.port, args.share, args.concurrency, args.load_4bit) == ("127.0.0.1", 7860, False, 1, False)
    launched, warmed = {}, []
    monkeypatch.setattr(app, "launch", lambda demo, *args, **kwargs: launched.update(demo=demo, args=args, **kwargs))
    monkeypatch.setattr(Share4VEngine, "warm_up", lambda engine: warmed.append(engine) or 0)
    flags = ["--model-path", str(tiny_ckpt), "--device", "cpu", "--port", "7999", "--max-upload-mb", "1"]
    app.main([*flags, "--share", "--concurrency", "2"])
    assert launched["args"] == ("127.0.0.1", 7999, True, UploadLimits(2**20, UploadLimits.max_pixels))
    assert launched["allowed_paths"] == [EXAMPLES] and launched["demo"].title == "ShareGPT4V"
    assert len(warmed) == 1  # before serving, unless told not to
    app.main([*flags, "--no-warm-up"])
    assert len(warmed) == 1
    monkeypatch.setattr(Share4VEngine, "warm_up", lambda engine: (_ for _ in ()).throw(RuntimeError("no compiler")))
    with pytest.raises(SystemExit, match=r"the warm-up failed \(RuntimeError: no compiler\); --no-compile-decode"):
        app.main(flags)
    with pytest.raises(SystemExit, match="--concurrency must be at least 1"):
        app.main([*flags, "--concurrency", "0"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Counting:
    """The engine, counting the answers streamed to their end (the browser test waits on it, not on the clock)."""

    def __init__(self, engine):
        self.engine = engine
        self.finished = 0
        self.changed = threading.Condition()

    def stream(self, chat, params):
        yield from self.engine.stream(chat, params)
        with self.changed:
            self.finished += 1
            self.changed.notify_all()

    def wait_past(self, count: int, timeout_s: float = 10.0) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.finished > count, timeout_s), "no answer was generated"


@pytest.fixture(scope="module")
def app(engine):
    """(url, counting engine) of the demo on 127.0.0.1, greedy, 64 new tokens, small upload limits."""
    pytest.importorskip("gradio")
    from share4v.serve.gradio_demo import build_demo, launch

    counting = _Counting(engine)
    demo = build_demo(counting, "share4v-tiny", limits=LIMITS, defaults=GREEDY, examples=example_rows(EXAMPLES))
    url = launch(demo, "127.0.0.1", _free_port(), limits=LIMITS, allowed_paths=[EXAMPLES], block=False)
    yield url, counting
    demo.close()


@pytest.fixture
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False, download_files=False, analytics_enabled=False)  # files stay references


def _texts(messages, role="assistant"):
    return [m["content"][0]["text"] for m in messages if m["role"] == role and m["content"][0]["type"] == "text"]


def _send(client, text, image=None):
    from gradio_client import handle_file

    return client.predict(text, handle_file(str(image)) if image else None, api_name="/send")


def _answer(client, max_tokens=64):
    job = client.submit(0, 0.7, max_tokens, api_name="/answer")
    return list(job)


def test_app_streams_the_engines_answer_over_two_turns(client, engine):
    image = EXAMPLES / "sunset.png"
    messages, textbox, imagebox = _send(client, "What is in the picture?", image)
    assert textbox == "" and imagebox is None and _texts(messages, "user") == ["What is in the picture?"]
    assert messages[0]["content"][0]["type"] == "file"  # the image is shown in the chat
    outputs = _answer(client)
    [first] = engine.generate([Chat(["What is in the picture?"], [image])], GREEDY)
    partials = [_texts(out)[-1] for out in outputs[:-1]]
    assert len(partials) > 1 and all(p.endswith(CURSOR) and first.startswith(p[:-1]) for p in partials)
    assert _texts(outputs[-1]) == [first]

    _send(client, "And the colours?")
    [second] = engine.generate([Chat(["What is in the picture?", first, "And the colours?"], [image])], GREEDY)
    assert _texts(_answer(client)[-1]) == [first, second]

    assert _texts(client.predict(api_name="/regenerate")) == [first]  # the last answer is dropped ...
    assert _texts(_answer(client)[-1]) == [first, second]  # ... and written again (greedy: the same)
    assert client.predict(api_name="/clear") == ([], "", None)


def test_bad_uploads_become_chat_messages_and_the_app_goes_on(client, engine, tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    good = EXAMPLES / "shapes.png"
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:400])
    Image.new("RGB", (400, 300), "teal").save(tmp_path / "big.png")  # 120,000 pixels: over the app's 100,000
    for name, refusal in [("notes.png", "is not an image"), ("cut.png", "could not be read"), ("big.png", "pixels")]:
        messages, textbox, imagebox = _send(client, "What is this?", tmp_path / name)
        assert refusal in _texts(messages)[-1] and textbox == "What is this?" and imagebox is None
        assert _texts(_answer(client)[-1]) == [_texts(messages)[-1]]  # no answer to a refused message
    random_image(6, (300, 300)).save(tmp_path / "heavy.png")  # 270 KB: gradio refuses the upload itself
    with pytest.raises(Exception, match="(?i)size|large|413"):
        _send(client, "What is this?", tmp_path / "heavy.png")

    _send(client, "What is this?", good)
    [expected] = engine.generate([Chat(["What is this?"], [good])], GREEDY)
    assert _texts(_answer(client)[-1]) == [expected]


def test_stop_ends_a_long_answer_early(client, engine):
    _send(client, "Describe it.", EXAMPLES / "chart.png")
    job = client.submit(0, 0.7, 1024, api_name="/answer")
    while not job.outputs():
        time.sleep(0.01)
    client.predict(api_name="/stop")
    [answer] = _texts(job.result())
    assert answer and CURSOR not in answer
    assert len(engine.tokenizer(answer, add_special_tokens=False).input_ids) < 900  # 1024 would take ~5 s


# ---- (c) a real browser --------------------------------------------------------------------------------------


def test_browser_upload_ask_regenerate_clear(app, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed (pip install playwright)")
    if not (os.access(CHROMIUM, os.X_OK) or shutil.which("chromium")):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium"),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            _drive(page, *app, tmp_path)
        finally:
            browser.close()


def _drive(page, url, counting, tmp_path):
    from playwright.sync_api import expect

    page.goto(url)
    bot = page.locator("#chatbot .message-row.bot-row")
    page.locator("input[type=file]").first.set_input_files(str(EXAMPLES / "sunset.png"))
    expect(page.locator("img[src*='sunset']").first).to_be_visible(timeout=10_000)
    page.get_by_placeholder("Enter text and press ENTER").fill("What is in the picture?")
    answered = counting.finished
    page.get_by_role("button", name="Send", exact=True).click()
    counting.wait_past(answered)
    expect(bot).to_have_count(1, timeout=10_000)
    expect(bot.last).not_to_contain_text(CURSOR, timeout=10_000)
    first = bot.last.inner_text()
    assert first.strip()
    expect(page.locator("#chatbot img[src*='sunset']")).to_be_visible()  # the image is shown in the chat

    answered = counting.finished
    page.get_by_role("button", name="🔄 Regenerate").click()
    counting.wait_past(answered)
    expect(bot).to_have_count(1, timeout=10_000)
    expect(bot.last).not_to_contain_text(CURSOR, timeout=10_000)
    assert bot.last.inner_text() == first  # greedy: the same answer, in place of the old one
    page.screenshot(path=str(tmp_path / "demo.png"))
    if os.environ.get("SHARE4V_SAVE_SCREENSHOT") == "1":
        target = ROOT / "docs" / "images" / "demo.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(tmp_path / "demo.png").convert("RGB").quantize(colors=96).save(target, optimize=True)

    page.get_by_role("button", name="🗑️ Clear").click()
    expect(page.locator("#chatbot .message-row")).to_have_count(0, timeout=10_000)

    # a file that is no image: a message in the chat, no answer, and the demo answers the next good upload
    fake = tmp_path / "not-an-image.png"
    fake.write_bytes(b"these bytes are text, not a PNG")
    page.locator("input[type=file]").first.set_input_files(str(fake))
    page.get_by_placeholder("Enter text and press ENTER").fill("What is in the picture?")
    answered = counting.finished
    page.get_by_role("button", name="Send", exact=True).click()
    expect(bot.last).to_contain_text("upload refused", timeout=10_000)  # the refusal, shown as the chat's notice
    expect(bot).to_have_count(1)
    assert counting.finished == answered  # nothing was generated
    page.get_by_role("button", name="🗑️ Clear").click()
    page.locator("input[type=file]").first.set_input_files(str(EXAMPLES / "sunset.png"))
    expect(page.locator("img[src*='sunset']").first).to_be_visible(timeout=10_000)
    page.get_by_placeholder("Enter text and press ENTER").fill("What is in the picture?")
    answered = counting.finished
    page.get_by_role("button", name="Send", exact=True).click()
    counting.wait_past(answered)
    expect(bot).to_have_count(1, timeout=10_000)
    expect(bot.last).not_to_contain_text(CURSOR, timeout=10_000)
    assert bot.last.inner_text() == first
