"""An engine that talks to any OpenAI-compatible ``/v1/chat/completions`` endpoint.

It speaks the protocol with ``aiohttp`` directly rather than the official ``openai`` client: on a
2-core box the client costs 4.5-4.9 ms of CPU per request (one process tops out near 200 rows/s),
aiohttp 0.5-0.8 ms (the workspace's stack notes, "Measured later"); ``make bench-generation``
compares this engine with a bare aiohttp client. The protocol part is small: POST a JSON body,
read ``choices[0].message.content`` and ``usage``.

One engine holds one window of ``cfg.concurrency`` requests in flight, one keep-alive HTTP session
and the optional rate limits (``qps``, ``tokens_per_minute``). Every ``agenerate`` call on the same
event loop shares them, so the several batches a Ray Data actor runs at once keep the window full:
a slot is taken per attempt and given back as soon as that reply arrives (no batch barrier), and a
row sleeping in backoff holds none.

Each failure is classified (429, 5xx, timeout, unreachable, malformed body are retried with
backoff, honouring a capped Retry-After; other 4xx fail at once) and a row that never succeeds
comes back with a short reason instead of an exception. Errors never quote the API key or the
credentials of ``base_url``.

``GenerationRequest.prefix`` is honoured only with ``continue_final_message`` (vLLM's way of
continuing a final assistant message); ``choices`` are always ignored, as the protocol has no
portable way to constrain them, and parsing copes with free text.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

import aiohttp

from themis.config import OpenAIEngineConfig
from themis.engines.base import GenerationRequest, GenerationResult
from themis.redact import is_secret_key, redact_text, redact_url

T = TypeVar("T")
RETRY_AFTER_CAP_S = 30.0
TPM_WINDOW_S = 60.0  # the tokens-per-minute budget looks back this far (tests shorten it)
_SNIPPET = 200  # characters of a server's reply kept in an error message


class _Retryable(Exception):
    """A failure another attempt may fix; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, head: str, detail: str, retry_after: float | None = None):
        super().__init__(f"{head}: {detail}")
        self.head, self.detail, self.retry_after = head, detail, retry_after

    def final(self, attempts: int) -> str:
        """The row's error once no attempts are left, e.g. 'HTTP 500 after 5 attempts: ...'."""
        return f"{self.head} after {attempts} attempts: {self.detail}"


class _Permanent(Exception):
    """A failure another attempt will not fix (e.g. HTTP 400 or 401)."""


@dataclass
class _Client:
    """What must belong to one event loop: the HTTP session and the window of slots."""

    loop: asyncio.AbstractEventLoop
    session: aiohttp.ClientSession
    window: asyncio.Semaphore


