"""OpenAIEngine against a real local HTTP server that injects faults (no Ray, no network)."""

from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time
import warnings

from tests.fakes.openai_server import FakeOpenAIServer
from themis.config import OpenAIEngineConfig, TransformersEngineConfig
from themis.dataplane.call_cache import engine_fingerprint
from themis.engines import forced_format_note, limits
from themis.engines.base import GenerationRequest
from themis.engines.openai_http import OpenAIEngine, _parse_reply


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


def test_usage_is_recorded_and_missing_usage_counts_zero():
    with FakeOpenAIServer(usage=(11, 3)) as server:
        results = OpenAIEngine(_cfg(server.base_url)).generate(_requests(3))
    assert [(r.prompt_tokens, r.completion_tokens) for r in results] == [(11, 3)] * 3
    assert _parse_reply(b'{"choices": [{"message": {"content": "hi"}}]}') == ("hi", 0, 0)


def test_a_slow_row_does_not_stall_the_other_slots():
    # row-0's reply waits until the 39 other rows are answered. With a batch barrier they would wait
    # for row-0 (a deadlock until hang_s); with a continuous window they flow past it on 3 slots.
    with FakeOpenAIServer(holds={"row-0": 39}, delay_s=0.01, hang_s=5) as server:
        start = time.monotonic()
        results = OpenAIEngine(_cfg(server.base_url, concurrency=4, timeout_s=10)).generate(_requests(40))
        elapsed = time.monotonic() - start
    assert all(r.ok for r in results)
    assert server.finished[-1] == "row-0"
    assert sorted(server.finished[:-1]) == sorted(f"row-{i}" for i in range(1, 40))
    assert server.max_in_flight == 4  # row-0 plus the 3 other slots, kept busy the whole time
    assert elapsed < 5  # row-0 was released by the others finishing, not by the server's hang_s


def test_concurrent_agenerate_calls_share_one_window_and_one_session():
    with FakeOpenAIServer(delay_s=0.05, keep_alive=True) as server:
        engine = OpenAIEngine(_cfg(server.base_url, concurrency=3))

        async def run() -> list[list]:
            batches = [_requests(6)[i * 2 : i * 2 + 2] for i in range(3)] + [_requests(12)[6:]]
            first = await asyncio.gather(*(engine.agenerate(b) for b in batches))
            session = engine._shared.session
            second = await engine.agenerate(_requests(3))
            assert engine._shared.session is session  # reused across calls
            await engine.aclose()
            return [*first, second]

        out = asyncio.run(run())
    assert [r.text for batch in out[:3] for r in batch] == [f"ok: row-{i}" for i in range(6)]
    assert [r.text for r in out[3]] == [f"ok: row-{i}" for i in range(6, 12)]
    assert server.max_in_flight == 3  # one window for all four batches, not one each
    assert len(server.connections) <= 3  # keep-alive connections reused, never more than the window


def test_qps_spaces_request_starts():
    n, qps = 11, 20.0
    with FakeOpenAIServer() as server:
        start = time.monotonic()
        results = OpenAIEngine(_cfg(server.base_url, concurrency=8, qps=qps)).generate(_requests(n))
        elapsed = time.monotonic() - start
    assert all(r.ok for r in results) and len(server.arrivals) == n
    # n starts at qps take at least (n - 1) / qps: a lower bound only, never a tight timing.
    assert elapsed >= 0.9 * (n - 1) / qps
    assert server.arrivals[-1] - server.arrivals[0] >= 0.8 * (n - 1) / qps


def test_tokens_per_minute_waits_for_the_window_to_free_budget(monkeypatch):
    monkeypatch.setattr(limits, "TPM_WINDOW_S", 0.4)
    # Each reply spends 2 tokens, the budget is 4: rows start two by two, one window apart.
    with FakeOpenAIServer(usage=(1, 1)) as server:
        cfg = _cfg(server.base_url, concurrency=1, tokens_per_minute=4)
        start = time.monotonic()
        results = OpenAIEngine(cfg).generate(_requests(6))
        elapsed = time.monotonic() - start
    assert all(r.ok for r in results)
    assert elapsed >= 2 * 0.4 * 0.9
    arrivals = server.arrivals
    assert arrivals[2] - arrivals[0] >= 0.4 * 0.9 and arrivals[4] - arrivals[2] >= 0.4 * 0.9


def test_limits_are_off_by_default():
    engine = OpenAIEngine(_cfg("http://127.0.0.1:1/v1"))
    assert engine._gate is None


