"""The OpenAI-compatible server: answers equal the engine's, usage from its token counts, streaming, image sources
and request limits (through FastAPI's test client, no network)."""

import base64
import io
import json
import subprocess
import sys

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from share4v.serve.openai_api import Limits, create_app
from share4v.serve.openai_messages import ImagePolicy
from tests.helpers import random_image


@pytest.fixture(scope="module")
def engine(tiny):
    return Share4VEngine(*tiny)


def client(engine, limits=None, images=None):
    return TestClient(create_app(engine, "share4v-tiny", limits, images))


def data_url(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def request_body(parts, **extra):
    return {"model": "share4v-tiny", "messages": [{"role": "user", "content": parts}], "temperature": 0,
            "max_tokens": 8, **extra}  # fmt: skip


def test_health_and_models(engine):
    with client(engine) as http:
        assert http.get("/health").json()["status"] == "ok"
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["share4v-tiny"]
        missing, wrong_method = http.post("/v1/completions", json={}), http.get("/v1/chat/completions")
    assert missing.status_code == 404 and missing.json()["error"] == {
        "message": "POST /v1/completions: Not Found", "type": "invalid_request_error", "code": 404}  # fmt: skip
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == 405
    assert wrong_method.headers["allow"] == "POST"


def test_an_answer_with_an_image_equals_the_engines_and_counts_its_tokens(engine):
    image = random_image(3)
    parts = [{"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": "What is this?"}]
    with client(engine) as http:
        response = http.post("/v1/chat/completions", json=request_body(parts))
    assert response.status_code == 200, response.text
    body = response.json()
    [expected] = engine.complete(
        [Chat(["<image>\nWhat is this?"], [image])], GenerationParams(temperature=0, max_new_tokens=8)
    )
    assert body["choices"][0]["message"]["content"] == expected.text
    assert body["choices"][0]["finish_reason"] == expected.finish_reason
    assert body["usage"] == {"prompt_tokens": expected.prompt_tokens, "completion_tokens": expected.completion_tokens,
                             "total_tokens": expected.prompt_tokens + expected.completion_tokens}  # fmt: skip


def test_streamed_deltas_join_to_the_whole_answer(engine):
    body = request_body("Tell me about shapes.")
    with client(engine) as http:
        whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
        with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
            events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == whole
    assert chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")


def events_of(http, body) -> list[dict]:
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        events = [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event) for event in events[:-1]]


