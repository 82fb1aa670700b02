"""Stage 7, serve: deploy the judge on Ray Serve, smoke-test it, or serve until Ctrl-C.

The deployment lives in ``themis.serving.deployment``, its application builders in
``themis.serving.app``; this module only deploys (after the promotion gate), smoke-tests and
serves. ``themis serve`` runs ``run(..., block=True)`` and serves until Ctrl-C; in ``pipeline`` the
stage deploys, optionally smoke-tests the endpoint, and shuts it down again. On a cluster (a KubeRay
RayService) ``themis.serving.app:build_judge_app`` builds the same application from a config file.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from themis.config import PipelineConfig, ServeConfig
from themis.serving.guard import load_key_hashes, split_keys
from themis.serving.promotion import check_promotion
from themis.stages import StageReport
from themis.storage import RunStore

HEALTH_TIMEOUT_S = 120.0


def check(cfg: PipelineConfig) -> None:
    """The promotion gate, before Ray starts: a judge that fails it costs the user no start-up."""
    check_promotion(cfg.serve.promotion, cfg.run.storage, cfg.run.name)


def run(cfg: PipelineConfig, store: RunStore, block: bool = False) -> StageReport:
    """Deploy the judge; serve until Ctrl-C (``block``) or smoke-test it and shut it down."""
    # Ray Serve is imported here, after the runner started Ray: importing it earlier would have Ray
    # read its settings before the local Ray's loopback-only ones are in place.
    from ray import serve

    from themis.serving.app import APP_NAME, build_app, serve_start_options, served_model_source

    serve_cfg = cfg.serve
    source = served_model_source(serve_cfg, cfg.run.storage, cfg.run.name)
    promotion = check_promotion(serve_cfg.promotion, cfg.run.storage, cfg.run.name)
    key_hashes = load_key_hashes(serve_cfg.auth, serve_cfg.host)
    port = serve_cfg.port or free_port(serve_cfg.host)
    url = f"http://{client_host(serve_cfg.host)}:{port}"
    started_here = not serve_running()
    # No gRPC proxy (HTTP on serve.host is the only way in), and Serve's own routes behind the keys.
    serve.start(**serve_start_options(serve_cfg.host, port, key_hashes))
    smoke: dict[str, Any] = {}
    try:
        serve.run(build_app(serve_cfg, source, key_hashes), name=APP_NAME, route_prefix="/", blocking=False)
        wait_until_healthy(url)
        if block:
            serve_forever(url, serve_cfg.model_name, bool(key_hashes))
        elif serve_cfg.smoke_test:
            smoke = smoke_test(url, serve_cfg.model_name, first_key(serve_cfg))
    finally:
        # Shut down only a Serve instance this call started; another one may hold other apps.
        if started_here:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    model = store.uri("model") if serve_cfg.model == "trained" else serve_cfg.model
    details: dict[str, Any] = {"smoke": smoke, "autoscaling": serve_cfg.autoscaling.model_dump(), "model": model}
    details |= {"promotion": promotion, "api_keys": len(key_hashes)}
    counts = {"smoke_requests": len(smoke)}  # one request per endpoint
    return StageReport(inputs={"model": model}, outputs={"url": url}, counts=counts, details=details)


def first_key(serve_cfg: ServeConfig) -> str | None:
    """A key for the smoke test, from where the server read its keys (never printed)."""
    keys = split_keys(os.environ.get(serve_cfg.auth.keys_env, ""))
    if not keys and serve_cfg.auth.keys_file and os.path.isfile(serve_cfg.auth.keys_file):
        keys = split_keys(Path(serve_cfg.auth.keys_file).read_text())
    return keys[0] if keys else None


def serve_running() -> bool:
    """Whether a Serve instance already runs in this Ray cluster."""
    from ray import serve

    status = serve.status()  # an empty status when no Serve controller runs
    return bool(status.proxies or status.applications)


def free_port(host: str) -> int:
    """A port nothing listens on right now (for serve.port=0)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def wait_until_healthy(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> None:
    """Poll ``GET /health`` until it answers 200 (the proxy learns routes just after deploy)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(f"{url}/health", timeout=5.0)
            if reply.status_code == 200:
                return
            last = f"HTTP {reply.status_code}"
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        time.sleep(0.25)
    raise TimeoutError(f"judge endpoint {url} not healthy after {timeout_s:.0f}s (last: {last})")


SMOKE_JUDGE = {
    "instruction": "What is the capital of France?",
    "response": "The capital of France is Paris.",
}


def smoke_test(url: str, model_name: str, api_key: str | None = None) -> dict[str, Any]:
    """One call to each endpoint; raise with the status and body if any fails."""
    import openai

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    with httpx.Client(base_url=url, timeout=120.0, headers=headers) as http:
        judge = _ok(http.post("/v1/judge", json=SMOKE_JUDGE))
        models = _ok(http.get("/v1/models"))
    client = openai.OpenAI(base_url=f"{url}/v1", api_key=api_key or "unused", max_retries=0, timeout=120.0)
    chat = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    return {
        "judge": judge,
        "models": [m["id"] for m in models["data"]],
        "chat": {"content": chat.choices[0].message.content, "usage": chat.usage.model_dump() if chat.usage else None},
    }


def _ok(reply: httpx.Response) -> Any:
    if reply.status_code != 200:
        where = f"{reply.request.method} {reply.url}"
        raise RuntimeError(f"smoke test: {where} -> HTTP {reply.status_code}: {reply.text}")
    return reply.json()


def serve_forever(url: str, model_name: str, keyed: bool = False) -> None:
    """Print how to call the endpoint, then wait for Ctrl-C."""
    auth = '-H "Authorization: Bearer $KEY" ' if keyed else ""
    key = "$KEY" if keyed else "-"  # $KEY: the shell fills in the key; it is never printed
    print(
        f"Themis judge serving {model_name!r} at {url} (Ctrl-C to stop)\n\n"
        f"  curl -s {url}/v1/judge {auth}-H 'Content-Type: application/json' \\\n"
        """    -d '{"instruction": "What is 2+2?", "response": "4"}'\n\n"""
        f"  python -c \"import openai; c = openai.OpenAI(base_url='{url}/v1', api_key='{key}'); "
        f"print(c.chat.completions.create(model='{model_name}', "
        "messages=[{'role': 'user', 'content': 'Hi'}]).choices[0].message.content)\"\n",
        flush=True,
    )
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping the judge endpoint", flush=True)
