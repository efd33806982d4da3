"""image_fetch.py

Downloading an image from an http(s) URL without letting the URL hang, flood or steer the process.

- A total deadline for the whole download (a server dripping a byte every few seconds is cut off), on top of the
  per-read timeout; a size cap, checked while the body streams in (never read whole into memory first).
- Private, loopback, link-local and other non-public addresses are refused unless allowed, so that a server built
  on share4v cannot be made to fetch from the machine's own network; redirects are followed by hand (at most
  `MAX_REDIRECTS`) and each hop is checked the same way.
- Only http and https: `file://` and other schemes are a clear error.

Limits come from `FetchPolicy` (defaults below, or the environment: `SHARE4V_URL_DEADLINE_S`,
`SHARE4V_URL_MAX_BYTES`, `SHARE4V_ALLOW_PRIVATE_URLS=1`). A host whose name resolves to a public address when
checked and to a private one when connected (DNS rebinding) is not caught.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

MAX_REDIRECTS = 3
_CHUNK = 64 * 1024


class FetchError(ValueError):
    """The URL cannot or may not be downloaded; the message says why."""


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass(frozen=True)
class FetchPolicy:
    deadline_s: float = field(default_factory=lambda: _env_float("SHARE4V_URL_DEADLINE_S", 30.0))
    max_bytes: int = field(default_factory=lambda: int(_env_float("SHARE4V_URL_MAX_BYTES", 50 * 2**20)))
    read_timeout_s: float = 10.0
    allow_private: bool = field(
        default_factory=lambda: os.environ.get("SHARE4V_ALLOW_PRIVATE_URLS", "0").lower() in ("1", "true", "yes")
    )


def _check_host(url: str, policy: FetchPolicy) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme {parts.scheme!r} in {url}: use http(s), a data: URI or a local path")
    if not parts.hostname:
        raise FetchError(f"no host in URL {url}")
    if policy.allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as err:
        raise FetchError(f"cannot resolve the host of {url}: {err}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global:
            raise FetchError(
                f"refusing to download {url}: {parts.hostname} is a private or local address ({address}); "
                "set SHARE4V_ALLOW_PRIVATE_URLS=1 to allow it"
            )


def _read_body(response: requests.Response, url: str, policy: FetchPolicy, deadline: float) -> bytes:
    """Stream the body, checking size and deadline after every arrival (read1 returns whatever has arrived)."""
    body = bytearray()
    try:
        while True:
            chunk = response.raw.read1(_CHUNK, decode_content=True)
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > policy.max_bytes:
                raise FetchError(f"image {url} is over the {policy.max_bytes}-byte limit")
            if time.monotonic() > deadline:
                raise FetchError(f"downloading {url} took over {policy.deadline_s:g} s; gave up")
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
        raise FetchError(f"cannot download image {url}: {type(err).__name__}: {err}") from None


def fetch(url: str, policy: FetchPolicy | None = None) -> bytes:
    """The body of `url`, within the policy's deadline, size and address limits.

    Raises:
        FetchError: one line naming the URL and what went wrong.
    """
    policy = policy or FetchPolicy()
    deadline = time.monotonic() + policy.deadline_s
    for _hop in range(MAX_REDIRECTS + 1):
        _check_host(url, policy)
        try:
            response = requests.get(
                url, stream=True, allow_redirects=False, timeout=(min(10.0, policy.deadline_s), policy.read_timeout_s)
            )
        except requests.RequestException as err:
            raise FetchError(f"cannot download image {url}: {type(err).__name__}: {err}") from None
        with response:
            if response.is_redirect:
                url = urljoin(url, response.headers.get("location", ""))
                continue
            try:
                response.raise_for_status()
            except requests.HTTPError as err:
                raise FetchError(f"cannot download image {url}: HTTPError: {err}") from None
            declared = int(response.headers.get("content-length") or 0)
            if declared > policy.max_bytes:
                raise FetchError(f"image {url} is {declared} bytes, over the {policy.max_bytes}-byte limit")
            return _read_body(response, url, policy, deadline)
    raise FetchError(f"too many redirects (over {MAX_REDIRECTS}) from {url}")
