"""The served judge's ``/v1/judge`` logic, without the server: request checks, then request ->
judge call -> verdict -> answer.

``themis.serving.deployment`` wraps this in a Ray Serve deployment; keeping it here makes every
rule of the API testable in milliseconds. A judge call is rendered, requested and read by
``themis.judge.call`` like every other judge in the project (single, reference-guided or pairwise;
single and reference grading take a ``scale``: 0-1, 1-3, 1-5 or 1-10, default 1-5, echoed in the
answer), and the answer is built from its ``Verdict``. The models live in
``themis.serving.models``, refusals in ``themis.serving.errors``, the OpenAI-compatible chat in
``themis.serving.chat``. Pure: imports no Ray, torch or FastAPI.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import ValidationError

from themis.engines.base import GenerationResult
from themis.judge.call import JudgeCall, parse_classification, read_verdict, winner_in_ab_order
from themis.judge.parsing import ParseError
from themis.judge.scales import DEFAULT_SCALE
from themis.judge.scenarios import load_scenarios
from themis.judge.verdict import TIE, Kind, Verdict, engine_error_reason, family_of
from themis.serving.errors import ApiError, snippet, validation_error
from themis.serving.models import (
    BatchEnvelope,
    JudgeRequest,
    JudgeResponse,
    OrderVerdict,
    ScenarioSource,
    infer_kind,
)


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
        raise ParseError(engine_error_reason(result.error))
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
    """The answer to one judge call: its verdict (a score on ``scale``, or a winner), or why there
    is none in ``error`` (reported, not raised)."""
    verdict = read_verdict(kind, result, scale)
    context = {"kind": kind, "scenario": scenario, "scenario_source": source, "scale": _echoed_scale(kind, scale)}
    return JudgeResponse(**context, **_verdict_fields(verdict))


def _verdict_fields(verdict: Verdict) -> dict[str, Any]:
    """What an answer takes from a verdict."""
    return {
        "score": verdict.score,
        "winner": verdict.winner,
        "rationale": verdict.rationale,
        "output": verdict.output,
        "parsed": verdict.parsed,
        "error": verdict.error,
    }


def _echoed_scale(kind: Kind, scale: str | None) -> str | None:
    """The scale an answer names: the one asked for (1-5 by default) for a score, none for a pair."""
    return None if family_of(kind) == "pairwise" else scale or DEFAULT_SCALE


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
        winner=(orders[0].winner if consistent else TIE) if parsed else None,
        rationale=orders[0].rationale,
        output=orders[0].output,
        parsed=parsed,
        error=f"order {failed.order}: {failed.error}" if failed else None,
        consistent=consistent if parsed else None,
        orders=orders,
    )


def _order_verdict(order: Literal["ab", "ba"], result: GenerationResult) -> OrderVerdict:
    """One order's verdict, its winner put in the request's A/B labels."""
    verdict = read_verdict("pairwise", result)
    fields = _verdict_fields(verdict) | {"order": order}
    fields["winner"] = winner_in_ab_order(verdict.winner, order) if verdict.winner else None
    del fields["score"]
    return OrderVerdict(**fields)
