"""What stands in front of the judge's routes: API keys, the body size limit and the replica's
admission limit, as one ASGI middleware (``Guard``); and ``ProxyGuard`` for Serve's own proxy.

Keys are Bearer tokens read from an environment variable and/or a file (a mounted Kubernetes
Secret), one per line or comma-separated. Only their SHA-256 hashes are kept, and compared in
constant time; a key is never logged or echoed. Every route except ``/health`` needs a valid key
once keys are configured. A body larger than the limit gets 413 before anything parses it, whether
the client announced its length or streams it in chunks. A replica holding as many requests as it
may answers 503 with Retry-After at once. Every refusal is an OpenAI-style error body.

``ProxyGuard`` wraps Serve's HTTP proxy, which answers its own routes before any replica sees them:
``/-/routes`` (the route map) needs a key where keys are set; ``/-/healthz`` stays open, because
load balancers and Kubernetes probes call it without credentials and it tells nothing but "healthy".
Serve's own plain-text errors (its backstop 503 queue, 404, 500) become the OpenAI shape, headers
(Retry-After) kept.

Pure: plain ASGI, no Ray, FastAPI or torch, so the rules are testable without a server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from themis.config import ServeAuthConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"  # Serve's proxy reads it at start
PROXY_KEY_HASHES_ENV = "THEMIS_PROXY_KEY_HASHES"  # hashes only: a key itself never enters Ray's env
DEFAULT_KEYS_ENV = "THEMIS_JUDGE_API_KEYS"  # ServeAuthConfig's default, as a pod's env may set it
PROXY_KEYS_FILE_ENV = "THEMIS_JUDGE_KEYS_FILE"  # a mounted Secret's file, read by the proxy callback
OPEN_PATHS = frozenset({"/health"})  # what a load balancer or probe reaches without a key
PROXY_OPEN_PATHS = frozenset({"/-/healthz"})  # Serve's proxy health check, for probes
ERROR_TYPES = {401: "authentication_error", 503: "server_error"}  # else invalid_request_error


class KeyConfigError(ValueError):
    """Keys are required but none could be read; the message says where they were looked for."""


def hash_key(key: str) -> str:
    """The SHA-256 hex digest a key is kept as."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def split_keys(text: str) -> list[str]:
    """Keys in a text: one per line or comma-separated; blank entries and # comments dropped."""
    entries = (part.strip() for line in text.splitlines() for part in line.split(","))
    return [e for e in entries if e and not e.startswith("#")]


def load_key_hashes(cfg: ServeAuthConfig, host: str) -> frozenset[str]:
    """The hashes of every configured key. Raises KeyConfigError when keys are required (by
    config, or because ``host`` is not loopback) and none are found."""
    keys = split_keys(os.environ.get(cfg.keys_env, ""))
    if cfg.keys_file:
        path = Path(cfg.keys_file)
        if path.is_file():
            keys += split_keys(path.read_text())
        elif cfg.required:
            raise KeyConfigError(f"serve.auth.keys_file {cfg.keys_file} does not exist")
    required = cfg.required if cfg.required is not None else not is_loopback(host)
    if required and not keys:
        where = f"${cfg.keys_env}" + (f" or {cfg.keys_file}" if cfg.keys_file else "")
        raise KeyConfigError(
            f"serving on {host} needs API keys: set {where} (one or more keys), "
            "or serve on 127.0.0.1, or set serve.auth.required=false"
        )
    return frozenset(hash_key(k) for k in keys)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class GuardSettings:
    """What the guard enforces; ``key_hashes`` empty = no keys needed."""

    key_hashes: frozenset[str] = frozenset()
    max_body_bytes: int = 1_000_000
    open_paths: frozenset[str] = field(default=OPEN_PATHS)
    max_in_flight: int = 0  # requests (open paths aside) held at once; 0 = no limit
    retry_after_s: int = 2

    def authorized(self, headers: Iterable[tuple[bytes, bytes]]) -> bool:
        """Whether the headers carry ``Authorization: Bearer <a configured key>``."""
        if not self.key_hashes:
            return True
        value = dict(headers).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        digest = hash_key(token.strip())
        return any(hmac.compare_digest(digest, h) for h in self.key_hashes)


class BodyTooLarge(Exception):
    """Raised inside ``receive`` when a streamed body passes the limit."""


