"""serve/openai_api.py

An OpenAI-compatible HTTP API over the generation engine: `POST /v1/chat/completions` (whole or streamed as
server-sent events) with `image_url` parts, `GET /v1/models`, `GET /health`.

    pip install 'share4v[serve]'
    python -m share4v.serve.openai_api --model-path checkpoints/share4v-7b --port 8000
    # then any OpenAI client: base_url="http://127.0.0.1:8000/v1"

Listens on 127.0.0.1 unless `--host` says otherwise. Requests over the limits are answered with 4xx and a one-line
message: body size (413), image pixels (413), `max_tokens` (400), concurrent requests (429). Images: `data:` URLs
always; http(s) only with `--allow-remote-images`; local paths only under `--allowed-image-dir`. One model serves
every request: whole and streamed answers that arrive while it is busy run together as one batch
(`Share4VEngine.submit`: on a GPU one continuous batch of any settings, else batches of equal settings; greedy
answers equal those of a request alone); requests past the concurrency limit get 429. `usage` counts come from
the engine: prompt tokens with each image's patches, completion tokens generated (streams: with
`stream_options: {"include_usage": true}`, in a last chunk). `stop` (a string or up to 4) ends an answer where one
first appears, cut before it, with finish reason "stop".
"""

import argparse
import asyncio
import json
import logging
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from share4v.inference.cli_args import add_model_args, add_warm_up_arg, engine_from_args, warm_up
from share4v.inference.engine import GenerationParams, Share4VEngine
from share4v.serve.openai_messages import ImagePolicy, RequestError, chat_from_messages

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 32 * 2**20
    max_tokens: int = 2048  # the most a request may ask for
    default_max_tokens: int = 512
    max_concurrent: int = 8  # requests in the server at once (generating or waiting); more get 429


def create_app(engine: Share4VEngine, model_name: str, limits: Limits | None = None, images: ImagePolicy | None = None):
    """The FastAPI application serving `engine` under `model_name` (default limits and image rules unless given).
    (No `from __future__ import annotations` here: FastAPI reads the handlers' annotations at run time.)"""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException

    limits, images = limits or Limits(), images or ImagePolicy()
    app = FastAPI(title="share4v", docs_url=None, redoc_url=None)
    admitted = threading.BoundedSemaphore(limits.max_concurrent)

    def error(status: int, message: str) -> JSONResponse:
        kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:  # unknown route, method
        response = error(err.status_code, f"{request.method} {request.url.path}: {err.detail}")
        response.headers.update(err.headers or {})  # a 405's Allow
        return response

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": model_name}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "share4v"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body_bytes:
            return error(413, f"request body over {limits.max_body_bytes} bytes")
        body = bytearray()
        async for piece in request.stream():  # chunked uploads too: stop reading past the limit
            body += piece
            if len(body) > limits.max_body_bytes:
                return error(413, f"request body over {limits.max_body_bytes} bytes")
        if not admitted.acquire(blocking=False):
            return error(429, f"more than {limits.max_concurrent} requests at once; try again shortly")
        handed_to_stream = False
        try:
            payload = await run_in_threadpool(_parse_body, bytes(body))
            params = _params(payload, limits)
            chat = await run_in_threadpool(chat_from_messages, payload.get("messages"), images)  # loads images
            encoded = await run_in_threadpool(engine.encode, chat)
            if encoded.error is not None:
                return error(400, encoded.error)
            if payload.get("stream") is True:
                options = payload.get("stream_options")
                usage = isinstance(options, dict) and options.get("include_usage") is True
                stream = _EventStream(engine, chat, params, model_name, admitted, usage)
                handed_to_stream = True
                return StreamingResponse(stream.events(), media_type="text/event-stream", background=stream.close)
            completion = await asyncio.wrap_future(engine.submit(encoded, params))  # batched with its neighbours
        except RequestError as err:
            return error(err.status, str(err))
        except Exception as err:  # anything else is still one request's failure, never the server's
            logger.exception("request failed")
            return error(500, f"internal error: {type(err).__name__}")
        finally:
            if not handed_to_stream:
                admitted.release()
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                         "finish_reason": completion.finish_reason}],
            "usage": _usage(completion),
        }  # fmt: skip

    return app


def _usage(completion) -> dict:
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}  # fmt: skip


def _parse_body(body: bytes) -> dict:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as err:  # JSONDecodeError, bad UTF-8, huge integers, deep nesting
        raise RequestError(400, f"the request body is not usable JSON: {type(err).__name__}") from None
    if not isinstance(payload, dict):
        raise RequestError(400, "the request body must be a JSON object")
    return payload


# OpenAI settings the engine does not honour: refused unless neutral, rather than answered as if they held
_SETTINGS_NOT_HONOURED = {
    "logprobs": (False,),
    "top_logprobs": (0,),
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "logit_bias": ({},),
}


