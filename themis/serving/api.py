"""The HTTP API of the served judge, without the server: request and response models, request
checks, and the request -> prompt -> verdict logic.

``themis.stages.serve`` wraps this in a Ray Serve deployment. Keeping it here means every rule of
the API is testable in milliseconds. Two endpoints families:

* ``POST /v1/judge``: Themis' own judging call (single, reference-guided or pairwise), rendered,
  requested and parsed by ``themis.judge.call`` like every other judge in the project. Single and
  reference grading take a ``scale`` (0-1, 1-3, 1-5 or 1-10; default 1-5), echoed in the answer.
* ``GET /v1/models`` and ``POST /v1/chat/completions``: enough of OpenAI's protocol for the
  official ``openai`` client, including vLLM's ``continue_final_message`` extension.

Pure: imports no Ray, torch or FastAPI.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from themis.config import Sampling, ServeConfig, ServeLimits, TransformersEngineConfig, VLLMEngineConfig
from themis.engines.base import GenerationRequest, GenerationResult
from themis.judge.call import JudgeCall, Kind, parse_classification, parse_verdict, winner_in_ab_order
from themis.judge.parsing import ParseError
from themis.judge.scales import DEFAULT_SCALE
from themis.judge.scenarios import load_scenarios

ScenarioSource = Literal["given", "classified"]
Winner = Literal["A", "B", "tie"]
ScaleName = Literal["1-5", "0-1", "1-3", "1-10"]  # themis.judge.scales.SCALES as the schema's enum (a test checks)
DEFAULT_LIMITS = ServeLimits()
SNIPPET_CHARS = 80  # the most of a client's own input an error message repeats


def snippet(text: object, limit: int = SNIPPET_CHARS) -> str:
    """A short, printable excerpt of client input for an error message (never the whole of it); a
    lone surrogate is shown escaped, so the reply can always be encoded."""
    text = str(text).encode("utf-8", errors="backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


def _encodable(text: str) -> str:
    # A lone surrogate ("\udfff") is valid JSON but no tokenizer can take it: refuse it as input.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode (a lone surrogate at position {exc.start})") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


class ApiError(Exception):
    """A request the server refuses; becomes an OpenAI-style error body with this HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        type: str = "invalid_request_error",
        param: str | None = None,
        detail: list[dict[str, Any]] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.type, self.param, self.detail = type, param, detail

    def body(self) -> dict[str, Any]:
        """``{"error": {...}}`` as OpenAI returns it, so its client raises the right exception."""
        error = {"message": self.message, "type": self.type, "code": self.code, "param": self.param}
        return {"error": error} | ({"detail": self.detail} if self.detail is not None else {})


class ErrorDetail(BaseModel):
    """The ``error`` object of every refusal, as OpenAI's clients read it."""

    message: str
    type: str = Field(description="invalid_request_error, authentication_error or server_error.")
    code: str | None = None
    param: str | None = None


class ErrorBody(BaseModel):
    """Every error reply: ``{"error": {...}}``; a schema error adds pydantic's list in ``detail``."""

    error: ErrorDetail
    detail: list[dict[str, Any]] | None = None