def error_response(status: int, message: str, code: str, extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> tuple:
    """An OpenAI-style error as (status, headers, body) for a raw ASGI reply."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = json.dumps({"error": {"message": message, "type": kind, "code": code, "param": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, headers + list(extra_headers), body


async def send_error(send: Send, status: int, message: str, code: str, extra=()) -> None:
    """Send an OpenAI-style error as the whole reply."""
    status, headers, body = error_response(status, message, code, extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_unauthorized(send: Send) -> None:
    """401 with a Bearer challenge; the key given (if any) is never echoed."""
    message = "a valid API key is required (Authorization: Bearer <key>)"
    await send_error(send, 401, message, "invalid_api_key", [(b"www-authenticate", b"Bearer")])


class Guard:
    """ASGI middleware: 401 without a valid key (except open paths), 413 for a body over the limit.

    The settings are read per request from ``settings()`` (they are set when a replica starts, after
    the app object exists)."""

    def __init__(self, app: ASGIApp, settings: Callable[[], GuardSettings] = GuardSettings):
        self.app, self.settings = app, settings
        self.in_flight = 0  # requests past the checks and not yet answered (one event loop: no lock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings = self.settings()
        is_open = scope["path"] in settings.open_paths
        if not is_open and not settings.authorized(scope.get("headers", [])):
            return await send_unauthorized(send)
        announced = dict(scope.get("headers", [])).get(b"content-length")
        if announced is not None and announced.isdigit() and int(announced) > settings.max_body_bytes:
            return await send_error(send, 413, self._too_large(settings), "body_too_large")
        if is_open:
            return await self._call_counting(scope, receive, send, settings)
        if settings.max_in_flight and self.in_flight >= settings.max_in_flight:
            message = f"this replica is busy with {self.in_flight} requests; retry after {settings.retry_after_s}s"
            retry = [(b"retry-after", str(settings.retry_after_s).encode())]
            return await send_error(send, 503, message, "overloaded", retry)
        self.in_flight += 1
        try:
            await self._call_counting(scope, receive, send, settings)
        finally:
            self.in_flight -= 1

    async def _call_counting(self, scope: Scope, receive: Receive, send: Send, settings: GuardSettings) -> None:
        """Run the app with a ``receive`` that stops a chunked body at the limit. The app may turn
        the stop into its own error reply; that reply is replaced by the 413."""
        seen, over, replied = 0, False, False

        async def counted_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > settings.max_body_bytes:
                over = True
                raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal replied
            if not over:
                replied = replied or message["type"] == "http.response.start"
                return await send(message)
            if not replied:  # the app's own reply to the stopped body becomes the 413
                replied = True
                await send_error(send, 413, self._too_large(settings), "body_too_large")

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            if not replied:
                await send_error(send, 413, self._too_large(settings), "body_too_large")

    @staticmethod
    def _too_large(settings: GuardSettings) -> str:
        return f"request body is larger than this server's limit of {settings.max_body_bytes} bytes"


class ProxyGuard:
    """ASGI middleware for Serve's HTTP proxy (``serve.start(http_options={"middlewares": ...})``).

    Serve's internal routes (``/-/...``) need a key where keys are set, ``/-/healthz`` aside (see
    the module docstring). Serve's own plain-text error replies become OpenAI-style JSON with their
    status and headers kept; replies from the judge's app (already JSON) pass untouched."""

    def __init__(self, app: ASGIApp, key_hashes: Iterable[str] = ()):
        self.app = app
        self.settings = GuardSettings(frozenset(key_hashes), open_paths=PROXY_OPEN_PATHS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        internal = path.startswith("/-/") and path not in self.settings.open_paths
        if internal and not self.settings.authorized(scope.get("headers", [])):
            return await send_unauthorized(send)
        await self.app(scope, receive, _json_errors(send))


def _json_errors(send: Send) -> Send:
    """A ``send`` that turns a plain-text error reply (status >= 400) into an OpenAI-style one."""
    held: Message | None = None
    parts: list[bytes] = []

    async def wrapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message["status"] >= 400 and not _is_json(message):
            held = message  # wait for the body, then reply in JSON instead
            return
        if held is None or message["type"] != "http.response.body":
            return await send(message)
        parts.append(message.get("body", b""))
        if message.get("more_body"):
            return
        status = held["status"]
        kept = [(k, v) for k, v in held.get("headers", []) if k.lower() not in (b"content-type", b"content-length")]
        text = b"".join(parts).decode("utf-8", errors="replace").strip() or f"HTTP {status}"
        await send_error(send, status, text[:500], "overloaded" if status == 503 else f"http_{status}", kept)

    return wrapped


def _is_json(start: Message) -> bool:
    content_type = dict(start.get("headers", [])).get(b"content-type", b"")
    return content_type.split(b";")[0].strip().lower() == b"application/json"


def proxy_env(key_hashes: Iterable[str]) -> dict[str, str]:
    """Environment for Serve's proxy that puts ``ProxyGuard`` (with these key hashes) in front of it."""
    return {
        PROXY_CALLBACK_ENV: "themis.serving.guard:proxy_middlewares",
        PROXY_KEY_HASHES_ENV: ",".join(sorted(key_hashes)),
    }


def proxy_middlewares() -> list[Any]:
    """Serve's proxy callback: ``ProxyGuard`` with the key hashes of ``$THEMIS_PROXY_KEY_HASHES``,
    of the keys in ``$THEMIS_JUDGE_API_KEYS``, and of the keys in the file ``$THEMIS_JUDGE_KEYS_FILE``
    (a RayService pod mounts its Secret as a file: the keys never sit in the environment)."""
    from starlette.middleware import Middleware  # only in the proxy: this module stays plain ASGI

    hashes = set(split_keys(os.environ.get(PROXY_KEY_HASHES_ENV, "")))
    keys = split_keys(os.environ.get(DEFAULT_KEYS_ENV, ""))
    keys_file = os.environ.get(PROXY_KEYS_FILE_ENV)
    if keys_file:
        keys += split_keys(Path(keys_file).read_text())  # a missing file stops the proxy: fail closed
    hashes |= {hash_key(k) for k in keys}
    return [Middleware(ProxyGuard, key_hashes=frozenset(hashes))]
