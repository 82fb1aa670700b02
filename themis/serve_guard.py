"""What stands in front of the judge's routes: API keys and the body size limit, as one ASGI middleware.

Keys are Bearer tokens read from an environment variable and/or a file (a mounted Kubernetes
Secret), one per line or comma-separated. Only their SHA-256 hashes are kept, and compared in
constant time; a key is never logged or echoed. Every route except ``/health`` needs a valid key
once keys are configured. A body larger than the limit gets 413 before anything parses it, whether
the client announced its length or streams it in chunks.

Pure: plain ASGI, no Ray, FastAPI or torch, so the rules are testable without a server.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from themis.config import ServeAuthConfig

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health"})  # what a load balancer or probe reaches without a key


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


def error_response(status: int, message: str, code: str, extra_headers: list[tuple[bytes, bytes]] = ()) -> tuple:
    """An OpenAI-style error as (status, headers, body) for a raw ASGI reply."""
    kind = "authentication_error" if status == 401 else "invalid_request_error"
    body = json.dumps({"error": {"message": message, "type": kind, "code": code, "param": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return status, headers + list(extra_headers), body


async def send_error(send: Send, status: int, message: str, code: str, extra=()) -> None:
    status, headers, body = error_response(status, message, code, extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: 401 without a valid key (except open paths), 413 for a body over the limit.

    The settings are read per request from ``settings()`` (they are set when a replica starts, after
    the app object exists)."""

    def __init__(self, app: ASGIApp, settings: Callable[[], GuardSettings] = GuardSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        settings = self.settings()
        if scope["path"] not in settings.open_paths and not settings.authorized(scope.get("headers", [])):
            challenge = [(b"www-authenticate", b"Bearer")]
            return await send_error(
                send, 401, "a valid API key is required (Authorization: Bearer <key>)", "invalid_api_key", challenge
            )
        announced = dict(scope.get("headers", [])).get(b"content-length")
        if announced is not None and announced.isdigit() and int(announced) > settings.max_body_bytes:
            return await send_error(send, 413, self._too_large(settings), "body_too_large")
        await self._call_counting(scope, receive, send, settings)

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
