"""eval/judge.py: the GPT judge of LLaVA-Bench-in-the-Wild and MM-Vet, on any OpenAI-compatible endpoint.

    with Judge(JudgeConfig.resolve(cache_file="reviews/run.jsonl.judge-cache")) as judge:
        text = judge.complete([{"role": "user", "content": "..."}], temperature=0.2, max_tokens=1024).text

- **Endpoint.** `POST {base_url}/chat/completions` with `Authorization: Bearer {api_key}` (no header without a key,
  for local servers). `base_url` includes the `/v1`, as `OPENAI_BASE_URL` does for the openai package.
  Precedence for each setting: the flag (`--judge-model`, `--base-url`, `--api-key`), then the environment
  (`SHARE4V_JUDGE_MODEL`, `OPENAI_BASE_URL`, `OPENAI_API_KEY`), then the default.
- **Model.** The original judges were `gpt-4-0314` (LLaVA-Bench; retired by OpenAI in 2024) and `gpt-4-0613`
  (the MM-Vet grader's default). The default here is `DEFAULT_JUDGE_MODEL = "gpt-4o-2024-08-06"`: a current model
  of the same family, and a dated snapshot rather than the floating `gpt-4o` alias, so that the same name keeps
  giving the same judge and reruns stay comparable. Scores from any judge other than the paper's are not directly
  comparable with the paper's numbers; record the judge with the scores (`--judge-model` to change it).
- **Retries.** Timeouts, connection errors, HTTP 408/409/429 and 5xx are retried `max_retries` times with
  exponential backoff (`backoff_s * 2**attempt`, times a random factor in [0.5, 1), at most `max_backoff_s`); a
  `Retry-After` (or `retry-after-ms`) header is waited out instead, up to `max_backoff_s`. Other errors (401, 400,
  a reply that is not a chat completion) fail at once. Failure is one `JudgeError` line naming the URL, the number
  of attempts and the last reason.
- **Cache.** Every judgement is appended (and flushed) to a JSON-lines cache keyed by the SHA-256 of (model,
  messages, temperature, max_tokens), so a rerun makes no request for an item already judged; a last line torn by a
  kill is cut before the next append.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from share4v.appended_jsonl import read_appended_jsonl
from share4v.eval.jsonl import append_jsonl, prepare_append

DEFAULT_JUDGE_MODEL = "gpt-4o-2024-08-06"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MODEL_ENV, BASE_URL_ENV, API_KEY_ENV = "SHARE4V_JUDGE_MODEL", "OPENAI_BASE_URL", "OPENAI_API_KEY"
RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx
CACHE_SUFFIX = ".judge-cache"  # not ".jsonl": summarize_gpt_review -d lists *.jsonl files as reviews


class JudgeError(RuntimeError):
    """A judge request that failed for good (after its retries, or at once for errors a retry cannot fix)."""


@dataclass(frozen=True)
class JudgeConfig:
    """Where and how to ask the judge. `resolve` fills the unset fields from the environment."""

    model: str = DEFAULT_JUDGE_MODEL
    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    cache_file: Path | None = None
    timeout_s: float = 120.0
    max_retries: int = 8
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("the judge model is empty")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"judge base URL {self.base_url!r} is not an http(s) URL")
        if self.max_retries < 0 or self.backoff_s < 0 or self.max_backoff_s < 0 or self.timeout_s <= 0:
            raise ValueError("max_retries, backoff_s and max_backoff_s must be >= 0 and timeout_s > 0")

    @classmethod
    def resolve(
        cls,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        environ: Mapping[str, str] | None = None,
        **settings: Any,
    ) -> JudgeConfig:
        """Arguments first, then `SHARE4V_JUDGE_MODEL` / `OPENAI_BASE_URL` / `OPENAI_API_KEY`, then the defaults."""
        environ = os.environ if environ is None else environ
        return cls(
            model=model or environ.get(MODEL_ENV) or DEFAULT_JUDGE_MODEL,
            base_url=(base_url or environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL).rstrip("/"),
            api_key=api_key or environ.get(API_KEY_ENV) or None,
            **settings,
        )


@dataclass(frozen=True)
class Judgement:
    text: str  # the judge's reply ("" when the endpoint sent no content)
    model: str  # the model the endpoint says answered (the requested one for a cached reply of old)
    cached: bool


def cache_key(model: str, messages: Sequence[Mapping[str, Any]], temperature: float, max_tokens: int) -> str:
    """SHA-256 (hex) of everything that decides a judgement."""
    payload = {"model": model, "messages": list(messages), "temperature": float(temperature), "max_tokens": max_tokens}
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class JudgeCache:
    """Judgements by `cache_key`, kept in one append-only JSON-lines file: `{"key", "model", "text"}` per line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._rows = {row["key"]: row for row in read_appended_jsonl(self.path) if isinstance(row.get("key"), str)}
        prepare_append(self.path)

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._rows.get(key)

    def put(self, key: str, model: str, text: str) -> None:
        row = {"key": key, "model": model, "text": text}
        append_jsonl(self.path, row)
        self._rows[key] = row