def test_credentials_never_appear_in_errors(monkeypatch):
    monkeypatch.setenv("THEMIS_TEST_KEY", "sk-very-secret-key")
    port = _closed_port()
    url = f"http://alice:pa55word@127.0.0.1:{port}/v1?api_key=query-secret&region=eu"
    results = OpenAIEngine(_cfg(url, api_key_env="THEMIS_TEST_KEY", max_retries=1)).generate(_requests(2))
    for r in results:
        assert not r.ok and "after 2 attempts" in r.error
        assert f"cannot reach http://***@127.0.0.1:{port}/v1" in r.error
        for secret in ("alice", "pa55word", "query-secret", "sk-very-secret-key"):
            assert secret not in r.error


def test_api_key_never_appears_in_a_server_error_that_echoes_it(monkeypatch):
    monkeypatch.setenv("THEMIS_TEST_KEY", "sk-echoed-key")
    with FakeOpenAIServer({"row-0": ["400"]}, reply=lambda body: "x") as server:
        engine = OpenAIEngine(_cfg(server.base_url, api_key_env="THEMIS_TEST_KEY"))
        assert "sk-echoed-key" not in engine._scrub("HTTP 401: bad key sk-echoed-key")
        results = engine.generate(_requests(1))
    assert results[0].error.startswith("HTTP 400")


def test_generate_inside_a_running_loop():
    with FakeOpenAIServer() as server:
        engine = OpenAIEngine(_cfg(server.base_url))

        async def caller():
            return engine.generate(_requests(2))  # sync call from async code: runs on a worker thread

        results = asyncio.run(caller())
    assert [r.text for r in results] == ["ok: row-0", "ok: row-1"]


def test_agenerate_across_event_loops_gets_a_fresh_session():
    with FakeOpenAIServer() as server:
        engine = OpenAIEngine(_cfg(server.base_url))
        first = asyncio.run(engine.agenerate(_requests(1)))

        async def then_close():
            try:
                return await engine.agenerate(_requests(2))
            finally:
                await engine.aclose()

        second = asyncio.run(then_close())
    assert [r.text for r in first + second] == ["ok: row-0", "ok: row-0", "ok: row-1"]


def test_an_engine_dropped_without_aclose_says_nothing(caplog):
    # A Ray actor ends without awaiting aclose(); aiohttp must not log "Unclosed client session".
    with FakeOpenAIServer(keep_alive=True) as server:
        engine = OpenAIEngine(_cfg(server.base_url))
        assert asyncio.run(engine.agenerate(_requests(2)))[1].ok
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)  # sockets of a closed loop: silent by default
            del engine
            gc.collect()
    assert "Unclosed" not in caplog.text


def test_an_engine_dropped_off_its_loops_thread_closes_there():
    # As in a Ray Data actor: the loop runs in a thread of its own, the engine dies on another one.
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    try:
        with FakeOpenAIServer(keep_alive=True) as server:
            engine = OpenAIEngine(_cfg(server.base_url))
            results = asyncio.run_coroutine_threadsafe(engine.agenerate(_requests(2)), loop).result(10)
            session = engine._shared.session
            del engine
            gc.collect()
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0.05), loop).result(5)  # let the close run
        assert [r.ok for r in results] == [True, True] and session.closed
    finally:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
        loop.close()


# --- extra_body values never reach an error ----------------------------------------------------------

BODY_SECRETS = ("org-tok-93bd71", "nested-s3cret-44", 'quo"ted-s3cret')


def test_extra_body_scrubbed_from_errors_a_server_echoes():
    # The server's error replies quote the whole request, extra_body included; every failure path
    # (a final 4xx, retries used up on 5xx, a body that is not JSON) must drop its string values.
    extra = {"metadata": {"x_team": BODY_SECRETS[0], "tags": [BODY_SECRETS[1], 7]}, "note": BODY_SECRETS[2]}
    extra |= {"top_k": 5, "lang": "en"}  # numbers and short words stay readable
    faults = {"row-0": ["400"], "row-1": ["500", "500"], "row-2": ["malformed", "malformed"]}
    with FakeOpenAIServer(faults, echo_errors=True) as server:
        engine = OpenAIEngine(_cfg(server.base_url, extra_body=extra, max_retries=1))
        results = engine.generate(_requests(3))
    errors = [r.error for r in results]
    assert errors[0].startswith("HTTP 400: ") and errors[1].startswith("HTTP 500 after 2 attempts")
    assert "malformed body" in errors[2]
    assert '\\"top_k\\": 5' in errors[0] and '\\"lang\\": \\"en\\"' in errors[0]  # the echo reached it
    for error in errors[:2]:
        assert "***" in error
        for secret in (*BODY_SECRETS, 'quo\\"ted-s3cret'):
            assert secret not in error, error


