"""The serve stage on a real local Ray Serve with the tiny random model (the transformers engine).

The first test runs the whole stage (deploy, smoke test, tear down); the rest share one deployment
made by a module fixture, since every Serve start and replica start costs seconds. Serve is shut
down at the end of the module so other integration tests on the session's Ray are unaffected.
Request validation, limits, keys and isolation are tested on a fake engine in test_serve_app.py;
here the real engine answers the OpenAI client and the judge routes.
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from themis.config import PipelineConfig, ServeConfig, StorageConfig
from themis.judge.prompts import PAIR_OPENING, SCORE_OPENING
from themis.judge.scenarios import load_scenarios
from themis.storage import RunStore

MODEL_NAME = "tiny-judge"
Q = "What is the capital of France?"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _small_serve(**fields) -> dict:
    """Serve settings that fit beside other tests on a 2-core machine and answer fast."""
    base = {
        "model_name": MODEL_NAME,
        "cpus_per_replica": 0.5,
        "autoscaling": {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2},
        "sampling": {"max_tokens": 8},
    }
    return base | fields


def _pipeline(tiny_model_dir: Path, root: Path, **serve) -> PipelineConfig:
    """A config whose run is ``<root>/r`` (the stage reads the run the config names)."""
    return PipelineConfig.model_validate(
        {
            "run": {"name": "r", "storage": {"root": str(root)}},
            "ray": {"num_cpus": 2, "object_store_memory_mb": 400, "profile": "small_machine"},
            "engines": {"teacher": {"kind": "transformers", "model": str(tiny_model_dir)}},
            "responses": {"pool": [{"name": "a", "engine": "teacher"}]},
            "serve": _small_serve(**serve),
        }
    )


def test_run_names_a_missing_model(tmp_path, tiny_model_dir):
    from themis.stages.serve import run

    store = RunStore(StorageConfig(root=str(tmp_path)), "r")
    with pytest.raises(FileNotFoundError, match="no trained model to serve at .*/r/model"):
        run(_pipeline(tiny_model_dir, tmp_path), store)
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        run(_pipeline(tiny_model_dir, tmp_path, model=str(missing)), store)


@pytest.mark.integration
def test_run_stage_smoke_tests_then_leaves_nothing_running(ray_local, tiny_model_dir, tmp_path):
    # Runs before the module's shared deployment exists, so run() starts (and stops) Serve itself.
    from themis.stages.serve import run, serve_running

    assert not serve_running()
    store = RunStore(StorageConfig(root=str(tmp_path)), "r")
    store.upload_dir(tiny_model_dir, "model")
    # The gate's input: below the threshold, so the stage serves only because it is forced.
    store.write_json("reports/evaluation/trained/report.json", {"overall": {"value": 0.1}})
    port = _free_port()
    forced = {"min_overall": 0.5, "min_dual_order_consistency": None, "force": True}
    report = run(_pipeline(tiny_model_dir, tmp_path, port=port, smoke_test=True, promotion=forced), store)

    assert report.outputs == {"url": f"http://127.0.0.1:{port}"}
    assert report.counts == {"smoke_requests": 3}
    smoke = report.details["smoke"]
    assert smoke["judge"]["parsed"] and smoke["judge"]["scenario_source"] == "classified"
    assert smoke["models"] == [MODEL_NAME]
    assert smoke["chat"]["usage"]["completion_tokens"] > 0
    assert report.details["autoscaling"]["max_replicas"] == 2
    assert report.inputs == {"model": store.uri("model")}
    # What the runner writes into the manifest: the override and what it overrode.
    assert report.details["promotion"]["forced"] and report.details["promotion"]["failed"] == ["overall 0.1 < 0.5"]
    assert report.details["api_keys"] == 0
    assert not serve_running()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)


# --- one shared deployment -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def judge_url(ray_local, tiny_model_dir):
    from ray import serve

    from themis.serving.app import build_app
    from themis.stages.serve import wait_until_healthy

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(ServeConfig(**_small_serve()), str(tiny_model_dir))
    serve.run(app, name="judge-test", route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, timeout_s=60)
    yield url
    serve.shutdown()


@pytest.fixture(scope="module")
def http(judge_url):
    with httpx.Client(base_url=judge_url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client(judge_url):
    return openai.OpenAI(base_url=f"{judge_url}/v1", api_key="unused", max_retries=0)


@pytest.mark.integration
def test_openai_client_lists_the_model(client):
    assert [m.id for m in client.models.list()] == [MODEL_NAME]


@pytest.mark.integration
def test_openai_client_chat_completion(client):
    chat = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Say hello."}], max_tokens=5
    )
    assert chat.object == "chat.completion" and chat.model == MODEL_NAME
    assert isinstance(chat.choices[0].message.content, str)
    assert chat.choices[0].finish_reason in ("stop", "length")
    assert chat.usage.prompt_tokens > 0 and 0 < chat.usage.completion_tokens <= 5
    # A seed makes sampling repeatable.
    sampled = [
        client.chat.completions.create(
            messages=[{"role": "user", "content": "Say hello."}],
            model=MODEL_NAME,
            max_tokens=6,
            temperature=1.0,
            seed=3,
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]


@pytest.mark.integration
def test_continue_final_message_returns_only_the_continuation(client, tiny_model_dir):
    from transformers import AutoTokenizer

    messages = [
        {"role": "user", "content": "Rate the answer."},
        {"role": "assistant", "content": SCORE_OPENING},
    ]
    chat = client.chat.completions.create(
        model=MODEL_NAME,
        messages=messages,
        max_tokens=4,
        extra_body={"continue_final_message": True, "add_generation_prompt": False},
    )
    # The prompt is the chat without the last message, then that message as the reply's start.
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    expected = len(tok.encode(prompt + SCORE_OPENING, add_special_tokens=False))
    assert chat.usage.prompt_tokens == expected
    assert chat.usage.completion_tokens == len(tok.encode(chat.choices[0].message.content, add_special_tokens=False))


def _judge(http: httpx.Client, **body) -> httpx.Response:
    return http.post("/v1/judge", json={"instruction": Q} | body)


@pytest.mark.integration
def test_judge_single_with_a_given_scenario(http):
    reply = _judge(http, response="Paris.", scenario="close_qa")
    assert reply.status_code == 200, reply.text
    out = reply.json()
    assert set(out) == {
        "kind", "scenario", "scenario_source", "score", "scale", "winner", "rationale", "output", "parsed",
        "error", "consistent", "orders",
    }  # fmt: skip
    assert (out["kind"], out["scenario"], out["scenario_source"]) == ("single", "close_qa", "given")
    assert out["parsed"] and out["error"] is None and out["winner"] is None and out["scale"] == "1-5"
    assert out["score"] in range(1, 6) and out["output"].startswith(f"{SCORE_OPENING}{out['score']}]]")


@pytest.mark.integration
def test_judge_reference_and_pairwise(http):
    ref = _judge(http, response="Lyon.", reference="Paris.", scenario="close_qa").json()
    assert ref["kind"] == "reference" and ref["parsed"] and ref["score"] in range(1, 6)
    pair = _judge(http, response_a="Paris.", response_b="Lyon.", scenario="open_qa").json()
    assert pair["kind"] == "pairwise" and pair["parsed"] and pair["score"] is None
    assert pair["winner"] in ("A", "B", "tie") and pair["output"].startswith(PAIR_OPENING)


@pytest.mark.integration
def test_judge_classifies_a_missing_scenario(http):
    out = _judge(http, response="Paris.").json()
    assert out["scenario_source"] == "classified" and out["scenario"] in load_scenarios()
    assert out["parsed"]


@pytest.mark.integration
def test_concurrent_judge_requests_are_all_answered(http):
    bodies = [{"response": f"Paris {i}.", "scenario": "close_qa"} for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(lambda b: _judge(http, **b), bodies))
    assert [r.status_code for r in replies] == [200] * 6
    assert all(r.json()["parsed"] for r in replies)