class OpenAIEngine:
    """Generates with a remote OpenAI-compatible server, ``cfg.concurrency`` requests at a time."""

    def __init__(self, cfg: OpenAIEngineConfig):
        self.cfg = cfg
        # Local servers (vLLM, Themis' own) accept any key; sending a placeholder keeps them happy.
        self.api_key = os.environ.get(cfg.api_key_env) or "EMPTY"
        self._url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._shown_url = redact_url(cfg.base_url)
        # Credentials in base_url (a proxy's basic auth) replace the bearer key, as with the openai client.
        self._headers = {} if _has_userinfo(cfg.base_url) else {"Authorization": f"Bearer {self.api_key}"}
        self._secrets = _url_secrets(cfg.base_url) + ([self.api_key] if self.api_key != "EMPTY" else [])
        self._pacer = _Pacer(cfg.qps) if cfg.qps else None
        self._budget = _TokenBudget(cfg.tokens_per_minute, TPM_WINDOW_S) if cfg.tokens_per_minute else None
        self._shared: _Client | None = None

    # --- entry points ---------------------------------------------------------------------------

    async def agenerate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order; failed rows carry ``error`` and never raise.

        Concurrent calls on one event loop share the window, the session and the rate limits.
        """
        if not requests:
            return []
        client = self._shared_client()
        if len(requests) == 1:  # a caller feeding rows one by one: no gather, no extra task per row
            return [await self._one(client, requests[0])]
        return list(await asyncio.gather(*(self._one(client, r) for r in requests)))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """Synchronous ``agenerate`` for callers outside a loop (or inside one, on a worker thread)."""
        if not requests:
            return []
        return _run_sync(self._generate_private(list(requests)))

    async def aclose(self) -> None:
        """Close the shared HTTP session (a later ``agenerate`` opens a new one)."""
        client, self._shared = self._shared, None
        if client is not None:
            await client.session.close()

    # --- the window and the session ---------------------------------------------------------------

    def _shared_client(self) -> _Client:
        """The client of the running loop, made on first use (a Ray actor keeps one loop for life)."""
        loop = asyncio.get_running_loop()
        client = self._shared
        if client is None or client.loop is not loop or client.session.closed:
            if client is not None and not client.loop.is_running():
                _drop(client)  # a session from a loop that has ended (e.g. an earlier asyncio.run)
            client = self._shared = self._new_client(loop)
        return client

    def __del__(self) -> None:
        # A Ray actor ends without awaiting aclose(): drop the session quietly, or aiohttp logs
        # "Unclosed client session" from every actor at exit.
        client = getattr(self, "_shared", None)  # absent if __init__ failed
        if client is not None:
            _drop(client)

    def _new_client(self, loop: asyncio.AbstractEventLoop) -> _Client:
        # No connection limit here: the window is the one limit, so there is only one queue to wait in.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
            headers=self._headers,
        )
        return _Client(loop, session, asyncio.Semaphore(self.cfg.concurrency))

    async def _generate_private(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        # The sync path runs on a loop of its own (asyncio.run closes it), so it gets its own session.
        client = self._new_client(asyncio.get_running_loop())
        try:
            return list(await asyncio.gather(*(self._one(client, r) for r in requests)))
        finally:
            await client.session.close()

    # --- one row ----------------------------------------------------------------------------------

    async def _one(self, client: _Client, req: GenerationRequest) -> GenerationResult:
        """Try one row up to ``1 + max_retries`` times; turn the last failure into an error."""
        body = self._body(req)
        attempts = self.cfg.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                # The slot is held per attempt, so a row sleeping in backoff does not block others.
                async with client.window:
                    if self._budget is not None or self._pacer is not None:
                        await self._wait_for_limits()
                    return await self._attempt(client.session, body, req)
            except _Permanent as exc:
                return GenerationResult(error=self._scrub(str(exc)))
            except _Retryable as exc:
                if attempt == attempts:
                    return GenerationResult(error=self._scrub(exc.final(attempts)))
                await asyncio.sleep(self._delay(attempt, exc.retry_after))
            except Exception as exc:  # a bug or an odd library error is still one row's problem
                return GenerationResult(error=self._scrub(f"{type(exc).__name__}: {exc}"))
        raise AssertionError("unreachable")  # the loop always returns

    async def _wait_for_limits(self) -> None:
        if self._budget is not None:
            await self._budget.wait()
        if self._pacer is not None:
            await self._pacer.wait()

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before the next attempt: the server's hint, else doubling backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), RETRY_AFTER_CAP_S)
        base = self.cfg.backoff_s * 2 ** (attempt - 1)
        # Jitter spreads out rows that failed together, so they do not all retry in lockstep.
        return base + random.uniform(0, 0.1 * base)

    async def _attempt(
        self, session: aiohttp.ClientSession, body: dict[str, Any], req: GenerationRequest
    ) -> GenerationResult:
        """One HTTP call; returns the row's result or raises ``_Retryable`` / ``_Permanent``."""
        try:
            async with session.post(self._url, json=body) as resp:
                raw = await resp.read()
                status, retry_after = resp.status, resp.headers.get("Retry-After")
        except TimeoutError as exc:  # aiohttp's timeouts subclass it
            raise _Retryable("timeout", f"no reply within {self.cfg.timeout_s}s") from exc
        except aiohttp.ClientPayloadError as exc:
            raise _Retryable("malformed body (cut short)", str(exc) or type(exc).__name__) from exc
        except aiohttp.ClientConnectionError as exc:
            raise _Retryable(f"cannot reach {self._shown_url}", str(exc) or type(exc).__name__) from exc
        except aiohttp.ClientError as exc:  # e.g. an invalid URL: another attempt will not help
            raise _Permanent(f"{type(exc).__name__}: {exc}") from exc
        if status != 200:
            raise _classify_status(status, raw, retry_after)
        content, prompt_tokens, completion_tokens = _parse_reply(raw)
        if self._budget is not None:
            self._budget.record(prompt_tokens + completion_tokens)
        return GenerationResult(self._prefix(req) + content, None, prompt_tokens, completion_tokens)

    def _body(self, req: GenerationRequest) -> dict[str, Any]:
        """The JSON body; ``extra_body`` keys go to the top level, as the openai client sends them."""
        messages: list[dict[str, str]] = list(req.messages)
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": messages,
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
        }
        if req.seed is not None:
            body["seed"] = req.seed
        body.update(self.cfg.extra_body)
        if self._prefix(req):
            messages.append({"role": "assistant", "content": req.prefix})
            body.update(continue_final_message=True, add_generation_prompt=False)
        return body

    def _prefix(self, req: GenerationRequest) -> str:
        """The forced opening this engine sends, or "" when the server cannot continue one."""
        return req.prefix if self.cfg.continue_final_message else ""

    def _scrub(self, message: str) -> str:
        """An error message without the URL's credentials or the API key."""
        return redact_text(message.replace(self.cfg.base_url, self._shown_url), self._secrets)


