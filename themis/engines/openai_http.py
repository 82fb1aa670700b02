"""An engine that talks to any OpenAI-compatible ``/v1/chat/completions`` endpoint.

It speaks the protocol with ``aiohttp`` directly rather than the official ``openai`` client: on a
2-core box the client costs 4.5-4.9 ms of CPU per request (one process tops out near 200 rows/s),
aiohttp 0.5-0.8 ms (the workspace's stack notes, "Measured later"); ``make bench-generation``
compares this engine with a bare aiohttp client. The protocol part is small: POST a JSON body,
read ``choices[0].message.content`` and ``usage``.

One engine holds one window of ``cfg.concurrency`` requests in flight and one keep-alive HTTP
session. Every ``agenerate`` call on the same event loop shares them, so the several batches a Ray
Data actor runs at once keep the window full: a slot is taken per attempt and given back as soon as
that reply arrives (no batch barrier), and a row sleeping in backoff holds none. The rate limits
(``qps``, ``tokens_per_minute``) are the whole pool's: in a pool the engine leases its request
starts from the pool's shared limiter (``limits``), alone it keeps them itself.

Each failure is classified (429, 5xx, timeout, unreachable, malformed body are retried with
backoff, honouring a capped Retry-After; other 4xx fail at once) and a row that never succeeds
comes back with a short reason instead of an exception. Errors never quote the API key, the
credentials of ``base_url`` or the string values of ``extra_body`` (a server may echo the request).

A forced verdict (``prefix``, ``choices``, ``closing``) needs a server that can apply it. With
``server: vllm`` it takes two calls, as the local vLLM engine takes two passes: the prefix is sent
as a final assistant message to be continued (``continue_final_message``) with structured outputs'
``choice`` over the allowed strings, then prefix + choice + closing is continued freely. Any other
server gets the prefix only with ``continue_final_message`` and never the choices (the protocol has
no portable way to constrain them); ``forced_format_note`` says so, for a stage's manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import aiohttp

from themis.config import OpenAIEngineConfig
from themis.engines import limits
from themis.engines.base import GenerationRequest, GenerationResult
from themis.redact import redact_text, redact_url, string_values, url_secrets

T = TypeVar("T")
RETRY_AFTER_CAP_S = 30.0
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
    """Generates with a remote OpenAI-compatible server, ``cfg.concurrency`` requests at a time.

    ``limits`` names the pool's shared limiter actor (``limits.start_shared_limits``); without it
    the engine enforces ``qps`` and ``tokens_per_minute`` on its own.
    """

    def __init__(self, cfg: OpenAIEngineConfig, limits: str | None = None):
        self.cfg = cfg
        # Local servers (vLLM, Themis' own) accept any key; sending a placeholder keeps them happy.
        self.api_key = os.environ.get(cfg.api_key_env) or "EMPTY"
        self._url = cfg.base_url.rstrip("/") + "/chat/completions"
        self._shown_url = redact_url(cfg.base_url)
        # Credentials in base_url (a proxy's basic auth) replace the bearer key, as with the openai client.
        self._headers = {} if _has_userinfo(cfg.base_url) else {"Authorization": f"Bearer {self.api_key}"}
        self._secrets = url_secrets(cfg.base_url) + ([self.api_key] if self.api_key != "EMPTY" else [])
        self._secrets += string_values(cfg.extra_body)  # a server's error may quote the request
        self._gate = _build_gate(cfg, limits)
        self._shared: _Client | None = None

    @property
    def supports_forced_format(self) -> bool:
        """Whether a request's forced verdict (opening and choices) is applied, not ignored."""
        return self.cfg.server == "vllm"

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
        """One row: a plain call, or the two calls of a forced verdict on a vLLM server."""
        if req.choices and self.supports_forced_format:
            return await self._forced(client, req)
        result = await self._call(client, self._body(req))
        return _after(self._prefix(req), result) if result.ok else result

    async def _forced(self, client: _Client, req: GenerationRequest) -> GenerationResult:
        """Pick one of ``choices`` right after the prefix (structured outputs), then continue freely
        from prefix + choice + closing; the reply and the usage are both calls' together."""
        picked = await self._call(client, self._choice_body(req))
        if not picked.ok:
            return picked
        if picked.text not in req.choices:
            return _failed(picked, f"constrained generation gave {picked.text!r}, not one of {list(req.choices)}")
        forced = req.prefix + picked.text + req.closing
        rest = await self._call(client, self._body(req, opening=forced), allow_empty=True)
        tokens = (picked.prompt_tokens + rest.prompt_tokens, picked.completion_tokens + rest.completion_tokens)
        return GenerationResult(forced + rest.text if rest.ok else "", rest.error, *tokens)

    async def _call(self, client: _Client, body: dict[str, Any], allow_empty: bool = False) -> GenerationResult:
        """Try one body up to ``1 + max_retries`` times; turn the last failure into an error."""
        attempts = self.cfg.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                # The slot is held per attempt, so a row sleeping in backoff does not block others.
                async with client.window:
                    if self._gate is not None:
                        await self._gate.wait()
                    return await self._attempt(client.session, body, allow_empty)
            except _Permanent as exc:
                return GenerationResult(error=self._scrub(str(exc)))
            except _Retryable as exc:
                if attempt == attempts:
                    return GenerationResult(error=self._scrub(exc.final(attempts)))
                await asyncio.sleep(self._delay(attempt, exc.retry_after))
            except Exception as exc:  # a bug or an odd library error is still one row's problem
                return GenerationResult(error=self._scrub(f"{type(exc).__name__}: {exc}"))
        raise AssertionError("unreachable")  # the loop always returns

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before the next attempt: the server's hint, else doubling backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), RETRY_AFTER_CAP_S)
        base = self.cfg.backoff_s * 2 ** (attempt - 1)
        # Jitter spreads out rows that failed together, so they do not all retry in lockstep.
        return base + random.uniform(0, 0.1 * base)

    async def _attempt(
        self, session: aiohttp.ClientSession, body: dict[str, Any], allow_empty: bool
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
            raise _classify_status(status, raw, retry_after, self._scrub)
        content, prompt_tokens, completion_tokens = _parse_reply(raw, self._scrub, allow_empty)
        if self._gate is not None:
            self._gate.record(prompt_tokens + completion_tokens)
        return GenerationResult(content, None, prompt_tokens, completion_tokens)

    def _body(self, req: GenerationRequest, opening: str | None = None) -> dict[str, Any]:
        """The JSON body; ``extra_body`` keys go to the top level, as the openai client sends them.
        ``opening`` (default: the prefix this engine forces) is sent as an assistant message to continue."""
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
        opening = self._prefix(req) if opening is None else opening
        if opening:
            messages.append({"role": "assistant", "content": opening})
            body.update(continue_final_message=True, add_generation_prompt=False)
        return body

    def _choice_body(self, req: GenerationRequest) -> dict[str, Any]:
        """The first call of a forced verdict: one of ``choices`` right after the prefix."""
        body = self._body(req, opening=req.prefix)
        # A choice takes at most one token per byte; the grammar ends the reply once one is complete.
        body["max_tokens"] = max(len(c.encode()) for c in req.choices) + 1
        body["structured_outputs"] = {"choice": list(req.choices)}
        return body

    def _prefix(self, req: GenerationRequest) -> str:
        """The forced opening this engine sends, or "" when the server cannot continue one."""
        continues = self.cfg.continue_final_message or self.cfg.server == "vllm"
        return req.prefix if continues else ""

    def _scrub(self, message: str) -> str:
        """An error message without the URL's credentials, the API key or extra_body's values."""
        return redact_text(message.replace(self.cfg.base_url, self._shown_url), self._secrets)


def _after(prefix: str, result: GenerationResult) -> GenerationResult:
    """The result with the forced opening in front of its text."""
    return GenerationResult(prefix + result.text, None, result.prompt_tokens, result.completion_tokens)


def _failed(result: GenerationResult, error: str) -> GenerationResult:
    """A failed row that keeps the usage its calls cost."""
    return GenerationResult("", error, result.prompt_tokens, result.completion_tokens)


def _build_gate(cfg: OpenAIEngineConfig, shared: str | None) -> limits.Gate | None:
    """Where requests wait for the rate limits: the pool's shared limiter, else the engine's own."""
    if not (cfg.qps or cfg.tokens_per_minute):
        return None
    if shared is not None:
        return limits.Gate(limits.find_shared_limits(shared), cfg.qps)
    own = limits.PoolLimits(cfg.qps, cfg.tokens_per_minute, limits.TPM_WINDOW_S)
    return limits.Gate(limits.LocalLeaser(own), cfg.qps)


# --- the protocol ---------------------------------------------------------------------------------


def _classify_status(status: int, raw: bytes, retry_after: str | None, scrub: Callable[[str], str]) -> Exception:
    """429 and 5xx are worth retrying (honouring Retry-After); other statuses are final."""
    head, detail = f"HTTP {status}", _snippet(raw, scrub)
    if status == 429 or status >= 500:
        return _Retryable(head, detail, _retry_after(retry_after))
    return _Permanent(f"{head}: {detail}")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; the rare HTTP-date form falls back to backoff."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _parse_reply(raw: bytes, scrub: Callable[[str], str] = str, allow_empty: bool = False) -> tuple[str, int, int]:
    """The first choice's content and the usage counts; a bad body is worth another attempt.
    ``allow_empty``: an empty content is a reply (a continuation the model ended at once)."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise _Retryable("malformed body (not JSON)", _snippet(raw, scrub)) from exc
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices, list):
        raise _Retryable("malformed body (no choices)", _snippet(raw, scrub))
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if allow_empty and content is None:
        content = ""
    if not isinstance(content, str) or not (content or allow_empty):
        raise _Retryable("malformed body (empty content)", _snippet(raw, scrub))
    usage = data.get("usage")
    if not isinstance(usage, dict):
        return content, 0, 0
    return content, _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _snippet(raw: bytes, scrub: Callable[[str], str]) -> str:
    """The start of a server's reply for an error message, scrubbed before it is cut short (a
    secret cut in half would no longer be found)."""
    text = " ".join(scrub(raw.decode("utf-8", "replace")).split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


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
