"""The OpenAI-compatible server as users meet it: `python -m share4v.serve.openai_api` in its own process on
127.0.0.1 with the tiny checkpoint, called with the official `openai` client. Its answers equal `eval_model`'s,
whole and streamed; 16 requests at once each get their own answer; refused requests are 4xx with a clear message
over real HTTP, and the server keeps serving."""

import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("openai")
pytest.importorskip("uvicorn")
import httpx
import openai

from share4v.eval.run_share4v import build_parser, eval_model
from share4v.inference.engine import Chat, GenerationParams, Share4VEngine
from tests.helpers import random_image
from tests.serve.test_openai_api import data_url, refused_requests

ROOT = Path(__file__).resolve().parents[2]
MAX_BODY_MB = 0.25
CONCURRENT = 16


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    url: str
    allowed_dir: Path
    log: Path


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    """The server in its own process, on a free port of 127.0.0.1, allowing local images under one folder."""
    root = tmp_path_factory.mktemp("server")
    allowed, log_path = root / "allowed", root / "server.log"
    allowed.mkdir()
    port = _free_port()
    command = [sys.executable, "-m", "share4v.serve.openai_api", "--model-path", str(tiny_ckpt), "--device", "cpu",
               "--port", str(port), "--max-concurrent", str(CONCURRENT), "--max-body-mb", str(MAX_BODY_MB),
               "--allowed-image-dir", str(allowed)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    with log_path.open("w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"the server exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"the server did not come up:\n{log_path.read_text()}"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        yield Server(url, allowed, log_path)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def api(server):
    """The official client; no retries, so a 429 or a dropped connection fails the test instead of being hidden."""
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed", max_retries=0, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def model_id(api):
    [model] = api.models.list().data
    return model.id


@pytest.fixture(scope="module")
def engine(tiny):
    return Share4VEngine(*tiny)


def _ask(image, question: str) -> list[dict]:
    parts = [{"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": question}]
    return [{"role": "user", "content": parts}]


def _streamed(chunks) -> str:
    return "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)


def test_the_client_gets_eval_models_answer_whole_and_streamed(api, model_id, tiny_ckpt, tmp_path):
    image, question = random_image(21, (40, 30)), "What is shown in this picture?"
    image.save(tmp_path / "photo.png")
    args = build_parser().parse_args(["--model-path", str(tiny_ckpt), "--device", "cpu", "--image-file",
                                      str(tmp_path / "photo.png"), "--query", question, "--temperature", "0",
                                      "--max_new_tokens", "12"])  # fmt: skip
    expected = eval_model(args)
    assert expected.strip(), "an empty answer would make the comparison hollow"

    whole = api.chat.completions.create(model=model_id, messages=_ask(image, question), temperature=0, max_tokens=12)
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == expected
    assert whole.choices[0].finish_reason in ("stop", "length")
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    assert 0 < whole.usage.completion_tokens <= 12

    stream = api.chat.completions.create(
        model=model_id, messages=_ask(image, question), temperature=0, max_tokens=12, stream=True
    )
    with stream:
        chunks = list(stream)
    assert _streamed(chunks) == expected
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_sixteen_requests_at_once_each_get_their_own_answer(api, model_id, engine):
    """Different images, questions and lengths, half of them streamed, all sent at the same moment."""
    jobs = [(random_image(100 + i, (24 + 4 * i, 20)), f"Describe picture {i} in a few words.", 4 + i % 5, i % 2 == 1)
            for i in range(CONCURRENT)]  # fmt: skip
    expected = [
        engine.complete([Chat([f"<image>\n{question}"], [image])], GenerationParams(temperature=0, max_new_tokens=n))[0]
        for image, question, n, _ in jobs
    ]
    assert len({completion.text for completion in expected}) >= CONCURRENT // 2, "answers too alike to tell apart"
    start = threading.Barrier(CONCURRENT)

    def send(job):
        image, question, max_tokens, stream = job
        start.wait(timeout=60)
        answer = api.chat.completions.create(model=model_id, messages=_ask(image, question), temperature=0,
                                             max_tokens=max_tokens, stream=stream)  # fmt: skip
        if stream:
            with answer:
                return _streamed(answer), None
        return answer.choices[0].message.content, answer.usage

    with ThreadPoolExecutor(CONCURRENT) as pool:
        answers = list(pool.map(send, jobs))
    for i, ((text, usage), completion) in enumerate(zip(answers, expected, strict=True)):
        assert text == completion.text, f"request {i} got another answer"
        if usage is not None:
            assert (usage.prompt_tokens, usage.completion_tokens) == (
                completion.prompt_tokens, completion.completion_tokens
            ), f"request {i}"  # fmt: skip


def test_refusals_over_real_http_are_4xx_with_a_message_and_the_server_keeps_serving(api, model_id, server, tmp_path):
    outside = tmp_path / "elsewhere.png"
    random_image(8).save(outside)
    good = _ask(random_image(9), "Hi")
    for what, body, status, message in refused_requests(server.allowed_dir, outside, int(MAX_BODY_MB * 2**20)):
        with pytest.raises(openai.APIStatusError) as refused:
            api.chat.completions.create(**{**body, "model": model_id})
        assert refused.value.status_code == status, what
        assert message in refused.value.message, (what, refused.value.message)
        answer = api.chat.completions.create(model=model_id, messages=good, temperature=0, max_tokens=2)
        assert answer.choices[0].finish_reason in ("stop", "length"), f"not serving after {what}"
    assert httpx.get(f"{server.url}/health", timeout=5).json()["status"] == "ok"