# --- rate limits: plain arithmetic under a thread lock, so they work on any loop -------------------


class _Pacer:
    """Evenly spaced request starts, at most ``qps`` a second: each start books the next free time."""

    def __init__(self, qps: float):
        self.interval = 1.0 / qps
        self.next_start = 0.0
        self.lock = threading.Lock()

    async def wait(self) -> None:
        with self.lock:
            now = time.monotonic()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class _TokenBudget:
    """Tokens the server reported over the last ``window_s``; a start waits while they reach the budget."""

    def __init__(self, budget: int, window_s: float):
        self.budget, self.window_s = budget, window_s
        self.spent: collections.deque[tuple[float, int]] = collections.deque()
        self.total = 0
        self.lock = threading.Lock()

    def record(self, tokens: int) -> None:
        with self.lock:
            self.spent.append((time.monotonic(), tokens))
            self.total += tokens

    async def wait(self) -> None:
        while (delay := self._delay()) > 0:
            await asyncio.sleep(delay)

    def _delay(self) -> float:
        """0 when under budget, else the seconds until the oldest spending leaves the window."""
        with self.lock:
            now = time.monotonic()
            while self.spent and self.spent[0][0] <= now - self.window_s:
                self.total -= self.spent.popleft()[1]
            if self.total < self.budget:
                return 0.0
            return self.spent[0][0] + self.window_s - now + 1e-3


# --- the protocol ---------------------------------------------------------------------------------


def _classify_status(status: int, raw: bytes, retry_after: str | None) -> Exception:
    """429 and 5xx are worth retrying (honouring Retry-After); other statuses are final."""
    head, detail = f"HTTP {status}", _snippet(raw.decode("utf-8", "replace"))
    if status == 429 or status >= 500:
        return _Retryable(head, detail, _retry_after(retry_after))
    return _Permanent(f"{head}: {detail}")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; the rare HTTP-date form falls back to backoff."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _parse_reply(raw: bytes) -> tuple[str, int, int]:
    """The first choice's content and the usage counts; a bad body is worth another attempt."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _Retryable("malformed body (not JSON)", _snippet(raw.decode("utf-8", "replace"))) from exc
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices, list):
        raise _Retryable("malformed body (no choices)", _snippet(raw.decode("utf-8", "replace")))
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content:
        raise _Retryable("malformed body (empty content)", _snippet(raw.decode("utf-8", "replace")))
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return content, 0, 0
    return content, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


def _url_secrets(url: str) -> list[str]:
    """Strings of ``url`` that must not appear in messages: user info and secret query values."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    secrets: list[str] = []
    if "@" in parts.netloc:
        userinfo = parts.netloc.rsplit("@", 1)[0]
        secrets += [userinfo, unquote(userinfo)]
        if ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            secrets += [password, unquote(password)]
    secrets += [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if is_secret_key(k)]
    return [s for s in secrets if s]


def _drop(client: _Client) -> None:
    """Close a session without awaiting it (its loop has stopped, or runs in another thread)."""
    if client.session.closed:
        return
    loop = client.loop
    if loop.is_running() and _running_loop() is not loop:
        # Sockets belong to the thread that runs their loop (a Ray Data actor runs its loop in a
        # thread of its own, and __del__ may run anywhere): close them there, never from here.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_drop_now, client)
        return
    _drop_now(client)


def _drop_now(client: _Client) -> None:
    if client.session.closed:
        return
    connector = client.session.connector
    client.session.detach()
    if connector is None:
        return
    # The public close() is a coroutine, and this loop will not run it; _close() is the synchronous
    # part that aiohttp's own finaliser calls (it closes the sockets if their loop is still open).
    with contextlib.suppress(Exception):
        connector._close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _has_userinfo(url: str) -> bool:
    try:
        return "@" in urlsplit(url).netloc
    except ValueError:
        return False


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even if this thread already runs a loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # asyncio.run refuses to nest, so a caller inside a loop (a notebook, an async server) gets a
    # private loop on a worker thread instead.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()
