"""API keys and the body limit as plain ASGI, without a server (milliseconds)."""

from __future__ import annotations

import asyncio
import json

import pytest

from themis.config import ServeAuthConfig
from themis.serve_guard import Guard, GuardSettings, KeyConfigError, hash_key, is_loopback, load_key_hashes, split_keys


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
        "import sys, themis.serve_guard, themis.promotion, themis.judge_api; "
        "print([m for m in ('ray', 'torch', 'fastapi', 'vllm') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