def validation_error(errors: list[dict[str, Any]], where: str = "") -> ApiError:
    """A 422 from pydantic errors: one readable line per problem (each place prefixed by ``where``),
    plus the list."""
    detail = [
        {
            "loc": [snippet(p, 40) if isinstance(p, str) else p for p in e.get("loc", ())],
            "msg": snippet(e.get("msg"), 200),
            "type": e.get("type"),
        }
        for e in errors
    ]
    lines = [f"{where}{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in detail]
    return ApiError(422, "; ".join(lines), "invalid_body", detail=detail)


def validation_error_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A 422 body from pydantic errors (see ``validation_error``)."""
    return validation_error(errors).body()


# --- POST /v1/judge ------------------------------------------------------------------------------


class JudgeRequest(BaseModel):
    """What to judge. ``kind`` is inferred when absent: pairwise if response_a/response_b are given,
    reference if a reference is given, else single."""

    model_config = ConfigDict(extra="forbid")

    instruction: Text = Field(min_length=1, description="The user instruction the responses answer.")
    response: Text | None = Field(None, description="The response to grade (single, reference).")
    response_a: Text | None = Field(None, description="First response of a pair (pairwise).")
    response_b: Text | None = Field(None, description="Second response of a pair (pairwise).")
    reference: Text | None = Field(None, description="Reference answer (needed for reference).")
    scenario: Text | None = Field(None, min_length=1, max_length=64, description="Scenario id; None = classify it.")
    kind: Kind | None = Field(None, description="single, reference or pairwise; None = infer.")
    both_orders: bool | None = Field(
        None, description="Pairs: judge A-B and B-A in one batch and reconcile; None = the server's default."
    )
    scale: ScaleName | None = Field(None, description="Single and reference: the score scale; None = 1-5.")

    @field_validator("instruction")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("instruction must not be blank")
        return v

    @model_validator(mode="after")
    def _scale_fits_kind(self) -> JudgeRequest:
        if self.scale is not None and infer_kind(self) == "pairwise":
            raise ValueError("scale is for single and reference grading; a pairwise request has no score scale")
        return self


class JudgeResponse(BaseModel):
    """The verdict. ``parsed`` is False (and ``error`` says why) when the output had no verdict."""

    kind: Kind
    scenario: str | None
    scenario_source: ScenarioSource
    score: int | None = Field(None, description="On ``scale``, for single and reference grading.")
    scale: str | None = Field(None, description="The scale the score is on (single and reference; default 1-5).")
    winner: Winner | None = Field(None, description="The better response, for pairwise (reconciled over both orders).")
    rationale: str = ""
    output: str = ""
    parsed: bool = False
    error: str | None = None
    consistent: bool | None = Field(
        None, description="both_orders: whether the two orders gave the same winner (a disagreement is a tie)."
    )
    orders: list[OrderVerdict] | None = Field(None, description="both_orders: the verdict of each order, A-B first.")


class OrderVerdict(BaseModel):
    """One presentation order of a pair, its winner expressed in the request's A/B labels."""

    order: Literal["ab", "ba"]
    winner: Winner | None
    rationale: str = ""
    output: str = ""
    parsed: bool = False
    error: str | None = None


class BatchJudgeRequest(BaseModel):
    """Several judge calls in one request (evaluation traffic); each item succeeds or fails alone."""

    model_config = ConfigDict(extra="forbid")

    items: list[JudgeRequest] = Field(min_length=1, description="The calls, answered in this order.")


class BatchEnvelope(BaseModel):
    """The outside of a batch request, checked before its items (which are checked one by one)."""

    model_config = ConfigDict(extra="forbid")

    items: list[Any] = Field(min_length=1)


def parse_batch_items(raw: bytes, max_items: int) -> list[JudgeRequest | ApiError]:
    """Each item of a ``/v1/judge/batch`` body, checked on its own: a JudgeRequest, or the 422 that
    item alone gets. A body that is not JSON, not ``{"items": [...]}``, or has more than
    ``max_items`` items raises ApiError (422, 413) for the whole request.

    Bytes that are not UTF-8 are decoded as lone surrogates (``surrogateescape``), so they fail the
    item that holds them (as a JSON ``\\udfff`` escape does), not the whole request."""
    try:
        body = json.loads(raw.decode("utf-8", errors="surrogateescape"))
    except (ValueError, RecursionError) as exc:
        message = f"request body is not JSON ({snippet(exc, 120)})" if isinstance(exc, ValueError) else ""
        raise ApiError(422, message or "request body is nested too deeply", "invalid_body") from None
    try:
        items = BatchEnvelope.model_validate(body).items
    except ValidationError as exc:
        raise validation_error(exc.errors()) from None
    if len(items) > max_items:
        message = f"{len(items)} items is over this server's limit of {max_items}"
        raise ApiError(413, message, "too_many_items", param="items")
    return [_batch_item(i, item) for i, item in enumerate(items)]


def _batch_item(index: int, item: Any) -> JudgeRequest | ApiError:
    try:
        return JudgeRequest.model_validate(item)
    except ValidationError as exc:
        error = validation_error(exc.errors(), where=f"items.{index}.")
        error.param = f"items.{index}"
        return error
    except RecursionError:
        return ApiError(422, f"items.{index}: nested too deeply", "invalid_body", param=f"items.{index}")


class BatchItemError(BaseModel):
    """An item of a batch that was refused; the others are unaffected."""

    index: int
    status: int
    error: dict[str, Any]


class BatchJudgeResponse(BaseModel):
    results: list[JudgeResponse | BatchItemError]


def infer_kind(req: JudgeRequest) -> Kind:
    """The kind asked for, else pairwise / reference / single from the fields present."""
    if req.kind:
        return req.kind
    if req.response_a is not None or req.response_b is not None:
        return "pairwise"
    return "reference" if req.reference is not None else "single"


def check_judge_request(req: JudgeRequest) -> Kind:
    """The request's kind; ApiError(400) if the fields do not fit it or the scenario is unknown."""
    kind = infer_kind(req)
    problem = _kind_problem(req, kind)
    if problem:
        raise ApiError(400, problem, code="invalid_judge_request")
    if req.scenario is not None and req.scenario not in load_scenarios():
        known = ", ".join(load_scenarios())
        message = f"unknown scenario {snippet(req.scenario, 64)!r}; known scenario ids: {known}"
        raise ApiError(400, message, code="unknown_scenario", param="scenario")
    return kind


def _kind_problem(req: JudgeRequest, kind: Kind) -> str | None:
    if kind == "pairwise":
        if not req.response_a or not req.response_b:
            return "pairwise needs response_a and response_b (both non-empty)"
        if req.response is not None:
            return "pairwise takes response_a and response_b, not response"
        return None
    if req.response_a is not None or req.response_b is not None:
        return f"kind {kind!r} takes response, not response_a/response_b (those are for pairwise)"
    if not req.response:
        return f"kind {kind!r} needs a non-empty response"
    if kind == "reference" and not req.reference:
        return "kind 'reference' needs a non-empty reference"
    if kind == "single" and req.reference is not None:
        return "kind 'single' takes no reference; use kind 'reference' (or leave kind out)"
    return None


def classified_scenario(result: GenerationResult) -> str:
    """The scenario id in a classifier output; raises ParseError (also for a failed generation)."""
    if not result.ok:
        raise ParseError(f"generation failed: {result.error}")
    return parse_classification(result.text)


def unclassified_response(
    kind: Kind, result: GenerationResult, exc: ParseError, scale: str | None = None
) -> JudgeResponse:
    """The answer when no scenario could be classified: nothing judged, the reason in ``error``."""
    return JudgeResponse(
        kind=kind,
        scenario=None,
        scenario_source="classified",
        scale=_echoed_scale(kind, scale),
        output=result.text,
        error=f"scenario classification failed: {exc}",
    )


def judge_call(req: JudgeRequest, kind: Kind, scenario_id: str) -> JudgeCall:
    """The judge call of a checked request (see ``check_judge_request``); a pair in the given order."""
    if kind == "pairwise":
        assert req.response_a is not None and req.response_b is not None
        responses = (req.response_a, req.response_b)
        return JudgeCall(kind, scenario_id, req.instruction, responses, req.reference or None, "ab")
    assert req.response is not None
    reference = req.reference if kind == "reference" else None
    return JudgeCall(kind, scenario_id, req.instruction, (req.response,), reference, scale=req.scale)


def judge_response(
    kind: Kind, scenario: str, source: ScenarioSource, result: GenerationResult, scale: str | None = None
) -> JudgeResponse:
    """Parse a judge output (a score on ``scale``, or a winner) into the response; an unparseable
    output is reported, not raised."""
    echoed = _echoed_scale(kind, scale)
    out = JudgeResponse(kind=kind, scenario=scenario, scenario_source=source, output=result.text, scale=echoed)
    if not result.ok:
        return out.model_copy(update={"error": f"generation failed: {result.error}"})
    try:
        verdict = parse_verdict(kind, result.text, scale)
    except ParseError as exc:
        return out.model_copy(update={"error": f"unparseable output: {exc}"})
    fields = {"score": verdict.score, "winner": verdict.winner, "rationale": verdict.rationale}
    return out.model_copy(update=fields | {"parsed": True})


def _echoed_scale(kind: Kind, scale: str | None) -> str | None:
    """The scale an answer names: the one asked for (1-5 by default) for a score, none for a pair."""
    return None if kind == "pairwise" else scale or DEFAULT_SCALE


def both_orders_response(
    scenario: str, source: ScenarioSource, ab: GenerationResult, ba: GenerationResult
) -> JudgeResponse:
    """A pair judged in both orders: the winner where both agree, a tie where they disagree (or
    where either order has no verdict, with the reason in ``error``), and each order's verdict."""
    orders = [_order_verdict("ab", ab), _order_verdict("ba", ba)]
    parsed = all(o.parsed for o in orders)
    consistent = parsed and orders[0].winner == orders[1].winner
    failed = next((o for o in orders if not o.parsed), None)
    return JudgeResponse(
        kind="pairwise",
        scenario=scenario,
        scenario_source=source,
        winner=(orders[0].winner if consistent else "tie") if parsed else None,
        rationale=orders[0].rationale,
        output=orders[0].output,
        parsed=parsed,
        error=f"order {failed.order}: {failed.error}" if failed else None,
        consistent=consistent if parsed else None,
        orders=orders,
    )


def _order_verdict(order: Literal["ab", "ba"], result: GenerationResult) -> OrderVerdict:
    one = judge_response("pairwise", "", "given", result)
    winner = winner_in_ab_order(one.winner, order) if one.winner else None
    return OrderVerdict(
        order=order, winner=winner, rationale=one.rationale, output=one.output, parsed=one.parsed, error=one.error
    )


# --- OpenAI-compatible chat ----------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "user", "assistant", "developer"]
    content: Text | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """The part of OpenAI's chat request this server honours; other fields are ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = Field(None, ge=0, lt=2**63, description="0 <= seed < 2**63 (what torch and vLLM take).")
    n: int | None = None
    stream: bool | None = None
    # vLLM's extensions: continue the final assistant message instead of starting a new one.
    continue_final_message: bool = False
    add_generation_prompt: bool = True


def chat_generation_request(
    req: ChatCompletionRequest, model_name: str, defaults: Sampling, limits: ServeLimits = DEFAULT_LIMITS
) -> GenerationRequest:
    """Check a chat request and turn it into a generation; raise ApiError (400/404/422) if refused."""
    _check_chat(req, model_name)
    asked = req.max_completion_tokens or req.max_tokens
    if asked is not None and asked > limits.max_tokens:
        message = f"max_tokens={snippet(asked, 24)} is above this server's limit of {limits.max_tokens}"
        raise ApiError(422, message, "invalid_value", param="max_tokens")
    messages = [{"role": m.role, "content": _text(m, i)} for i, m in enumerate(req.messages)]
    prefix = ""
    if _continues(req):
        prefix = messages.pop()["content"]
    return GenerationRequest(
        messages=messages,
        max_tokens=req.max_completion_tokens or req.max_tokens or defaults.max_tokens,
        temperature=defaults.temperature if req.temperature is None else req.temperature,
        top_p=defaults.top_p if req.top_p is None else req.top_p,
        seed=req.seed,
        prefix=prefix,
    )


def _check_chat(req: ChatCompletionRequest, model_name: str) -> None:
    if req.model is not None and req.model != model_name:
        message = f"The model {req.model!r} does not exist; this server serves {model_name!r}."
        raise ApiError(404, message, code="model_not_found", param="model")
    if req.stream:
        message = "stream=true is not supported; send stream=false."
        raise ApiError(400, message, "unsupported_value", param="stream")
    if req.n not in (None, 1):
        message = f"n={req.n} is not supported; only n=1."
        raise ApiError(400, message, "unsupported_value", param="n")
    if req.continue_final_message and req.add_generation_prompt:
        message = "continue_final_message=true needs add_generation_prompt=false."
        raise ApiError(400, message, "invalid_value", param="add_generation_prompt")
    if req.continue_final_message and req.messages[-1].role != "assistant":
        message = "continue_final_message=true needs the last message to be an assistant message."
        raise ApiError(400, message, "invalid_value", param="messages")
    if not any(m.role == "user" for m in req.messages):
        message = "messages must include at least one user message."
        raise ApiError(400, message, "invalid_value", param="messages")


def _continues(req: ChatCompletionRequest) -> bool:
    """Whether the last (assistant) message is a prefix to continue rather than a finished turn."""
    last_is_assistant = req.messages[-1].role == "assistant"
    return req.continue_final_message or (not req.add_generation_prompt and last_is_assistant)


def _text(message: ChatMessage, index: int) -> str:
    """A message's text; content parts must all be text."""
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    texts = [p.get("text") for p in message.content if p.get("type") == "text"]
    if len(texts) != len(message.content) or not all(isinstance(t, str) for t in texts):
        param = f"messages[{index}].content"
        message = "only text content parts are supported"
        raise ApiError(400, message, "unsupported_value", param=param)
    return "".join(texts)  # type: ignore[arg-type]


def chat_completion(
    model_name: str, content: str, prompt_tokens: int, completion_tokens: int, finish_reason: str
) -> dict[str, Any]:
    """A ``chat.completion`` object as OpenAI returns it."""
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": content},
        "finish_reason": finish_reason,
        "logprobs": None,
    }
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [choice],
        "usage": usage,
    }