def _params(payload: dict, limits: Limits) -> GenerationParams:
    """Decoding settings of the request (`temperature`, `top_p`, `max_tokens` / `max_completion_tokens`, `stop`:
    a string or up to 4)."""
    payload = {key: value for key, value in payload.items() if value is not None}  # null means "not given"
    if payload.get("n", 1) != 1:
        raise RequestError(400, "only n=1 is supported")
    for name, neutral in _SETTINGS_NOT_HONOURED.items():  # clients send their neutral values by default
        if name in payload and payload[name] not in neutral:
            allowed = f" (only {json.dumps(neutral[0])})" if neutral else ""
            raise RequestError(400, f"{name} is not supported by this server{allowed}")
    default = min(limits.default_max_tokens, limits.max_tokens)
    max_tokens = payload.get("max_completion_tokens", payload.get("max_tokens", default))
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise RequestError(400, f"max_tokens must be a positive integer, not {max_tokens!r}")
    if max_tokens > limits.max_tokens:
        raise RequestError(400, f"max_tokens {max_tokens} is over this server's limit of {limits.max_tokens}")
    stop = payload.get("stop", ())
    if isinstance(stop, list) and len(stop) > 4:
        raise RequestError(400, f"stop takes at most 4 strings, not {len(stop)}")
    defaults = GenerationParams()
    try:
        params = GenerationParams(
            temperature=payload.get("temperature", defaults.temperature),
            top_p=payload.get("top_p", defaults.top_p),
            max_new_tokens=max_tokens,
            stop=stop,
        )
    except (TypeError, ValueError) as err:
        raise RequestError(400, str(err)) from None
    if "seed" in payload and params.sampling:  # greedy answers need none (evaluation harnesses send one anyway)
        raise RequestError(400, "seed is not supported for sampled requests: they share the engine's random state")
    return params


class _EventStream:
    """One streamed answer as server-sent events: a role chunk, content chunks, a final chunk with the finish
    reason (the engine's, as a whole answer gets it), with `include_usage` a chunk with the token counts and no
    choices (OpenAI's `stream_options`), `[DONE]`. Generation runs in its own thread and holds the model's lock
    only while generating (the pieces wait in a queue), so a slow reader delays nobody else. `close` (the
    response's background task, which runs even when the client went away) stops generation and frees the
    request's slot."""

    _END = object()

    def __init__(self, engine, chat, params, model_name: str, admitted, include_usage: bool = False) -> None:
        self.engine, self.chat, self.params, self.model_name = engine, chat, params, model_name
        self.admitted, self.include_usage = admitted, include_usage
        self.completion: Future = Future()  # the engine's Completion, as the row ends
        self.ident, self.created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        self.pieces: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.closed = False

    def _chunk(self, delta: dict | None, finish_reason: str | None = None, usage: dict | None = None) -> str:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        body = {"id": self.ident, "object": "chat.completion.chunk", "created": self.created, "model": self.model_name,
                "choices": choices}  # fmt: skip
        if usage is not None:
            body["usage"] = usage
        return f"data: {json.dumps(body)}\n\n"

    def _generate(self) -> None:
        try:  # the engine batches concurrent streams (and whole answers) together
            answer = self.engine.stream(self.chat, self.params, completion=self.completion)
            try:
                for piece in answer:
                    if self.stop.is_set():
                        break
                    self.pieces.put(piece)
            finally:
                answer.close()  # stops this request's row
        except Exception as err:  # reported to the client as an error event
            self.pieces.put(err)
        finally:
            self.pieces.put(self._END)

    async def events(self):
        from starlette.concurrency import run_in_threadpool

        threading.Thread(target=self._generate, daemon=True).start()
        yield self._chunk({"role": "assistant", "content": ""})
        text = []
        while (item := await run_in_threadpool(self.pieces.get)) is not self._END:
            if isinstance(item, Exception):
                yield f"data: {json.dumps({'error': {'message': str(item), 'type': 'server_error'}})}\n\n"
                break
            text.append(item)
            yield self._chunk({"content": item})
        else:
            # set as the engine's stream ended (before its last piece came), so this does not wait; shielded: a
            # client that leaves cancels this wait, not the future the generating thread settles
            completion = await asyncio.shield(asyncio.wrap_future(self.completion))
            yield self._chunk({}, completion.finish_reason)
            if self.include_usage:
                yield self._chunk(None, usage=_usage(completion))
        yield "data: [DONE]\n\n"

    async def close(self) -> None:
        self.stop.set()
        if not self.closed:
            self.closed = True
            self.admitted.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_model_args(parser)
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on")
    server.add_argument("--port", type=int, default=8000)
    server.add_argument("--served-model-name", default=None, help="the id clients use (default: the folder name)")
    server.add_argument("--max-tokens-limit", type=int, default=Limits.max_tokens, help="largest max_tokens accepted")
    server.add_argument("--max-body-mb", type=float, default=Limits.max_body_bytes / 2**20, help="request body limit")
    server.add_argument("--max-image-pixels", type=int, default=ImagePolicy.max_pixels, help="per image")
    server.add_argument("--max-images", type=int, default=ImagePolicy.max_images, help="images per request")
    server.add_argument("--max-concurrent", type=int, default=Limits.max_concurrent, help="requests at once")
    server.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs")
    server.add_argument("--allowed-image-dir", type=Path, default=None, help="serve local image paths under this")
    add_warm_up_arg(server)
    args = parser.parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        raise SystemExit("error: the server needs FastAPI and uvicorn: pip install 'share4v[serve]'") from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        engine = engine_from_args(args)
    except (OSError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    name = args.served_model_name or Path(args.model_path.rstrip("/")).name
    limits = Limits(int(args.max_body_mb * 2**20), args.max_tokens_limit, min(512, args.max_tokens_limit),
                    args.max_concurrent)  # fmt: skip
    if args.max_concurrent < 1:
        raise SystemExit("error: --max-concurrent must be at least 1")
    images = ImagePolicy(args.allow_remote_images, args.allowed_image_dir, args.max_image_pixels, args.max_images)
    warm_up(engine, args)
    uvicorn.run(create_app(engine, name, limits, images), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    main()
