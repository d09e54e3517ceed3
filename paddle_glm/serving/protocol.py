"""Request bodies (the OpenAI completions subset and ``/v1/fill``), OpenAI-style errors and response shapes."""
from __future__ import annotations

import json
import time
import uuid
from typing import List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError, conlist, field_validator

from .rows import Sampling

MAX_STOP_STRINGS = 4  # as OpenAI
DEFAULT_MAX_TOKENS = 16  # OpenAI's completions default


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, param: Optional[str] = None, type: str = "invalid_request_error",
                 code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    top_k: int = Field(0, ge=0)
    seed: Optional[int] = Field(None, ge=0, lt=2 ** 63)
    repetition_penalty: float = Field(1.0, gt=0, le=10, allow_inf_nan=False)  # vLLM's extra field (CTRL's)

    def sampling(self) -> Sampling:
        return Sampling(self.temperature, self.top_p, self.top_k, self.seed, self.repetition_penalty)


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``: unknown fields are ignored, fields this server cannot honour are refused."""

    model: Optional[str] = None
    prompt: Union[StrictStr, conlist(StrictStr, min_length=1)]
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1)
    stop: Union[None, StrictStr, conlist(StrictStr, max_length=MAX_STOP_STRINGS)] = None
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=1)
    best_of: Optional[int] = Field(None, ge=1, le=1)
    echo: Literal[False] = False
    logprobs: None = None
    suffix: None = None

    @field_validator("max_tokens", mode="before")
    @classmethod
    def _null_is_default(cls, value):
        return DEFAULT_MAX_TOKENS if value is None else value

    def prompts(self) -> List[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def stops(self) -> List[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class FillRequest(SamplingFields):
    """``POST /v1/fill``: every blank of ``text``, in order; greedy unless ``temperature`` > 0."""

    text: StrictStr = Field(min_length=1)
    max_tokens: int = Field(64, ge=1)  # per blank
    temperature: float = Field(0.0, ge=0, le=2, allow_inf_nan=False)


def parse(model: type, raw: bytes):
    """``model`` from a JSON body (whatever its Content-Type), or a 400 :class:`APIError`."""
    try:
        data = json.loads(raw)
        _check_text(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise APIError(400, f"the body is not valid JSON ({e})") from None
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def _check_text(value, field: Optional[str] = None) -> None:
    """A 400 naming the field if a string of the JSON ``value`` is not Unicode text (a lone surrogate
    such as ``"\\ud800"``, which JSON escapes allow), before it reaches the tokenizer."""
    if isinstance(value, dict):
        for key, item in value.items():
            _check_text(item, field or key)
    elif isinstance(value, list):
        for item in value:
            _check_text(item, field)
    elif isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            where = f"{field}: " if field else ""
            raise APIError(400, f"{where}holds {value[e.start:e.end]!r} at character {e.start}, a lone surrogate, "
                                "which is not Unicode text", field) from None


def check_prompt_count(count: int, limit: int) -> None:
    """A 400 for a request of more prompts than the server's queue can ever hold (retrying cannot help)."""
    if count > limit:
        raise APIError(400, f"prompt: {count} prompts, more than the server's queue holds ({limit}, its --max-queue); "
                            f"send at most {limit} per request", "prompt")


def validation_error(errors: list) -> APIError:
    """A 400 from pydantic's errors, about the first field that failed."""
    first = errors[0]
    param = _field(first)
    if param is None:
        return APIError(400, f"the body must be a JSON object: {first.get('msg')}")
    if first.get("type") == "missing":
        return APIError(400, f"'{param}' is required", param)
    # a union (prompt, stop) reports one error per alternative: prefer one that is not about the type
    same = [e for e in errors if _field(e) == param]
    error = next((e for e in same if not e.get("type", "").endswith("_type")), None)
    if error is None and len(same) > 1:
        return APIError(400, f"{param}: expected a string or a list of strings (got {first.get('input')!r:.80})",
                        param)
    error = error or first
    return APIError(400, f"{param}: {error.get('msg')} (got {error.get('input')!r:.80})", param)


def _field(error: dict) -> Optional[str]:
    fields = [part for part in error.get("loc", ()) if part != "body" and isinstance(part, str)]
    return fields[0] if fields else None


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def completion_body(request_id: str, model: str, choices: list, usage: Optional[dict], chunk: bool = False) -> dict:
    body = {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": choices}
    if usage is not None or not chunk:
        body["usage"] = usage
    return body


def choice(index: int, text: str, finish_reason: Optional[str]) -> dict:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}