def test_stop_strings_finish_reasons_and_streamed_usage_match_the_whole_answer(engine):
    body = request_body("Tell me about shapes.", max_tokens=12)
    with client(engine) as http:
        whole = http.post("/v1/chat/completions", json=body).json()
        text = whole["choices"][0]["message"]["content"]
        chunks = events_of(http, {**body, "stream_options": {"include_usage": True}})
        stop = text[len(text) // 3 :][:2]
        stopped = http.post("/v1/chat/completions", json={**body, "stop": stop}).json()
        stopped_chunks = events_of(http, {**body, "stop": ["never there", stop]})
        too_many = http.post("/v1/chat/completions", json={**body, "stop": ["a", "b", "c", "d", "e"]})
    assert whole["choices"][0]["finish_reason"] == "length"  # 12 tokens, as many as asked for
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"  # the engine's reason, not a guess from the text
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    assert all("usage" not in chunk for chunk in chunks[:-1])
    cut = text[: text.index(stop)].strip()
    assert stopped["choices"][0] == {"index": 0, "message": {"role": "assistant", "content": cut},
                                     "finish_reason": "stop"}  # fmt: skip
    assert stopped["usage"]["completion_tokens"] < whole["usage"]["completion_tokens"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in stopped_chunks) == cut
    assert stopped_chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert too_many.status_code == 400 and "at most 4" in too_many.json()["error"]["message"]


def test_image_sources_follow_the_servers_rules(engine, tmp_path):
    inside = tmp_path / "allowed"
    inside.mkdir()
    random_image(4).save(inside / "a.png")
    random_image(5).save(tmp_path / "b.png")

    def ask(http, url):
        return http.post("/v1/chat/completions", json=request_body([{"type": "image_url", "image_url": {"url": url}},
                                                                    {"type": "text", "text": "Hi"}]))  # fmt: skip

    with client(engine) as http:
        assert ask(http, "http://example.com/x.png").status_code == 400
        assert "allowed-image-dir" in ask(http, str(inside / "a.png")).json()["error"]["message"]
    with client(engine, images=ImagePolicy(allowed_dir=inside)) as http:
        assert ask(http, str(inside / "a.png")).status_code == 200
        assert ask(http, f"file://{inside / 'a.png'}").status_code == 200
        assert "outside the allowed" in ask(http, str(tmp_path / "b.png")).json()["error"]["message"]
        assert "outside the allowed" in ask(http, str(inside / ".." / "b.png")).json()["error"]["message"]
        broken = ask(http, "data:image/png;base64,bm90IGFuIGltYWdl")
        assert broken.status_code == 400 and "image could not be read" in broken.json()["error"]["message"]
    with client(engine, images=ImagePolicy(max_pixels=100)) as http:
        assert ask(http, data_url(random_image(6))).status_code == 413


def test_request_limits_are_4xx_with_a_message(engine):
    with client(engine, limits=Limits(max_body_bytes=2000, max_tokens=16, max_concurrent=1)) as http:
        assert http.post("/v1/chat/completions", json=request_body("x" * 3000)).status_code == 413
        over = http.post("/v1/chat/completions", json=request_body("hi", max_tokens=17))
        assert over.status_code == 400 and "over this server's limit of 16" in over.json()["error"]["message"]
        assert http.post("/v1/chat/completions", content=b"{not json").status_code == 400
        turns = {"model": "m", "messages": [{"role": "assistant", "content": "hi"}]}
        assert "user turn belongs" in http.post("/v1/chat/completions", json=turns).json()["error"]["message"]
        assert http.post("/v1/chat/completions", json=request_body("hi", n=2)).status_code == 400
        assert http.post("/v1/chat/completions", json=request_body("hi", temperature=-1)).status_code == 400


def test_more_concurrent_requests_than_allowed_get_429(engine):
    app = create_app(engine, "share4v-tiny", Limits(max_concurrent=1))
    with TestClient(app) as http:
        body = {**request_body("Tell me a story."), "stream": True, "max_tokens": 8}
        with http.stream("POST", "/v1/chat/completions", json=body) as first:
            lines = first.iter_lines()
            next(lines)  # the first request is inside the server
            second = http.post("/v1/chat/completions", json=request_body("hi"))
            assert second.status_code == 429 and second.json()["error"]["type"] == "rate_limit_error"
            assert [line for line in lines if line][-1] == "data: [DONE]"
        assert http.post("/v1/chat/completions", json=request_body("hi")).status_code == 200  # released


def test_help_shows_the_defaults():
    result = subprocess.run(
        [sys.executable, "-m", "share4v.serve.openai_api", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "127.0.0.1" in result.stdout and "--allow-remote-images" in result.stdout
    assert "--no-warm-up" in result.stdout


def test_failed_requests_never_keep_their_slot(engine, tmp_path):
    with client(engine, limits=Limits(max_concurrent=1)) as http:
        assert http.post("/v1/chat/completions", content=b"[" * 100000).status_code == 400  # nesting too deep
        assert http.post("/v1/chat/completions", content=b"1" * 5000).status_code == 400  # an integer too long
        nul = request_body([{"type": "image_url", "image_url": {"url": "a\x00b.png"}}, {"type": "text", "text": "x"}])
        assert http.post("/v1/chat/completions", json=nul).status_code == 400
        assert http.post("/v1/chat/completions", json=request_body("hi", max_tokens=None)).status_code == 200


def test_a_stream_left_early_frees_its_slot_and_stops_its_generation(engine, monkeypatch):
    """What the server does when a client goes away: the response's background task closes the stream, which frees
    the slot and stops that request's generation (never started, or mid-answer) instead of running 200 steps."""
    import asyncio
    import threading

    from share4v.serve.openai_api import _EventStream

    chat = Chat.single("Tell me a long story.")
    params = GenerationParams(temperature=0, max_new_tokens=200)
    slots = threading.BoundedSemaphore(1)
    forward, steps = engine.model.forward, []
    monkeypatch.setattr(engine.model, "forward", lambda *a, **k: steps.append(1) or forward(*a, **k))

    async def leave_after(events_read: int) -> None:
        assert slots.acquire(blocking=False)
        stream = _EventStream(engine, chat, params, "m", slots)
        events = stream.events()
        for _ in range(events_read):
            await events.__anext__()
        await events.aclose()
        await stream.close()

    for events_read in (0, 3):  # never iterated; left mid-answer
        steps.clear()
        asyncio.run(leave_after(events_read))
        assert slots.acquire(blocking=False), "the slot was not given back"
        slots.release()
        # the next request runs once the model is free: after the left stream's few steps, not its 200
        assert engine.complete([Chat.single("hi")], GenerationParams(temperature=0, max_new_tokens=2))[0].text
        assert len(steps) < 50, len(steps)


def test_chunked_bodies_images_per_request_and_local_paths(engine, tmp_path):
    random_image(7).save(tmp_path / "c.png")

    def chunks():
        yield b'{"messages": "' + b"x" * 3000

    with client(
        engine, limits=Limits(max_body_bytes=2000), images=ImagePolicy(allowed_dir=tmp_path, max_images=2)
    ) as http:
        assert http.post("/v1/chat/completions", content=chunks()).status_code == 413  # no Content-Length
        relative = [{"type": "image_url", "image_url": {"url": "c.png"}}, {"type": "text", "text": "Hi"}]
        assert http.post("/v1/chat/completions", json=request_body(relative)).status_code == 200
        three = [{"type": "image_url", "image_url": {"url": "c.png"}}] * 3
        assert (
            "more than 2 images"
            in http.post("/v1/chat/completions", json=request_body(three)).json()["error"]["message"]
        )
        remote_file = [{"type": "image_url", "image_url": {"url": "file://otherhost/c.png"}}]
        assert http.post("/v1/chat/completions", json=request_body(remote_file)).status_code == 400
        spaced = [{"type": "image_url", "image_url": {"url": " data:image/png;base64,AAAA"}}]
        assert http.post("/v1/chat/completions", json=request_body(spaced)).status_code == 400


def refused_requests(allowed_dir, outside_file, max_body_bytes: int) -> list[tuple[str, dict, int, str]]:
    """Requests a server with `max_body_bytes` and `allowed_dir` must refuse: (what, body, status, words of its
    message). Also used against the real server in test_openai_client.py."""

    def with_image(url: str) -> dict:
        return request_body([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Hi"}])

    (allowed_dir / "notes.png").write_text("a text file with an image's name")
    text_data = "data:image/png;base64," + base64.b64encode(b"plain text, not pixels").decode()
    return [
        ("oversize body", request_body("x" * max_body_bytes), 413, f"request body over {max_body_bytes} bytes"),
        ("bad base64", with_image("data:image/png;base64,***not base64***"), 400, "Only base64 data is allowed"),
        ("path outside the folder", with_image(str(outside_file)), 400, "is outside the allowed image folder"),
        ("remote URL without the flag", with_image("https://example.com/cat.png"), 400,
         "start the server with --allow-remote-images"),
        ("non-image data URL", with_image(text_data), 400, "cannot identify image file"),
        ("non-image file", with_image(str(allowed_dir / "notes.png")), 400, "cannot identify image file"),
        ("image marker in an assistant turn", {**request_body("Hi"), "messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "An <image> here."},
            {"role": "user", "content": "And?"}]}, 400, "an assistant turn holds <image>"),
        ("log-probabilities", {**request_body("Hi"), "logprobs": True}, 400,
         "logprobs is not supported by this server (only false)"),
        ("a presence penalty", {**request_body("Hi"), "presence_penalty": 0.5}, 400,
         "presence_penalty is not supported by this server (only 0)"),
        ("a seed for a sampled request", {**request_body("Hi"), "seed": 7, "temperature": 0.7}, 400,
         "seed is not supported for sampled requests"),
    ]  # fmt: skip


def test_neutral_values_of_the_settings_the_server_does_not_honour_are_accepted(engine):
    # what OpenAI clients send by default (null means "not given"); a seed means nothing to a greedy request
    neutral = {"logprobs": False, "top_logprobs": 0, "frequency_penalty": 0, "presence_penalty": 0.0, "logit_bias": {},
               "n": 1, "seed": 1234}  # fmt: skip
    with client(engine) as http:
        response = http.post("/v1/chat/completions", json={**request_body("Hi", max_tokens=2), **neutral})
    assert response.status_code == 200, response.text


def test_each_refusal_is_a_4xx_with_a_clear_message_and_the_server_keeps_serving(engine, tmp_path):
    inside, outside = tmp_path / "allowed", tmp_path / "elsewhere.png"
    inside.mkdir()
    random_image(8).save(outside)
    good = request_body([{"type": "image_url", "image_url": {"url": data_url(random_image(9))}},
                         {"type": "text", "text": "Hi"}], max_tokens=2)  # fmt: skip
    limits = Limits(max_body_bytes=20_000, max_concurrent=1)  # one slot: a refusal that kept it would show
    with client(engine, limits=limits, images=ImagePolicy(allowed_dir=inside)) as http:
        for what, body, status, message in refused_requests(inside, outside, limits.max_body_bytes):
            response = http.post("/v1/chat/completions", json=body)
            assert response.status_code == status, (what, response.text)
            assert message in response.json()["error"]["message"], (what, response.text)
            assert http.post("/v1/chat/completions", json=good).status_code == 200, f"not serving after {what}"
