"""A real local OpenAI-compatible HTTP server for tests, with scripted faults.

It answers ``POST /v1/chat/completions`` and ``GET /v1/models`` on 127.0.0.1 (a free port) from a
background thread. ``faults`` maps a key found in the last user message (a row id such as
"row-3") to the faults its successive attempts get; once they are used up the row gets a valid
reply, ``"ok: <last user message>"``. Fault kinds:

- "429": Too Many Requests with ``Retry-After: 0``;  "500", "503": server errors;
- "400": a permanent client error;
- "timeout": no reply for ``hang_s`` seconds (set it above the client's timeout);
- "malformed": 200 with a non-JSON body;  "empty": 200 with ``choices: []``;
- "null": 200 with a choice whose content is null.

``echo_errors`` makes every error reply quote the request's fields beyond the standard chat ones
(``extra_body``'s), as a server's validation error does (a test that secrets sent in the request
never reach an error message).

``delays`` maps a row key to the time each of its replies takes (a slow row), overriding ``delay_s``;
``holds`` maps a row key to a number of other replies that must go out before its own does (at most
``hang_s`` later): a slow row that a client's other rows must flow past, without timing.
``gate`` (settable between stages) holds every reply until that many requests have been in flight
at once (at most ``hang_s``): a window no single client can fill proves that several clients send.
Every reply reports ``usage`` (``prompt_tokens``/``completion_tokens``, settable). The server records
``attempts``, ``bodies``, ``arrivals`` (monotonic time of each request), ``finished`` (row keys in the
order their replies went out), ``max_in_flight`` and ``connections`` (distinct client sockets seen).

Usage::

    with FakeOpenAIServer({"row-3": ["500", "429"]}) as server:
        engine = OpenAIEngine(OpenAIEngineConfig(base_url=server.base_url, model="fake"))
        ...
        assert server.attempts["row-3"] == 3
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ERROR_STATUSES = {"429": 429, "500": 500, "503": 503, "400": 400}
_STANDARD_FIELDS = {"model", "messages", "max_tokens", "temperature", "top_p", "seed"}


class _Server(ThreadingHTTPServer):
    # The stdlib's listen backlog of 5 drops connections when a client opens many at once, which
    # shows up as spurious connect timeouts; a real server accepts them all.
    request_queue_size = 128
    daemon_threads = True  # a hanging "timeout" reply must not block stop()


class FakeOpenAIServer:
    """Start with ``start()``/``stop()`` or as a context manager; inspect what it received."""

    def __init__(
        self,
        faults: dict[str, list[str]] | None = None,
        *,
        hang_s: float = 2.0,
        delay_s: float = 0.0,
        model: str = "fake",
        reply: Callable[[dict[str, Any]], str] | None = None,
        delays: dict[str, float] | None = None,
        usage: tuple[int, int] = (1, 1),
        keep_alive: bool = False,
        holds: dict[str, int] | None = None,
        echo_errors: bool = False,
        gate: int | None = None,
    ):
        self.faults = {key: list(kinds) for key, kinds in (faults or {}).items()}
        self.hang_s = hang_s  # how long a "timeout" fault stays silent
        self.delay_s = delay_s  # time every request takes, so that requests overlap
        self.model = model
        self.reply = reply  # content for a request body; default: "ok: <last user message>"
        self.delays = dict(delays or {})  # per row key: seconds its replies take
        self.usage = usage  # (prompt_tokens, completion_tokens) reported with every reply
        self.holds = dict(holds or {})  # per row key: replies to others that must go out first
        self.echo_errors = echo_errors  # error replies quote the request body
        self._finished_changed = threading.Condition()
        self.gate = gate  # replies wait until this many requests were in flight at once
        self._gate_open = threading.Event()
        self._gate_deadline: float | None = None
        self.keep_alive = keep_alive  # HTTP/1.1 keep-alive, so that a client can reuse connections
        self.arrivals: list[float] = []  # time.monotonic() of each chat request, in arrival order
        self.finished: list[str] = []  # row keys (last user message) in the order replies went out
        self.connections: set[tuple[str, int]] = set()  # client (host, port) pairs seen
        self.attempts: Counter[str] = Counter()  # per fault key, else per last user message
        self.bodies: list[dict[str, Any]] = []  # every chat request body, in arrival order
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The URL to give a client, ending in /v1."""
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> FakeOpenAIServer:
        """Bind a free port and serve from a daemon thread."""
        self._httpd = httpd = _Server(("127.0.0.1", 0), _make_handler(self))
        # A short poll interval lets stop() return promptly (the default waits up to 0.5s).
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Wake any hanging replies and shut the server down."""
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def next_fault(self, body: dict[str, Any]) -> str | None:
        """Record one attempt for this request's key and return its fault, if any is left."""
        text = _last_user_text(body)
        key = self._key_for(text)
        with self._lock:
            self.bodies.append(body)
            self.arrivals.append(time.monotonic())
            self.attempts[key or text] += 1
            pending = self.faults.get(key) if key else None
            return pending.pop(0) if pending else None

    def _key_for(self, text: str) -> str | None:
        return _find_key(self.faults, text)

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            if self.gate is not None and self.in_flight >= self.gate:
                self._gate_open.set()

    def leave(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.in_flight -= 1
            self.finished.append(_last_user_text(body))
        with self._finished_changed:
            self._finished_changed.notify_all()

    def wait_for_gate(self) -> None:
        """Hold a reply until ``gate`` requests were in flight together, or until ``hang_s`` after
        the first reply was held, when the gate opens for good (a test fails on its counts, fast)."""
        if self.gate is None:
            return
        with self._lock:
            self._gate_deadline = self._gate_deadline or time.monotonic() + self.hang_s
        if not self._gate_open.wait(max(0.0, self._gate_deadline - time.monotonic())):
            self._gate_open.set()

    def wait_for_others(self, body: dict[str, Any]) -> None:
        """Hold a reply until ``holds[key]`` replies have gone out (or ``hang_s`` passes)."""
        key = _find_key(self.holds, _last_user_text(body))
        if key is None:
            return
        with self._finished_changed:
            self._finished_changed.wait_for(lambda: len(self.finished) >= self.holds[key], timeout=self.hang_s)

    def delay_for(self, body: dict[str, Any]) -> float:
        """How long this request's reply takes: its row's entry in ``delays``, else ``delay_s``."""
        key = _find_key(self.delays, _last_user_text(body))
        return self.delay_s if key is None else self.delays[key]


def _find_key(keys: Iterable[str], text: str) -> str | None:
    """The first key found in ``text`` as a whole token, so that "row-1" does not also hit "row-10"."""
    for key in keys:
        if re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", text):
            return key
    return None


def _last_user_text(body: dict[str, Any]) -> str:
    users = [m for m in body.get("messages", []) if m.get("role") == "user"]
    content = users[-1].get("content", "") if users else ""
    return content if isinstance(content, str) else json.dumps(content)


def _completion(model: str, content: str | None, usage: tuple[int, int] = (1, 1)) -> dict[str, Any]:
    message = {"role": "assistant", "content": content}
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)},
    }


