"""Stage 7, serve: the judge behind an HTTP endpoint on Ray Serve, with autoscaling.

One FastAPI ingress deployment (``JudgeServer``) holds an engine and answers ``POST /v1/judge``
plus the OpenAI-compatible ``GET /v1/models`` and ``POST /v1/chat/completions``. Concurrent
requests are grouped by ``serve.batch`` into one engine call. The API rules live in the pure
``themis.judge_api``; this module is only the Ray shell.

``themis serve`` runs ``run(..., block=True)`` and serves until Ctrl-C; in ``pipeline`` the stage
deploys, optionally smoke-tests the endpoint, and shuts it down again. On a cluster (a KubeRay
RayService) ``themis.serve_app:build_judge_app`` builds the same application from a config file.

Each replica fetches the model itself (``ModelSource.fetch``): with an ``s3://`` run root the
replicas may sit on other nodes than the driver, so a copy downloaded by the driver is not theirs.
"""

# No `from __future__ import annotations` here: with it, FastAPI routes inside a `serve.ingress`
# class see string annotations it cannot resolve and treat the JSON body as a query parameter.

import asyncio
import posixpath
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application

from themis.config import (
    PipelineConfig,
    ServeConfig,
    TransformersEngineConfig,
)
from themis.engines import Engine, build_engine
from themis.engines.base import GenerationRequest, GenerationResult
from themis.judge_api import (
    ApiError,
    ChatCompletionRequest,
    JudgeRequest,
    JudgeResponse,
    ScenarioSource,
    chat_completion,
    chat_generation_request,
    check_judge_request,
    classified_scenario,
    deployment_options,
    judge_call,
    judge_response,
    model_list,
    serve_engine_config,
    unclassified_response,
    validation_error_body,
)
from themis.judging import classifier_request, judge_request
from themis.models import ModelSource, resolve_model
from themis.parsing import ParseError
from themis.runtime import init_ray
from themis.stages import StageReport
from themis.storage import RunStore

APP_NAME = "themis-judge"
HEALTH_TIMEOUT_S = 120.0
EngineFactory = Callable[[TransformersEngineConfig], Engine]

api = FastAPI(title="Themis judge", description="LLM-as-a-judge with an OpenAI-compatible API.")


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@api.exception_handler(RequestValidationError)
async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
    # OpenAI-style body (its client reads error.message) instead of FastAPI's bare "detail".
    return JSONResponse(validation_error_body(list(exc.errors())), status_code=422)


@serve.deployment
@serve.ingress(api)
class JudgeServer:
    """One replica: an engine and the HTTP routes. ``engine_factory`` lets tests swap the engine."""

    def __init__(
        self,
        model: ModelSource,
        serve_cfg: ServeConfig,
        engine_factory: EngineFactory = build_engine,
    ):
        engine_cfg = serve_engine_config(serve_cfg, str(model.fetch()))
        self.engine = engine_factory(engine_cfg)
        self.model_name = serve_cfg.model_name
        self.sampling = serve_cfg.sampling
        self.created = int(time.time())
        self._generate_batch.set_max_batch_size(serve_cfg.batch_size)

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        # The engine blocks; a worker thread keeps the event loop free for new requests and health
        # checks. serve.batch runs one batch at a time, so the model is never used concurrently.
        return await asyncio.to_thread(self.engine.generate, requests)

    async def _generate(self, request: GenerationRequest) -> GenerationResult:
        return await self._generate_batch(request)

    @api.get("/v1/models")
    def models(self) -> dict[str, Any]:
        """The one served model, as OpenAI lists models."""
        return model_list(self.model_name, self.created)

    @api.post("/v1/judge")
    async def judge(self, body: JudgeRequest) -> JudgeResponse:
        """Grade one response (single, reference) or compare two (pairwise)."""
        kind = check_judge_request(body)
        scenario = body.scenario
        source: ScenarioSource = "given" if scenario else "classified"
        if scenario is None:
            classified = await self._generate(classifier_request(body.instruction))
            try:
                scenario = classified_scenario(classified)
            except ParseError as exc:
                return unclassified_response(kind, classified, exc)
        request = judge_request(judge_call(body, kind, scenario), self.sampling, constrain=True)
        result = await self._generate(request)
        return judge_response(kind, scenario, source, result)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest) -> dict[str, Any]:
        """OpenAI chat completion (no streaming, n=1), plus vLLM's continue_final_message."""
        request = chat_generation_request(body, self.model_name, self.sampling)
        result = await self._generate(request)
        if not result.ok:
            message = f"generation failed: {result.error}"
            raise ApiError(500, message, code="generation_failed", type="server_error")
        content = result.text.removeprefix(request.prefix)
        completion_tokens = self._count_tokens(content)
        finish = "length" if completion_tokens >= request.max_tokens else "stop"
        prompt_tokens = self._count_tokens(self._prompt_text(request))
        return chat_completion(self.model_name, content, prompt_tokens, completion_tokens, finish)

    def _prompt_text(self, request: GenerationRequest) -> str:
        render = getattr(self.engine, "render_prompt", None)
        return render(request.messages) + request.prefix if render else ""

    def _count_tokens(self, text: str) -> int:
        """Tokens by the engine's tokenizer; 0 for an engine without one (usage is then unknown)."""
        tokenizer = getattr(self.engine, "tokenizer", None)
        if tokenizer is None or not text:
            return 0
        return len(tokenizer.encode(text, add_special_tokens=False))


