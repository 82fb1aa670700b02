"""The OpenAI-compatible routes of the served judge: enough of OpenAI's protocol for the
official ``openai`` client (``GET /v1/models``, ``POST /v1/chat/completions``), including vLLM's
``continue_final_message`` extension. Pure: imports no Ray, torch or FastAPI.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from themis.config import Sampling, ServeLimits
from themis.engines.base import GenerationRequest
from themis.serving.errors import ApiError, snippet
from themis.serving.models import ChatCompletionRequest, ChatMessage

DEFAULT_LIMITS = ServeLimits()


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
        raise ApiError(400, "only text content parts are supported", "unsupported_value", param=param)
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