class Judge:
    """Chat completions from the configured endpoint, cached and retried (see the module docstring).

    Args:
        config: endpoint, model, cache file and retry settings.
        sleep: waits between attempts (tests pass a recorder).
        rng: a float in [0, 1) per wait, for the jitter.
    """

    def __init__(
        self,
        config: JudgeConfig,
        sleep: Callable[[float], None] = time.sleep,
        rng: Callable[[], float] = random.random,
    ):
        try:
            import httpx
        except ImportError:
            raise JudgeError("the judge needs httpx: pip install 'share4v[judge]' (or pip install httpx)") from None
        self.config = config
        self.url = f"{config.base_url}/chat/completions"
        self.requests_made = 0
        self._httpx = httpx
        self._client = httpx.Client(timeout=config.timeout_s)
        self._cache = JudgeCache(config.cache_file) if config.cache_file is not None else None
        self._sleep, self._rng = sleep, rng

    def __enter__(self) -> Judge:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def complete(self, messages: Sequence[Mapping[str, Any]], temperature: float, max_tokens: int) -> Judgement:
        """The judge's reply to `messages` (from the cache when this exact request was answered before).

        Raises:
            JudgeError: one line, once the retries are spent or at once for an error a retry cannot fix.
        """
        model = self.config.model
        key = cache_key(model, messages, temperature, max_tokens)
        if self._cache is not None and (hit := self._cache.get(key)) is not None:
            return Judgement(text=hit["text"], model=hit.get("model", model), cached=True)
        body = {"model": model, "messages": list(messages), "temperature": temperature, "max_tokens": max_tokens}
        text, answered_by = self._post(body)
        if self._cache is not None:
            self._cache.put(key, answered_by, text)
        return Judgement(text=text, model=answered_by, cached=False)

    def _post(self, body: dict[str, Any]) -> tuple[str, str]:
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        attempts = self.config.max_retries + 1
        for attempt in range(attempts):
            retry_after = None
            self.requests_made += 1
            try:
                response = self._client.post(self.url, json=body, headers=headers)
            except self._httpx.TimeoutException:
                reason = f"no reply within {self.config.timeout_s:g} s"
            except self._httpx.TransportError as err:
                reason = f"{type(err).__name__}: {_one_line(str(err))}"
            else:
                if response.status_code == 200:
                    return self._parse(response)
                reason = f"HTTP {response.status_code}: {_error_message(response)}"
                if response.status_code not in RETRY_STATUSES and response.status_code < 500:
                    raise JudgeError(f"judge request to {self.url} failed: {reason}")
                retry_after = _retry_after(response.headers)
            if attempt + 1 < attempts:
                self._sleep(self._delay(attempt, retry_after))
        raise JudgeError(f"judge request to {self.url} failed after {attempts} attempts: {reason}")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.config.max_backoff_s)
        backoff = min(self.config.backoff_s * 2**attempt, self.config.max_backoff_s)
        return backoff * (0.5 + 0.5 * self._rng())

    def _parse(self, response: Any) -> tuple[str, str]:
        try:
            data = response.json()
            content = data["choices"][0]["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            snippet = _one_line(response.text)[:120]
            raise JudgeError(
                f"{self.url} did not answer with a chat completion (check --base-url): {snippet!r}"
            ) from None
        answered_by = data.get("model") if isinstance(data.get("model"), str) else self.config.model
        return (content if isinstance(content, str) else ""), answered_by


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _error_message(response: Any) -> str:
    """The `error.message` of an OpenAI-style error body, else the start of the body."""
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    message = _one_line(str(message))[:200] or response.reason_phrase
    if response.status_code == 401:
        message += f" (set {API_KEY_ENV} or pass --api-key)"
    return message


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); None when absent."""
    try:
        if "retry-after-ms" in headers:
            value = float(headers["retry-after-ms"]) / 1000
            return value if math.isfinite(value) and value >= 0 else None
        if "retry-after" not in headers:
            return None
        text = headers["retry-after"].strip()
        if text.replace(".", "", 1).isdigit():
            return float(text)
        when = email.utils.parsedate_to_datetime(text)
    except (ValueError, TypeError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def add_judge_arguments(parser: Any, cache_default: str = f"<output>{CACHE_SUFFIX}") -> None:
    """The judge's flags (an argument group of `parser`), shared by the GPT-judged benchmarks; `cache_default`
    says in --help where the cache goes by default (`judge_config_from_args` puts it there)."""
    group = parser.add_argument_group("judge (any OpenAI-compatible /v1/chat/completions endpoint)")
    group.add_argument("--judge-model", default=None, help=f"default: ${MODEL_ENV}, else {DEFAULT_JUDGE_MODEL}")
    group.add_argument("--base-url", default=None, help=f"default: ${BASE_URL_ENV}, else {DEFAULT_BASE_URL}")
    group.add_argument("--api-key", default=None, help=f"default: ${API_KEY_ENV} (prefer it: flags show in ps)")
    group.add_argument("--cache-file", default=None, help=f"JSON-lines cache of judgements (default: {cache_default})")
    group.add_argument(
        "--max-retries",
        type=int,
        default=JudgeConfig.max_retries,
        help="retries after a failed attempt (default: %(default)s)",
    )
    group.add_argument(
        "--retry-backoff",
        type=float,
        default=JudgeConfig.backoff_s,
        help=f"seconds before the first retry, doubled each retry, at most {JudgeConfig.max_backoff_s:g} "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--request-timeout",
        type=float,
        default=JudgeConfig.timeout_s,
        help="seconds per request (default: %(default)s)",
    )


def judge_config_from_args(args: Any, output: str | Path) -> JudgeConfig:
    """The `JudgeConfig` of the flags of `add_judge_arguments`; the cache defaults to `output` + `CACHE_SUFFIX`."""
    cache_file = Path(args.cache_file) if args.cache_file else Path(f"{output}{CACHE_SUFFIX}")
    return JudgeConfig.resolve(
        args.judge_model,
        args.base_url,
        args.api_key,
        cache_file=cache_file,
        max_retries=args.max_retries,
        backoff_s=args.retry_backoff,
        timeout_s=args.request_timeout,
    )


__all__ = [
    "CACHE_SUFFIX",
    "DEFAULT_JUDGE_MODEL",
    "Judge",
    "JudgeCache",
    "JudgeConfig",
    "JudgeError",
    "Judgement",
    "add_judge_arguments",
    "cache_key",
    "judge_config_from_args",
]
