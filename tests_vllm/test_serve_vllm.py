"""The judge endpoint with ``serve.engine: vllm``: SmolLM2 through vLLM inside the Serve replica,
the same routes as on the transformers engine (a verdict, both orders, a chat completion, a prompt
over the context refused before it reaches vLLM)."""

from __future__ import annotations

import httpx
import pytest

from tests_vllm.conftest import MAX_MODEL_LEN
from themis.config import RayConfig, ServeConfig
from themis.models import SMOLLM2

Q = "What is the capital of France?"


@pytest.fixture(scope="module")
def judge_url():
    from ray import serve

    from themis.runtime import init_ray
    from themis.serving.app import build_app
    from themis.stages.serve import free_port, wait_until_healthy

    init_ray(RayConfig(num_cpus=2, object_store_memory_mb=400))
    port = free_port("127.0.0.1")
    serve.start(http_options={"host": "127.0.0.1", "port": port}, grpc_options={"grpc_servicer_functions": []})
    cfg = ServeConfig(
        model=SMOLLM2,
        engine="vllm",
        vllm={"max_model_len": MAX_MODEL_LEN, "enforce_eager": True},
        cpus_per_replica=2,
        autoscaling={"min_replicas": 1, "max_replicas": 1},
        sampling={"max_tokens": 16},
    )
    serve.run(build_app(cfg, SMOLLM2), name="judge-vllm", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, timeout_s=600)
    yield url
    serve.shutdown()
    import ray

    ray.shutdown()


def test_serve_vllm_judges_in_both_orders_and_chats(judge_url):
    with httpx.Client(base_url=judge_url, timeout=300) as http:
        body = {"instruction": Q, "response_a": "Paris.", "response_b": "Berlin.", "scenario": "close_qa"}
        pair = http.post("/v1/judge", json=body | {"both_orders": True}).json()
        assert pair["parsed"] and pair["winner"] in ("A", "B", "tie") and len(pair["orders"]) == 2
        single = http.post("/v1/judge", json={"instruction": Q, "response": "Paris."}).json()
        assert single["parsed"] and 1 <= single["score"] <= 5 and single["scenario_source"] == "classified"
        chat = http.post(
            "/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
        )
        assert chat.status_code == 200 and chat.json()["usage"]["completion_tokens"] > 0
        long = http.post("/v1/judge", json={"instruction": Q, "response": "word " * 3000, "scenario": "close_qa"})
        # The context (2048) less the reply (16) and the forced verdict (8): refused before vLLM sees it.
        assert long.status_code == 413 and "limit of 2024 tokens" in long.json()["error"]["message"]