def model_list(model_name: str, created: int) -> dict[str, Any]:
    """``GET /v1/models``: the one served model."""
    model = {"id": model_name, "object": "model", "owned_by": "themis", "created": created}
    return {"object": "list", "data": [model]}


# --- deployment settings -------------------------------------------------------------------------


def serve_engine_config(
    serve_cfg: ServeConfig, model_path: str, device: str = "auto"
) -> TransformersEngineConfig | VLLMEngineConfig:
    """The engine each replica builds: the served folder, batched by ``serve.batch_size``, with one
    torch thread per reserved CPU on ``device`` (transformers) or the replica's GPUs (vLLM)."""
    if serve_cfg.engine == "vllm":
        return VLLMEngineConfig(model=model_path, batch_size=serve_cfg.batch_size, **serve_cfg.vllm.model_dump())
    return TransformersEngineConfig(
        model=model_path,
        batch_size=serve_cfg.batch_size,
        num_threads=max(1, int(serve_cfg.cpus_per_replica)),
        device=device,
    )


def replica_gpus(serve_cfg: ServeConfig, gpus_in_cluster: float | None) -> float:
    """GPUs one replica reserves: ``serve.gpus_per_replica`` where set; else, when the cluster has
    GPUs, one (vLLM: its tensor-parallel size), and none on a cluster without."""
    if serve_cfg.gpus_per_replica is not None:
        return serve_cfg.gpus_per_replica
    if gpus_in_cluster is None:
        raise ValueError(
            "serve.gpus_per_replica is unset (one GPU per replica where the cluster has GPUs), but no Ray "
            "cluster is connected to count them (`serve run <import path>` builds the app before it "
            "connects): set serve.gpus_per_replica, or deploy from a Serve config file"
        )
    if gpus_in_cluster <= 0:
        return 0.0
    return float(serve_cfg.vllm.tensor_parallel_size) if serve_cfg.engine == "vllm" else 1.0


