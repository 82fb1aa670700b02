"""The served judge's request and response models: what ``/v1/judge``, ``/v1/judge/batch`` and
the OpenAI-compatible chat route accept and answer. A judge answer is built from the one verdict
record (``themis.judge.verdict.Verdict``) by ``themis.serving.api``. Pure: imports no Ray, torch
or FastAPI.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from themis.judge.verdict import Kind, Winner

ScenarioSource = Literal["given", "classified"]
ScaleName = Literal["1-5", "0-1", "1-3", "1-10"]  # themis.judge.scales.SCALES as the schema's enum (a test checks)


def _encodable(text: str) -> str:
    # A lone surrogate ("\udfff") is valid JSON but no tokenizer can take it: refuse it as input.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"text is not valid Unicode (a lone surrogate at position {exc.start})") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]


# --- POST /v1/judge and /v1/judge/batch ---------------------------------------------------------


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


# --- POST /v1/chat/completions -------------------------------------------------------------------


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
