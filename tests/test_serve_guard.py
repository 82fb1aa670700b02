"""API keys and the body limit as plain ASGI, without a server (milliseconds)."""

from __future__ import annotations

import asyncio
import json

import pytest

from themis.config import ServeAuthConfig
from themis.serving.guard import (
    Guard,
    GuardSettings,
    KeyConfigError,
    ProxyGuard,
    hash_key,
    is_loopback,
    load_key_hashes,
    proxy_env,
    proxy_middlewares,
    split_keys,
)


async def _echo_app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(len(body)).encode()})


def _call(settings: GuardSettings, path="/v1/judge", headers=(), chunks=(b"{}",)) -> tuple[int, dict, bytes]:
    """Run one request through the guard; returns (status, headers, body)."""
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict] = []

    async def receive():
        return pending.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "path": path, "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    asyncio.run(Guard(_echo_app, lambda: settings)(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


KEYED = GuardSettings(key_hashes=frozenset({hash_key("alpha"), hash_key("beta")}), max_body_bytes=2048)


@pytest.mark.parametrize(
    "headers, status",
    [
        ((), 401),
        ((("Authorization", "Bearer wrong"),), 401),
        ((("Authorization", "alpha"),), 401),  # no scheme
        ((("Authorization", "Basic alpha"),), 401),
        ((("Authorization", "Bearer alpha"),), 200),
        ((("Authorization", "bearer beta"),), 200),
    ],
)
def test_api_key_checks(headers, status):
    got, response_headers, body = _call(KEYED, headers=headers)
    assert got == status
    if status == 401:
        assert json.loads(body)["error"]["code"] == "invalid_api_key"
        assert response_headers[b"www-authenticate"] == b"Bearer"
        assert b"alpha" not in body and b"wrong" not in body


def test_api_key_not_needed_for_health_or_without_keys():
    assert _call(KEYED, path="/health")[0] == 200
    assert _call(GuardSettings())[0] == 200


def test_body_limit_by_length_header_and_by_chunks():
    auth = (("Authorization", "Bearer alpha"),)
    announced = _call(KEYED, headers=auth + (("Content-Length", "5000"),), chunks=(b"x" * 5000,))
    assert announced[0] == 413 and json.loads(announced[2])["error"]["code"] == "body_too_large"
    streamed = _call(KEYED, headers=auth, chunks=(b"x" * 1500, b"x" * 1500))  # no length given
    assert streamed[0] == 413
    assert _call(KEYED, headers=auth, chunks=(b"x" * 1000, b"x" * 1000))[:1] == (200,)


def test_api_keys_from_env_and_file_hashed(tmp_path, monkeypatch):
    keys_file = tmp_path / "keys"
    keys_file.write_text("# rotated 2026-11\nfile-key-1\nfile-key-2\n")
    monkeypatch.setenv("THEMIS_JUDGE_API_KEYS", "env-key, other")
    hashes = load_key_hashes(ServeAuthConfig(keys_file=str(keys_file)), "0.0.0.0")
    assert hashes == {hash_key(k) for k in ("env-key", "other", "file-key-1", "file-key-2")}
    assert not any("key" in h for h in hashes)  # only digests are kept
    assert split_keys("a,b\n\n c \n#x") == ["a", "b", "c"]


def test_api_keys_required_off_loopback(monkeypatch):
    monkeypatch.delenv("THEMIS_JUDGE_API_KEYS", raising=False)
    assert load_key_hashes(ServeAuthConfig(), "127.0.0.1") == frozenset()
    with pytest.raises(KeyConfigError, match="0.0.0.0 needs API keys.*THEMIS_JUDGE_API_KEYS"):
        load_key_hashes(ServeAuthConfig(), "0.0.0.0")
    with pytest.raises(KeyConfigError):
        load_key_hashes(ServeAuthConfig(required=True), "127.0.0.1")
    assert load_key_hashes(ServeAuthConfig(required=False), "0.0.0.0") == frozenset()
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("10.0.0.1")