def test_extra_body_scrubbed_where_the_snippet_would_cut_it_in_half():
    # An error is cut to 200 characters; scrubbing after the cut would miss a secret cut in half.
    secret = "halfway-secret-" + "x" * 40
    with FakeOpenAIServer({"row-0": ["400"]}, echo_errors=True) as server:
        # 30 numbers first: the secret starts before character 200 of the reply and ends after it.
        engine = OpenAIEngine(_cfg(server.base_url, extra_body={"pad": list(range(30)), "id": secret}))
        (result,) = engine.generate(_requests(1))
    assert "halfway" not in result.error and '\\"id\\": \\"***\\"' in result.error


# --- forced verdicts, per server kind ------------------------------------------------------------------


def _verdict_reply(body: dict) -> str:
    """A vLLM-like server: the structured choice it was asked for, else a free continuation."""
    if "structured_outputs" in body:
        return body["structured_outputs"]["choice"][1]
    return " because it is right."


def _forced_requests(n: int) -> list[GenerationRequest]:
    return _requests(n, prefix="Overall rating: [[", choices=("1", "2", "3"), closing="]]", max_tokens=40, seed=3)


def test_forced_verdict_on_a_vllm_server_picks_a_choice_then_continues():
    with FakeOpenAIServer(reply=_verdict_reply, usage=(10, 2)) as server:
        engine = OpenAIEngine(_cfg(server.base_url, server="vllm", extra_body={"top_k": 5}))
        results = engine.generate(_forced_requests(2))
    assert engine.supports_forced_format and forced_format_note(engine.cfg) is None
    assert [r.text for r in results] == ["Overall rating: [[2]] because it is right."] * 2
    assert [(r.prompt_tokens, r.completion_tokens) for r in results] == [(20, 4)] * 2  # both calls
    row0 = [b for b in server.bodies if b["messages"][0]["content"] == "row-0"]
    choice, rest = sorted(row0, key=lambda b: "structured_outputs" not in b)
    assert choice["messages"][-1] == {"role": "assistant", "content": "Overall rating: [["}
    assert choice["structured_outputs"] == {"choice": ["1", "2", "3"]} and choice["max_tokens"] == 2
    assert choice["continue_final_message"] is True and choice["add_generation_prompt"] is False
    assert rest["messages"][-1] == {"role": "assistant", "content": "Overall rating: [[2]]"}
    assert rest["continue_final_message"] is True and rest["add_generation_prompt"] is False
    assert rest["max_tokens"] == 40 and "structured_outputs" not in rest
    for body in (choice, rest):
        assert body["seed"] == 3 and body["top_k"] == 5 and len(body["messages"]) == 2


def test_forced_verdict_on_a_vllm_server_refuses_an_unlisted_choice_and_allows_an_empty_ending():
    def reply(body: dict) -> str | None:
        if "structured_outputs" in body:
            return "9" if "row-0" in body["messages"][0]["content"] else "1"
        return None  # the model ended right after the closing: content null, still a reply

    with FakeOpenAIServer(reply=reply) as server:
        results = OpenAIEngine(_cfg(server.base_url, server="vllm")).generate(_forced_requests(2))
    assert results[0].error == "constrained generation gave '9', not one of ['1', '2', '3']"
    assert results[0].prompt_tokens == 1  # the call that was made is still counted
    assert results[1].ok and results[1].text == "Overall rating: [[1]]"


def test_forced_verdict_on_an_openai_server_is_not_applied_and_says_so():
    with FakeOpenAIServer() as server:
        plain = OpenAIEngine(_cfg(server.base_url))
        (result,) = plain.generate(_forced_requests(1))
        continued = OpenAIEngine(_cfg(server.base_url, continue_final_message=True))
        (prefixed,) = continued.generate(_forced_requests(1))
    assert result.text == "ok: row-0" and prefixed.text == "Overall rating: [[ok: row-0"
    plain_body, continued_body = server.bodies
    assert [m["role"] for m in plain_body["messages"]] == ["user"]
    assert continued_body["messages"][-1]["content"] == "Overall rating: [["
    for body in server.bodies:
        assert "structured_outputs" not in body and "guided_choice" not in body
    assert not plain.supports_forced_format and not continued.supports_forced_format
    note = forced_format_note(plain.cfg)
    assert "cannot force the verdict opening" in note and "server: vllm" in note
    assert "forces the verdict opening" in forced_format_note(continued.cfg)
    assert forced_format_note(TransformersEngineConfig(model="x")) is None


def test_forced_verdict_server_is_part_of_the_call_cache_fingerprint():
    # Unforced replies cached against a plain server must not be reused once the server forces them.
    plain, forced = _cfg("http://127.0.0.1:1/v1"), _cfg("http://127.0.0.1:1/v1", server="vllm")
    assert engine_fingerprint(plain) != engine_fingerprint(forced)
    assert '"server"' not in engine_fingerprint(plain)  # the keys of existing caches are unchanged