def build_app(
    serve_cfg: ServeConfig,
    model: ModelSource | str,
    engine_factory: EngineFactory = build_engine,
) -> Application:
    """The Serve application for a model (a source, or a folder): one autoscaled deployment."""
    source = model if isinstance(model, ModelSource) else ModelSource(spec=str(model))
    deployment = JudgeServer.options(**deployment_options(serve_cfg))
    return deployment.bind(source, serve_cfg, engine_factory)


# --- the stage -----------------------------------------------------------------------------------


def run(cfg: PipelineConfig, store: RunStore, block: bool = False) -> StageReport:
    """Deploy the judge; serve until Ctrl-C (``block``) or smoke-test it and shut it down."""
    serve_cfg = cfg.serve
    source = served_model_source(serve_cfg, store)
    init_ray(cfg.ray)
    port = serve_cfg.port or free_port(serve_cfg.host)
    url = f"http://{client_host(serve_cfg.host)}:{port}"
    started_here = not serve_running()
    serve.start(http_options={"host": serve_cfg.host, "port": port})
    try:
        app = build_app(serve_cfg, source)
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=False)
        wait_until_healthy(url)
        if block:
            serve_forever(url, serve_cfg.model_name)
            smoke: dict[str, Any] = {}
        else:
            smoke = smoke_test(url, serve_cfg.model_name) if serve_cfg.smoke_test else {}
    finally:
        # Shut down only a Serve instance this call started; another one may hold other apps.
        if started_here:
            serve.shutdown()
        else:
            serve.delete(APP_NAME)
    details = {
        "smoke": smoke,
        "autoscaling": serve_cfg.autoscaling.model_dump(),
    }
    inputs = {"model": store.uri("model") if serve_cfg.model == "trained" else serve_cfg.model}
    details["model"] = inputs["model"]
    counts = {"smoke_requests": len(smoke)}  # one request per endpoint
    return StageReport(inputs=inputs, outputs={"url": url}, counts=counts, details=details)


def served_model_source(serve_cfg: ServeConfig, store: RunStore) -> ModelSource:
    """What to serve: this run's export ('trained') or the configured model, checked but not
    downloaded here (each replica fetches its own copy on its own node)."""
    if serve_cfg.model != "trained":
        if not serve_cfg.model.startswith("builtin:"):
            resolve_model(serve_cfg.model)  # a missing folder fails here, clearly
        return ModelSource(spec=serve_cfg.model)
    if not store.exists("model", "config.json"):
        raise FileNotFoundError(
            f"no trained model to serve at {store.uri('model')}: run the train stage first, "
            "or set serve.model to a Hugging Face model folder"
        )
    # A run's store sits at <root>/<run name>: the replica reopens that same run.
    return ModelSource(storage=store.storage, run_name=posixpath.basename(store.root))


def serve_running() -> bool:
    """Whether a Serve instance already runs in this Ray cluster."""
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
    """Poll ``GET /v1/models`` until it answers 200 (the proxy learns routes just after deploy)."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            reply = httpx.get(f"{url}/v1/models", timeout=5.0)
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


def smoke_test(url: str, model_name: str) -> dict[str, Any]:
    """One call to each endpoint; raise with the status and body if any fails."""
    import openai

    with httpx.Client(base_url=url, timeout=120.0) as http:
        judge = _ok(http.post("/v1/judge", json=SMOKE_JUDGE))
        models = _ok(http.get("/v1/models"))
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120.0)
    chat = client.chat.completions.create(
        model=model_name, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    return {
        "judge": judge,
        "models": [m["id"] for m in models["data"]],
        "chat": {"content": chat.choices[0].message.content, "usage": chat.usage.model_dump()},
    }


def _ok(reply: httpx.Response) -> Any:
    if reply.status_code != 200:
        where = f"{reply.request.method} {reply.url}"
        raise RuntimeError(f"smoke test: {where} -> HTTP {reply.status_code}: {reply.text}")
    return reply.json()


def serve_forever(url: str, model_name: str) -> None:
    """Print how to call the endpoint, then wait for Ctrl-C."""
    print(
        f"Themis judge serving {model_name!r} at {url} (Ctrl-C to stop)\n\n"
        f"  curl -s {url}/v1/judge -H 'Content-Type: application/json' \\\n"
        """    -d '{"instruction": "What is 2+2?", "response": "4"}'\n\n"""
        f"  python -c \"import openai; c = openai.OpenAI(base_url='{url}/v1', api_key='-'); "
        f"print(c.chat.completions.create(model='{model_name}', "
        "messages=[{'role': 'user', 'content': 'Hi'}]).choices[0].message.content)\"\n",
        flush=True,
    )
    try:
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping the judge endpoint", flush=True)