def test_guard_and_promotion_import_no_heavy_stack():
    import subprocess
    import sys

    code = (
        "import sys, themis.serving.guard, themis.serving.promotion, themis.serving.api; "
        "print([m for m in ('ray', 'torch', 'fastapi', 'vllm') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- a busy replica answers 503 itself, OpenAI-shaped -----------------------------------------------


def test_busy_replica_refuses_with_an_openai_503_and_retry_after():
    settings = GuardSettings(max_in_flight=2, retry_after_s=3)
    release = asyncio.Event()

    async def slow_app(scope, receive, send):
        await release.wait()
        await _echo_app(scope, receive, send)

    async def one(guard, path="/v1/judge"):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            sent.append(message)

        await guard({"type": "http", "path": path, "headers": []}, receive, send)
        return sent

    async def main():
        guard = Guard(slow_app, lambda: settings)
        held = [asyncio.create_task(one(guard)) for _ in range(2)]
        await asyncio.sleep(0.01)
        refused = await one(guard)
        release.set()
        health = await one(guard, "/health")  # probes are never refused as busy
        return refused, health, [await t for t in held], guard.in_flight

    refused, health, held, in_flight = asyncio.run(main())
    assert refused[0]["status"] == 503 and dict(refused[0]["headers"])[b"retry-after"] == b"3"
    error = json.loads(refused[1]["body"])["error"]
    assert (error["type"], error["code"]) == ("server_error", "overloaded") and error["message"]
    assert health[0]["status"] == 200 and [h[0]["status"] for h in held] == [200, 200]
    assert in_flight == 0  # every admitted request let go of its place


# --- Serve's proxy: internal routes keyed, its own errors OpenAI-shaped ---------------------------


async def _serve_proxy(scope, receive, send):
    """What Serve's proxy answers itself: the route map, its health check, a plain-text 503."""
    if scope["path"] == "/-/routes":
        body, status, kind = b'{"/":"themis-judge"}', 200, b"application/json"
    elif scope["path"] == "/-/healthz":
        body, status, kind = b"success", 200, b"text/plain; charset=utf-8"
    else:
        body, status, kind = b"Request dropped due to backpressure", 503, b"text/plain; charset=utf-8"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode())]
    if status == 503:
        headers.append((b"retry-after", b"3"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _via_proxy(path, headers=(), hashes=KEYED.key_hashes):
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "path": path, "headers": [(k.lower().encode(), v.encode()) for k, v in headers]}
    asyncio.run(ProxyGuard(_serve_proxy, key_hashes=hashes)(scope, receive, send))
    return sent[0]["status"], dict(sent[0]["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_serve_internal_routes_need_a_key_where_keys_are_set():
    status, headers, body = _via_proxy("/-/routes")
    assert status == 401 and b"themis-judge" not in body and headers[b"www-authenticate"] == b"Bearer"
    assert json.loads(body)["error"]["code"] == "invalid_api_key"
    assert _via_proxy("/-/routes", [("Authorization", "Bearer wrong")])[0] == 401
    assert _via_proxy("/-/routes", [("Authorization", "Bearer alpha")])[2] == b'{"/":"themis-judge"}'
    assert _via_proxy("/-/healthz")[:1] == (200,)  # probes call it without a key
    assert _via_proxy("/-/routes", hashes=())[0] == 200  # no keys set: nothing to ask for


def test_serve_plain_text_errors_become_openai_errors_with_their_headers():
    status, headers, body = _via_proxy("/v1/judge", [("Authorization", "Bearer alpha")])
    assert status == 503 and headers[b"retry-after"] == b"3"
    assert headers[b"content-type"] == b"application/json" and int(headers[b"content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert (error["type"], error["code"]) == ("server_error", "overloaded")
    assert "backpressure" in error["message"]


def test_proxy_callback_reads_hashes_and_keys_from_its_environment(monkeypatch):
    env = proxy_env({hash_key("alpha")})
    assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "themis.serving.guard:proxy_middlewares"
    assert "alpha" not in str(env)  # hashes only: a key never enters Ray's environment
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("THEMIS_JUDGE_API_KEYS", "beta")
    (middleware,) = proxy_middlewares()
    assert middleware.cls is ProxyGuard
    assert middleware.kwargs["key_hashes"] == {hash_key("alpha"), hash_key("beta")}


def test_proxy_guard_reads_the_mounted_keys_file(tmp_path, monkeypatch) -> None:
    from themis.serving.guard import PROXY_KEYS_FILE_ENV, hash_key, proxy_middlewares

    keys = tmp_path / "keys"
    keys.write_text("first-key\nsecond-key\n")
    monkeypatch.delenv("THEMIS_JUDGE_API_KEYS", raising=False)
    monkeypatch.setenv(PROXY_KEYS_FILE_ENV, str(keys))
    (middleware,) = proxy_middlewares()
    assert middleware.kwargs["key_hashes"] == {hash_key("first-key"), hash_key("second-key")}
    monkeypatch.setenv(PROXY_KEYS_FILE_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError):  # fail closed: no proxy without its keys
        proxy_middlewares()
