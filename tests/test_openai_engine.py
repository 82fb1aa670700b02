"""OpenAIEngine against a real local HTTP server that injects faults (no Ray, no network)."""

from __future__ import annotations

import socket
import threading
import time

from tests.fakes.openai_server import FakeOpenAIServer
from themis.config import OpenAIEngineConfig
from themis.engines.base import GenerationRequest
from themis.engines.openai_http import OpenAIEngine


def _cfg(base_url: str, **overrides) -> OpenAIEngineConfig:
    # Short timeout and backoff keep the whole file to a few seconds.
    fields = dict(base_url=base_url, model="fake", timeout_s=0.5, backoff_s=0.01, max_retries=4)
    return OpenAIEngineConfig(**(fields | overrides))


def _requests(n: int, **kwargs) -> list[GenerationRequest]:
    return [GenerationRequest(messages=[{"role": "user", "content": f"row-{i}"}], **kwargs) for i in range(n)]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_faults_within_retries_all_recover_in_order():
    faults = {
        "row-1": ["429"],
        "row-2": ["500", "503"],
        "row-3": ["timeout"],
        "row-4": ["malformed"],
        "row-5": ["empty", "null"],
        "row-6": ["429", "500", "malformed", "timeout"],  # exactly max_retries faults
        "row-10": ["503"],
    }
    with FakeOpenAIServer(faults) as server:
        results = OpenAIEngine(_cfg(server.base_url)).generate(_requests(20))
    assert [r.error for r in results] == [None] * 20
    assert [r.text for r in results] == [f"ok: row-{i}" for i in range(20)]
    expected = {"row-1": 2, "row-2": 3, "row-3": 2, "row-4": 2, "row-5": 3, "row-6": 5, "row-10": 2}
    assert server.attempts == {f"row-{i}": expected.get(f"row-{i}", 1) for i in range(20)}


def test_faults_beyond_retries_become_row_errors():
    faults = {"row-2": ["500"] * 3, "row-5": ["malformed"] * 3, "row-7": ["timeout"] * 3}
    with FakeOpenAIServer(faults) as server:
        cfg = _cfg(server.base_url, max_retries=2, timeout_s=0.3)
        results = OpenAIEngine(cfg).generate(_requests(10))
    assert len(results) == 10
    assert results[2].error.startswith("HTTP 500 after 3 attempts")
    assert "malformed body" in results[5].error and "after 3 attempts" in results[5].error
    assert results[7].error.startswith("timeout after 3 attempts")
    ok = [i for i, r in enumerate(results) if r.ok]
    assert ok == [0, 1, 3, 4, 6, 8, 9]
    assert all(results[i].text == f"ok: row-{i}" for i in ok)
    assert server.attempts["row-2"] == server.attempts["row-5"] == server.attempts["row-7"] == 3


def test_client_error_is_not_retried():
    with FakeOpenAIServer({"row-1": ["400"]}) as server:
        results = OpenAIEngine(_cfg(server.base_url)).generate(_requests(3))
    assert server.attempts["row-1"] == 1
    assert results[1].error.startswith("HTTP 400")
    assert results[0].ok and results[2].ok


def test_concurrency_limit_is_respected():
    with FakeOpenAIServer({"row-3": ["503"], "row-8": ["429"]}, delay_s=0.05) as server:
        results = OpenAIEngine(_cfg(server.base_url, concurrency=3)).generate(_requests(15))
    assert all(r.ok for r in results)
    # Reaching the limit shows requests really overlap; never passing it shows the semaphore works.
    assert server.max_in_flight == 3


def test_unreachable_endpoint_fails_every_row_quickly():
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    start = time.monotonic()
    results = OpenAIEngine(_cfg(url, max_retries=2)).generate(_requests(4))
    assert time.monotonic() - start < 5
    assert len(results) == 4
    for r in results:
        assert not r.ok and f"cannot reach {url}" in r.error and "after 3 attempts" in r.error


def test_continue_final_message_sends_prefix_and_returns_it():
    with FakeOpenAIServer() as server:
        cfg = _cfg(server.base_url, continue_final_message=True, extra_body={"top_k": 5})
        reqs = _requests(2, prefix="Score: ", seed=7, max_tokens=9)
        results = OpenAIEngine(cfg).generate(reqs)
    assert [r.text for r in results] == ["Score: ok: row-0", "Score: ok: row-1"]
    body = next(b for b in server.bodies if b["messages"][0]["content"] == "row-0")
    assert body["messages"][-1] == {"role": "assistant", "content": "Score: "}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["top_k"] == 5 and body["seed"] == 7 and body["max_tokens"] == 9
    assert body["model"] == "fake"


def test_prefix_is_ignored_without_continue_final_message():
    with FakeOpenAIServer() as server:
        results = OpenAIEngine(_cfg(server.base_url)).generate(_requests(1, prefix="Score: "))
    assert results[0].text == "ok: row-0"
    body = server.bodies[0]
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert "continue_final_message" not in body and "seed" not in body


def test_api_key_from_env_and_generate_from_a_plain_thread(monkeypatch):
    monkeypatch.setenv("THEMIS_TEST_KEY", "sekrit")
    out: list = []
    with FakeOpenAIServer() as server:
        engine = OpenAIEngine(_cfg(server.base_url, api_key_env="THEMIS_TEST_KEY"))
        worker = threading.Thread(target=lambda: out.extend(engine.generate(_requests(2))))
        worker.start()
        worker.join(timeout=10)
    assert engine.api_key == "sekrit"
    assert [r.text for r in out] == ["ok: row-0", "ok: row-1"]
    assert OpenAIEngine(_cfg("http://x/v1", api_key_env="THEMIS_UNSET_KEY")).api_key == "EMPTY"
    assert OpenAIEngine(_cfg("http://x/v1")).generate([]) == []
