"""The judge on Ray Serve: the deployment (``JudgeServer``) and its HTTP routes.

One FastAPI ingress deployment holds an engine and answers ``POST /v1/judge``, ``POST
/v1/judge/batch``, the OpenAI-compatible ``GET /v1/models`` and ``POST /v1/chat/completions``, and
``GET /health``. The API rules live in the pure ``themis.serving.api`` (judging) and
``themis.serving.chat`` (OpenAI's protocol), keys and the body limit in ``themis.serving.guard``,
the engine's isolation in ``themis.serving.replica``, the application builders in
``themis.serving.app``; this module is the Ray shell.

Engines: ``serve.engine`` picks transformers (CPU or GPU) or vLLM (``themis.engines.vllm`` inside
this deployment, not ``ray.serve.llm``: the judge routes force the verdict sentence in two passes
and check each prompt's tokens before it joins a batch, which ray.serve.llm's OpenAI server does not
do, and one deployment keeps both engines on the same routes, limits and metrics). The engine is
made by ``engine_factory(serve_cfg, model_source)``, so CPU tests run real Serve on a fake engine.

Isolation: the transformers engine runs in a child process (``themis.engines.process``), so
Serve's request handling never holds its GIL, and a call that overruns is killed with its process.
Every prompt is counted before it joins a batch (413 beyond the limit); an engine call has a
deadline (transformers stops at ``max_time``; the request fails with 504 either way) and a replica
whose engine call overruns it anyway fails its health check, so Serve replaces it; every request
that failed in a batch of several is retried alone (``generate_isolated``), so only the request at
fault fails, whatever else its engine call held; a replica holding ``replica_capacity`` requests
answers 503 with Retry-After itself (OpenAI-shaped, counted); cancelled requests leave their batch
before it runs. Each item of ``/v1/judge/batch`` is checked on its own: a bad item fails alone.
Batching: ``themis.serving.batcher`` forms each engine batch when the engine is free, so under load every
call is full.

Ports: HTTP binds ``serve.host``; Serve's gRPC proxy is not started (no servicers). Each replica's
inter-deployment gRPC server binds ``[::]:0`` in Ray 2.60 (hard-coded in ray/serve/_private/
replica.py, no option): on Kubernetes the NetworkPolicy admits only the judge port from outside.
"""

# No `from __future__ import annotations` here: FastAPI routes inside a `serve.ingress` class need
# real annotations to see the JSON body. Serve pickles the deployment class by value when it is
# decorated: every module-level name the class uses must be defined above it.

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from themis.config import ServeConfig
from themis.engines.base import GenerationRequest, GenerationResult
from themis.judge.call import classifier_request, judge_request
from themis.judge.parsing import ParseError
from themis.models import ModelSource
from themis.serving.api import (
    both_orders_response,
    check_judge_request,
    classified_scenario,
    judge_call,
    judge_response,
    parse_batch_items,
    unclassified_response,
)
from themis.serving.batcher import EngineBatcher
from themis.serving.chat import chat_completion, chat_generation_request, model_list
from themis.serving.errors import ApiError, ErrorBody, snippet, validation_error_body
from themis.serving.guard import Guard, GuardSettings
from themis.serving.metrics import JudgeMetrics, StatusCounter
from themis.serving.models import (
    BatchItemError,
    BatchJudgeRequest,
    BatchJudgeResponse,
    ChatCompletionRequest,
    JudgeRequest,
    JudgeResponse,
    ScenarioSource,
    infer_kind,
)
from themis.serving.options import replica_capacity
from themis.serving.replica import (
    EngineFactory,
    EngineWatch,
    build_serve_engine,
    context_length,
    counting_tokenizer,
    generate_isolated,
    prompt_token_limit,
    set_generation_deadline,
)

# The engine thread gives up the GIL in every torch op and must win it back from the event loop's
# thread; at Python's default 5 ms it waited (tiny model on CPU: a batch of 8 took 761 ms in the
# replica, 657 ms at 0.5 ms; alone, 530 ms).
GIL_SWITCH_INTERVAL_S = 0.0005
CHARS_PER_TOKEN_CAP = 32  # a prompt this many times longer in characters than allowed is refused uncounted
logger = logging.getLogger("ray.serve")  # Serve's replica logs carry each request's id