def _make_handler(server: FakeOpenAIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1" if server.keep_alive else "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

        def do_GET(self) -> None:
            if self.path.rstrip("/") != "/v1/models":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})

        def do_POST(self) -> None:
            if self.path.rstrip("/") != "/v1/chat/completions":
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
            with server._lock:
                server.connections.add(self.client_address[:2])
            server.enter()
            self._body, self._left = body, False
            try:
                self._answer(body, server.next_fault(body))
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. its timeout fired); nothing to tell it
            finally:
                self._leave()

        def _leave(self) -> None:
            # Before the reply is written: once the client reads it, it may send its next request at
            # once, and counting this one as still in flight would overstate the client's window.
            if not self._left:
                self._left = True
                server.leave(self._body)

        def _answer(self, body: dict[str, Any], fault: str | None) -> None:
            delay = server.delay_for(body)
            if delay:
                server._stopping.wait(delay)
            server.wait_for_others(body)
            server.wait_for_gate()
            if fault == "timeout":
                server._stopping.wait(server.hang_s)
                self.close_connection = True
            elif fault in _ERROR_STATUSES:
                headers = {"Retry-After": "0"} if fault == "429" else {}
                extra = {k: v for k, v in body.items() if k not in _STANDARD_FIELDS}
                echo = f": unexpected fields {json.dumps(extra)}" if server.echo_errors else ""
                self._send(_ERROR_STATUSES[fault], {"error": {"message": f"fake {fault}{echo}"}}, headers)
            elif fault == "malformed":
                self._send_raw(200, b"<html>this is not json", "application/json")
            elif fault == "empty":
                self._send(200, {**_completion(server.model, "x"), "choices": []})
            elif fault == "null":
                self._send(200, _completion(server.model, None))
            elif fault is None:
                content = server.reply(body) if server.reply else f"ok: {_last_user_text(body)}"
                self._send(200, _completion(server.model, content, server.usage))
            else:
                raise ValueError(f"unknown fault kind {fault!r}")

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            self._send_raw(status, json.dumps(payload).encode(), "application/json", headers)

        def _send_raw(self, status: int, data: bytes, ctype: str, headers: dict[str, str] | None = None) -> None:
            if not getattr(self, "_left", True):
                self._leave()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler
