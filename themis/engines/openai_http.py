"""An engine that talks to any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Uses the official ``openai`` client with its own retries switched off: we retry here so that each
failure is classified (429, 5xx, timeout, unreachable, malformed body) and a row that never
succeeds comes back with a short reason instead of an exception. 4xx other than 429 fail at once.

``GenerationRequest.prefix`` is honoured only with ``continue_final_message`` (vLLM's way of
continuing a final assistant message); ``choices`` are always ignored, as the protocol has no
portable way to constrain them, and parsing copes with free text.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import openai

from themis.config import OpenAIEngineConfig
from themis.engines.base import GenerationRequest, GenerationResult

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


class OpenAIEngine:
    """Generates with a remote OpenAI-compatible server, ``cfg.concurrency`` requests at a time."""

    def __init__(self, cfg: OpenAIEngineConfig):
        self.cfg = cfg
        # Local servers (vLLM, Themis' own) accept any key, but the client insists on one.
        self.api_key = os.environ.get(cfg.api_key_env) or "EMPTY"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, in order; failed rows carry ``error`` and never raise."""
        if not requests:
            return []
        return _run_sync(self._generate_all(list(requests)))

    async def _generate_all(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        # The client is built inside the loop: httpx's async pool is bound to the loop that uses it.
        client = openai.AsyncOpenAI(
            base_url=self.cfg.base_url,
            api_key=self.api_key,
            timeout=self.cfg.timeout_s,
            max_retries=0,
        )
        async with client:
            sem = asyncio.Semaphore(self.cfg.concurrency)
            return list(await asyncio.gather(*(self._one(client, sem, r) for r in requests)))

    async def _one(
        self, client: openai.AsyncOpenAI, sem: asyncio.Semaphore, req: GenerationRequest
    ) -> GenerationResult:
        """Try one row up to ``1 + max_retries`` times; turn the last failure into an error."""
        attempts = self.cfg.max_retries + 1
        for attempt in range(1, attempts + 1):
            try:
                # The slot is held per attempt, so a row sleeping in backoff does not block others.
                async with sem:
                    return GenerationResult(text=await self._attempt(client, req))
            except _Permanent as exc:
                return GenerationResult(error=str(exc))
            except _Retryable as exc:
                if attempt == attempts:
                    return GenerationResult(error=exc.final(attempts))
                await asyncio.sleep(self._delay(attempt, exc.retry_after))
        raise AssertionError("unreachable")  # the loop always returns

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before the next attempt: the server's hint, else doubling backoff."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), RETRY_AFTER_CAP_S)
        base = self.cfg.backoff_s * 2 ** (attempt - 1)
        # Jitter spreads out rows that failed together, so they do not all retry in lockstep.
        return base + random.uniform(0, 0.1 * base)

    async def _attempt(self, client: openai.AsyncOpenAI, req: GenerationRequest) -> str:
        """One HTTP call; returns the reply text or raises ``_Retryable`` / ``_Permanent``."""
        try:
            raw = await client.chat.completions.with_raw_response.create(**self._body(req))
        except openai.APIStatusError as exc:
            raise _classify_status(exc) from exc
        except openai.APITimeoutError as exc:
            raise _Retryable("timeout", f"no reply within {self.cfg.timeout_s}s") from exc
        except openai.APIConnectionError as exc:
            cause = exc.__cause__ or exc
            reason = str(cause) or type(cause).__name__
            raise _Retryable(f"cannot reach {self.cfg.base_url}", reason) from exc
        except openai.OpenAIError as exc:  # anything else the client raises is one row's problem
            raise _Permanent(f"{type(exc).__name__}: {exc}") from exc
        return self._prefix(req) + _parse_content(raw.http_response.text)

    def _body(self, req: GenerationRequest) -> dict[str, Any]:
        """Keyword arguments for ``chat.completions.create``."""
        messages: list[dict[str, str]] = list(req.messages)
        extra = dict(self.cfg.extra_body)
        if self._prefix(req):
            messages.append({"role": "assistant", "content": req.prefix})
            extra.update(continue_final_message=True, add_generation_prompt=False)
        body: dict[str, Any] = dict(
            model=self.cfg.model,
            messages=messages,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            extra_body=extra or None,
        )
        if req.seed is not None:
            body["seed"] = req.seed
        return body

    def _prefix(self, req: GenerationRequest) -> str:
        """The forced opening this engine sends, or "" when the server cannot continue one."""
        return req.prefix if self.cfg.continue_final_message else ""


def _classify_status(exc: openai.APIStatusError) -> Exception:
    """429 and 5xx are worth retrying (honouring Retry-After); other statuses are final."""
    status = exc.status_code
    head, detail = f"HTTP {status}", _snippet(exc.response.text)
    if status == 429 or status >= 500:
        return _Retryable(head, detail, _retry_after(exc.response.headers.get("retry-after")))
    return _Permanent(f"{head}: {detail}")


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header; the rare HTTP-date form falls back to backoff."""
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _parse_content(text: str) -> str:
    """The first choice's content from a response body; a bad body is worth another attempt."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise _Retryable("malformed body (not JSON)", _snippet(text)) from exc
    choices = data.get("choices") if isinstance(data, dict) else None
    if not choices or not isinstance(choices, list):
        raise _Retryable("malformed body (no choices)", _snippet(text))
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str) or not content:
        raise _Retryable("malformed body (empty content)", _snippet(text))
    return content


def _snippet(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "..."


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
