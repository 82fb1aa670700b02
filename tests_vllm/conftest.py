"""The vLLM tier: SmolLM2-135M-Instruct through ``kind: vllm`` on CPU (run by ``make test-vllm``).

It lives outside ``tests/`` so the default suite never collects it: it needs the separate
``.venv-vllm`` (vllm-cpu pins its own stack). One engine serves the whole session, because
starting vLLM costs tens of seconds.
"""

from __future__ import annotations

import os

import pytest

# Before vLLM or Ray start: stay on loopback, keep torch to the cores we have, keep vLLM's CPU
# KV cache small (its default takes GiBs the tests do not need).
for _key, _value in {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

pytest.importorskip("vllm", reason="the vLLM tier needs vllm-cpu: run `make test-vllm`")

from themis.config import VLLMEngineConfig  # noqa: E402
from themis.models import SMOLLM2  # noqa: E402

MAX_MODEL_LEN = 2048  # SmolLM2's 8192 would only grow the KV cache; judge prompts fit in 2048


def engine_config(**overrides) -> VLLMEngineConfig:
    """The tier's engine: the built-in SmolLM2 on CPU, small context, no graph capture."""
    fields = {"model": SMOLLM2, "max_model_len": MAX_MODEL_LEN, "enforce_eager": True, "batch_size": 16}
    return VLLMEngineConfig(**(fields | overrides))


@pytest.fixture(scope="session")
def vllm_engine():
    """One ``VLLMEngine`` for the session, made the way stages make it (``build_engine``)."""
    from themis.engines import build_engine

    engine = build_engine(engine_config())
    yield engine
    engine.close()  # now, while pytest's output streams are still open
