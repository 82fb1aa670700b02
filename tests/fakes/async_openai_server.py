"""A fast OpenAI-compatible server for benchmarks: asyncio (aiohttp.web) in a process of its own.

The threaded ``FakeOpenAIServer`` is right for fault-injection tests; this one is for throughput.
It runs in its own process so that it never shares the client's GIL, answers ``POST
/v1/chat/completions`` after a set latency (a deterministic ``tail_fraction`` of requests, every
k-th by arrival, take ``tail_latency`` instead) and reports ``usage`` (prompt tokens estimated at 4
characters a token). ``GET /stats`` returns ``{"requests", "max_in_flight", "steady"}`` (``steady``:
replies a second over the middle 80% of the replies, the throughput a client sustained, whatever
its start-up and however its results come out); ``POST /stats`` resets them. ``GET /arrivals``
lists the ``time.monotonic()`` of every request's arrival (the rate a pool of clients really sent).

Run by hand: ``python -m tests.fakes.async_openai_server --latency 0.1`` prints ``port N``. From
Python::

    with AsyncOpenAIServer(latency=1.0, tail_fraction=0.1, tail_latency=5.0) as server:
        ...  # server.base_url ends in /v1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
REPLY = "The response answers the question accurately and concisely.\nRating: [[8]]"


class _State:
    def __init__(self, latency: float, tail_fraction: float, tail_latency: float):
        self.latency, self.tail_fraction, self.tail_latency = latency, tail_fraction, tail_latency
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.replied: list[float] = []  # time.monotonic() of each reply, in order
        self.arrivals: list[float] = []  # time.monotonic() of each request, in order

    def steady(self) -> float | None:
        """Replies a second from the moment 10% of them had gone out to the moment 90% had."""
        n = len(self.replied)
        lo, hi = int(0.1 * n), int(0.9 * n) - 1
        if hi <= lo or self.replied[hi] <= self.replied[lo]:
            return None
        return (hi - lo) / (self.replied[hi] - self.replied[lo])

    def delay(self) -> float:
        """This request's latency: exactly ``tail_fraction`` of requests (evenly spread) are slow."""
        k, f = self.requests, self.tail_fraction
        return self.tail_latency if f and int(k * f) != int((k - 1) * f) else self.latency


def build_app(state: _State) -> Any:
    """The aiohttp application (imported here so that importing this module stays cheap)."""
    from aiohttp import web

    async def chat(request: web.Request) -> web.Response:
        state.arrivals.append(time.monotonic())
        body = await request.json()
        state.requests += 1
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            delay = state.delay()
            if delay:
                await asyncio.sleep(delay)
        finally:
            state.in_flight -= 1
            state.replied.append(time.monotonic())
        prompt = sum(len(m.get("content") or "") for m in body.get("messages", [])) // 4
        usage = {"prompt_tokens": prompt, "completion_tokens": 16, "total_tokens": prompt + 16}
        message = {"role": "assistant", "content": REPLY}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        reply = {"id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": body.get("model")}
        return web.json_response(reply | {"choices": [choice], "usage": usage})

    async def stats(request: web.Request) -> web.Response:
        seen = {"requests": state.requests, "max_in_flight": state.max_in_flight, "steady": state.steady()}
        if request.method == "POST":
            state.requests = state.max_in_flight = 0
            state.replied, state.arrivals = [], []
        return web.json_response(seen)

    async def arrivals(request: web.Request) -> web.Response:
        return web.json_response(state.arrivals)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_route("*", "/stats", stats)
    app.router.add_get("/arrivals", arrivals)
    return app


async def _serve(state: _State, port: int) -> None:
    from aiohttp import web

    runner = web.AppRunner(build_app(state), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=2048)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"port {bound}", flush=True)
    await asyncio.Event().wait()  # until the process is killed


class AsyncOpenAIServer:
    """Runs the server in a subprocess for the length of a ``with`` block."""

    def __init__(self, latency: float = 0.0, tail_fraction: float = 0.0, tail_latency: float = 0.0):
        self.args = ["--latency", str(latency), "--tail-fraction", str(tail_fraction)]
        self.args += ["--tail-latency", str(tail_latency)]
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> AsyncOpenAIServer:
        cmd = [sys.executable, "-m", "tests.fakes.async_openai_server", *self.args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("port "):
            self.proc.kill()
            raise RuntimeError(f"the benchmark server did not start: {line!r}")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def arrivals(self) -> list[float]:
        """When each request arrived (``time.monotonic()`` of the server's process), in order."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/arrivals", timeout=10) as resp:
            return json.loads(resp.read())

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """Requests served, the most in flight at once and the steady rate (``reset`` starts afresh)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/stats", method="POST" if reset else "GET")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds every reply takes")
    parser.add_argument("--tail-fraction", type=float, default=0.0, help="share of replies that are slow")
    parser.add_argument("--tail-latency", type=float, default=0.0, help="seconds a slow reply takes")
    args = parser.parse_args()
    state = _State(args.latency, args.tail_fraction, args.tail_latency)
    try:
        asyncio.run(_serve(state, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