api = FastAPI(title="Themis judge", description="LLM-as-a-judge with an OpenAI-compatible API.")
api.add_middleware(Guard, settings=lambda: getattr(api.state, "guard", GuardSettings()))
# The paths metrics name (any other is "other"); a test checks they are the app's routes.
ROUTE_PATHS = frozenset({"/health", "/v1/models", "/v1/judge", "/v1/judge/batch", "/v1/chat/completions"})
# Added last, so outermost: it sees the guard's refusals (401, 413, 503) as well as the routes' answers.
api.add_middleware(StatusCounter, metrics=lambda: getattr(api.state, "metrics", None), routes=ROUTE_PATHS)

# What each status means, for the API description: every route lists every status it answers.
ERROR_STATUSES = {
    400: "The fields do not fit together, or name something unknown (a scenario, n, stream).",
    401: "No valid API key (Authorization: Bearer <key>), where keys are set.",
    404: "The model named is not the one served.",
    413: "Over a limit: body bytes, prompt tokens, or items of a batch.",
    422: "Not JSON, or not this schema (types, ranges, unknown fields, lone surrogates).",
    500: "The engine failed to generate.",
    503: "The replica is busy: retry after Retry-After seconds.",
    504: "Generation did not finish within the deadline.",
}
RETRY_AFTER_DOC = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with the OpenAI error body (503 with Retry-After)."""
    docs: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        docs[status] = {"model": ErrorBody, "description": ERROR_STATUSES[status]}
        if status == 503:
            docs[status]["headers"] = RETRY_AFTER_DOC
    return docs


def batch_body_doc() -> dict[str, Any]:
    """The batch route's body for the API description: the route reads the raw body (to check
    each item on its own), so FastAPI cannot describe it; ``JudgeRequest`` is /v1/judge's component."""
    schema = BatchJudgeRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class Health(BaseModel):
    status: str = Field(description="ok, or stuck while an engine call overruns its deadline (503).")


@api.exception_handler(ApiError)
async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


@api.exception_handler(RequestValidationError)
async def _invalid_body(_: Request, exc: RequestValidationError) -> JSONResponse:
    # OpenAI-style body (its client reads error.message) instead of FastAPI's bare "detail".
    return JSONResponse(validation_error_body(list(exc.errors())), status_code=422)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    # FastAPI's own refusals in the OpenAI shape too. Its only 400 is a body it could not parse (e.g.
    # JSON nested too deeply for the parser): a malformed body, 422 like any other.
    status = 422 if exc.status_code == 400 else exc.status_code
    error = ApiError(status, snippet(exc.detail, 200), code="invalid_body" if status == 422 else f"http_{status}")
    return JSONResponse(error.body(), status_code=status, headers=getattr(exc, "headers", None))


@api.exception_handler(RecursionError)
async def _too_deep(_: Request, __: RecursionError) -> JSONResponse:
    error = ApiError(422, "request body is nested too deeply", code="invalid_body")
    return JSONResponse(error.body(), status_code=422)


async def _judge_item(judge: Callable, item: JudgeRequest | ApiError) -> JudgeResponse:
    if isinstance(item, ApiError):
        raise item  # refused when checked: it fails alone, like any other item's refusal
    return await judge(item)


def _batch_result(index: int, outcome: JudgeResponse | BaseException) -> JudgeResponse | BatchItemError:
    if isinstance(outcome, JudgeResponse):
        return outcome
    if isinstance(outcome, ApiError):
        return BatchItemError(index=index, status=outcome.status, error=outcome.body()["error"])
    logger.warning("batch item %d failed: %s", index, type(outcome).__name__)
    error = ApiError(500, "judging failed", "judge_failed", type="server_error")
    return BatchItemError(index=index, status=500, error=error.body()["error"])