def replica_capacity(serve_cfg: ServeConfig) -> int:
    """Requests one replica holds at once: those it works on (room for two full batches, one running
    and one filling, and the autoscaler's target) plus those waiting their turn. Beyond it the
    replica answers 503 with Retry-After itself (``themis.serving.guard``), in the OpenAI error shape."""
    limits = serve_cfg.limits
    return max(limits.max_ongoing_requests, 2 * serve_cfg.batch_size) + limits.max_queued_requests


# Serve lets this many times a replica's capacity reach it, so that what the replica refuses reaches
# it to be refused in the OpenAI shape; Serve's own queue (plain-text 503) is only a backstop.
SERVE_ONGOING_FACTOR = 4


def deployment_options(serve_cfg: ServeConfig, gpus_in_cluster: float | None = None) -> dict[str, Any]:
    """``serve.deployment`` options: explicit autoscaling, per-replica resources (GPUs by
    ``replica_gpus``), room for what the replica admits or refuses itself (``replica_capacity``),
    Serve's bounded queue as a backstop, and a health check that sees a stuck engine."""
    scaling, limits = serve_cfg.autoscaling, serve_cfg.limits
    return {
        "autoscaling_config": {
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "target_ongoing_requests": scaling.target_ongoing_requests,
        },
        "max_ongoing_requests": SERVE_ONGOING_FACTOR * replica_capacity(serve_cfg),
        "max_queued_requests": limits.max_queued_requests,
        "backpressure_config": {"status_code": 503, "retry_after_s": limits.retry_after_s},
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 10.0,
        "ray_actor_options": {
            "num_cpus": serve_cfg.cpus_per_replica,
            "num_gpus": replica_gpus(serve_cfg, gpus_in_cluster),
            # Serve's own switch (read when the replica imports Serve). Off, request lines still reach
            # the replica's log file under logs/serve/, but not stderr, which Ray's log monitor
            # tails and ships to the driver: with the tiny model on 2 cores that cost 3.5 ms of
            # replica CPU per request and 6 ms more in the proxy, the log monitor and the GCS.
            "runtime_env": {"env_vars": {"RAY_SERVE_LOG_TO_STDERR": "1" if serve_cfg.log_to_console else "0"}},
        },
    }
