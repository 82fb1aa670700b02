"""The served judge's refusals: an OpenAI-shaped error body for every status it answers.

Every refusal is an ``ApiError`` that becomes ``{"error": {...}}`` as OpenAI returns it, so the
official client raises the right exception; error messages quote a client's input only in short
``snippet``s. Pure: imports no Ray, torch or FastAPI.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

SNIPPET_CHARS = 80  # the most of a client's own input an error message repeats


def snippet(text: object, limit: int = SNIPPET_CHARS) -> str:
    """A short, printable excerpt of client input for an error message (never the whole of it); a
    lone surrogate is shown escaped, so the reply can always be encoded."""
    text = str(text).encode("utf-8", errors="backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} chars)"


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


def validation_error(errors: Sequence[Mapping[str, Any]], where: str = "") -> ApiError:
    """A 422 from pydantic errors: one readable line per problem (each place prefixed by ``where``),
    plus the list."""
    detail: list[dict[str, Any]] = [
        {
            "loc": [snippet(p, 40) if isinstance(p, str) else p for p in e.get("loc", ())],
            "msg": snippet(e.get("msg"), 200),
            "type": e.get("type"),
        }
        for e in errors
    ]
    lines = [f"{where}{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in detail]
    return ApiError(422, "; ".join(lines), "invalid_body", detail=detail)


def validation_error_body(errors: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A 422 body from pydantic errors (see ``validation_error``)."""
    return validation_error(errors).body()