def _prompt_too_long(tokens: str, limit: int) -> ApiError:
    message = f"prompt of {tokens} tokens is over this server's limit of {limit} tokens"
    return ApiError(413, message, "prompt_too_long")


@serve.deployment
@serve.ingress(api)
class JudgeServer:
    """One replica: an engine, its batcher and the HTTP routes."""

    def __init__(
        self,
        model: ModelSource,
        serve_cfg: ServeConfig,
        key_hashes: frozenset = frozenset(),
        engine_factory: EngineFactory = build_serve_engine,
    ):
        self.cfg, self.limits = serve_cfg, serve_cfg.limits
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)  # this replica's process only
        # Any: local engines also render prompts for counting (render_prompt), beyond the Engine protocol.
        self.engine: Any = engine_factory(serve_cfg, model)
        set_generation_deadline(self.engine, self.limits.generation_deadline_s)
        self.counter = counting_tokenizer(self.engine)
        self.context = context_length(self.engine)
        self.created = int(time.time())
        self.metrics = JudgeMetrics()
        self.watch = EngineWatch(self.limits.generation_deadline_s + self.limits.health_grace_s)
        self._engine_lock = threading.Lock()  # one engine call at a time, even after a timeout
        # The only place the batch size is set: from serve.batch_size. Batches form when the engine
        # is free (themis.serving.batcher says why not @serve.batch).
        self._batcher = EngineBatcher(
            self._run_batch, serve_cfg.batch_size, serve_cfg.batch_wait_s, on_batch=self.metrics.batch_size
        )
        api.state.metrics = self.metrics
        api.state.guard = GuardSettings(
            frozenset(key_hashes),
            self.limits.max_body_bytes,
            max_in_flight=replica_capacity(serve_cfg),
            retry_after_s=self.limits.retry_after_s,
        )

    def check_health(self) -> None:
        """Serve's health check: an engine call far past its deadline marks the replica dead."""
        if self.watch.stuck():
            raise RuntimeError(f"engine call running for over {self.watch.limit_s:.0f}s: replica is stuck")

    # --- the engine ------------------------------------------------------------------------------

    async def _run_batch(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        # The engine blocks; a worker thread keeps the event loop free for new requests and health
        # checks. The deadline ends the wait; the lock keeps a late call from overlapping the next.
        deadline = self.limits.generation_deadline_s + 1.0
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._generate_isolated, requests), deadline)
        except TimeoutError:
            return [GenerationResult(error="deadline: generation did not finish in time")] * len(requests)

    def _generate_isolated(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        with self._engine_lock:
            self.watch.started = time.monotonic()
            try:
                return generate_isolated(self.engine, requests)
            finally:
                self.watch.started = None

    async def _generate(self, request: GenerationRequest) -> GenerationResult:
        """One generation through the batcher, once its prompt is known to fit."""
        self._check_prompt(request)
        result = await self._batcher.submit(request)
        if result.error and result.error.startswith("deadline"):
            raise ApiError(504, "generation did not finish within the deadline", "timeout", type="server_error")
        return result

    def _check_prompt(self, request: GenerationRequest) -> None:
        """413 for a prompt over ``limits.max_prompt_tokens`` or the model's context (less the reply)."""
        limit = prompt_token_limit(self.limits, self.context, request.max_tokens)
        if self.counter is None:
            return  # an engine without a tokenizer checks its own context
        if request.text_chars > limit * CHARS_PER_TOKEN_CAP:
            raise _prompt_too_long(f"over {limit}", limit)
        try:
            n = len(
                self.counter.encode(
                    self.engine.render_prompt(request.messages) + request.prefix, add_special_tokens=False
                )
            )
        except Exception as exc:  # a conversation the chat template refuses is the client's mistake
            raise ApiError(
                400, f"the messages cannot be rendered as a chat ({type(exc).__name__})", "invalid_messages"
            ) from None
        if n > limit:
            raise _prompt_too_long(str(n), limit)

    # --- routes ----------------------------------------------------------------------------------

    @api.get("/health", response_model=Health, responses={503: {"model": Health, "description": "Stuck."}})
    def health(self) -> JSONResponse:
        """Liveness without a key: 200, or 503 while an engine call overruns its deadline."""
        stuck = self.watch.stuck()
        return JSONResponse({"status": "stuck" if stuck else "ok"}, status_code=503 if stuck else 200)

    @api.get("/v1/models", responses=documented(401, 413, 503))
    def models(self) -> dict[str, Any]:
        """The one served model, as OpenAI lists models."""
        return model_list(self.cfg.model_name, self.created)

    @api.post("/v1/judge", responses=documented(400, 401, 413, 422, 503, 504))
    async def judge(self, body: JudgeRequest) -> JudgeResponse:
        """Grade one response (single, reference) or compare two (pairwise; both_orders for a
        position-fair verdict)."""
        with self.metrics.observe("judge", infer_kind(body)):
            return await self._judge_one(body)

    @api.post(
        "/v1/judge/batch",
        response_model=BatchJudgeResponse,
        responses=documented(401, 413, 422, 503),
        openapi_extra=batch_body_doc(),
    )
    async def judge_batch(self, request: Request) -> BatchJudgeResponse:
        """Several judge calls at once (a ``BatchJudgeRequest``); each item is checked and answered
        on its own: one that is refused (400, 413, 422) fails alone, with its status."""
        with self.metrics.observe("judge_batch", "batch"):
            items = parse_batch_items(await request.body(), self.limits.max_batch_items)
            judged = (_judge_item(self._judge_one, item) for item in items)
            outcomes = await asyncio.gather(*judged, return_exceptions=True)
        return BatchJudgeResponse(results=[_batch_result(i, o) for i, o in enumerate(outcomes)])

    @api.post("/v1/chat/completions", responses=documented(400, 401, 404, 413, 422, 500, 503, 504))
    async def chat_completions(self, body: ChatCompletionRequest) -> dict[str, Any]:
        """OpenAI chat completion (no streaming, n=1), plus vLLM's continue_final_message."""
        with self.metrics.observe("chat", "chat"):
            request = chat_generation_request(body, self.cfg.model_name, self.cfg.sampling, self.limits)
            result = await self._generate(request)
            if not result.ok:
                raise ApiError(500, "generation failed", code="generation_failed", type="server_error")
            content = result.text.removeprefix(request.prefix)
            # Counted by the served tokenizer, as a client re-counting the text would.
            completion = self._count(content)
            finish = "length" if completion >= request.max_tokens else "stop"
            prompt = self._count(self.engine.render_prompt(request.messages) + request.prefix)
            return chat_completion(self.cfg.model_name, content, prompt, completion, finish)

    async def _judge_one(self, body: JudgeRequest) -> JudgeResponse:
        kind = check_judge_request(body)
        scenario = body.scenario
        if scenario is None:
            classified = await self._generate(classifier_request(body.instruction))
            try:
                scenario = classified_scenario(classified)
            except ParseError as exc:
                self.metrics.parse_failures.inc(tags={"kind": "classifier"})
                return unclassified_response(kind, classified, exc, body.scale)
        source: ScenarioSource = "given" if body.scenario else "classified"
        call = judge_call(body, kind, scenario)
        both = kind == "pairwise" and (self.cfg.both_orders if body.both_orders is None else body.both_orders)
        calls = [call, call.swapped()] if both else [call]
        # Both orders go to the batcher together, so they share one engine call.
        results = await asyncio.gather(*(self._generate(judge_request(c, self.cfg.sampling)) for c in calls))
        out = (
            both_orders_response(scenario, source, *results)
            if both
            else judge_response(kind, scenario, source, results[0], call.scale)
        )
        self.metrics.verdict(out)
        logger.info(
            "judged kind=%s scenario=%s parsed=%s winner=%s score=%s", kind, scenario, out.parsed, out.winner, out.score
        )
        return out

    def _count(self, text: str) -> int:
        """Tokens by the engine's tokenizer; 0 for an engine without one (usage is then unknown)."""
        return len(self.counter.encode(text, add_special_tokens=False)) if self.counter and text else 0
