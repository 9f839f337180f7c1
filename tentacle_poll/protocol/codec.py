"""Encoding and decoding of wire models; the one place pydantic errors become ProtocolError."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from tentacle_poll.exceptions import ProtocolError
from tentacle_poll.protocol.models import PATTERN_WORDS

M = TypeVar("M", bound=BaseModel)


def encode(model: BaseModel) -> bytes:
    # Straight to bytes (model_dump_json makes a str, then .encode() copies it): at 100 MB of
    # output this is a tenth of the agent's work.
    return model.__pydantic_serializer__.to_json(model)


def decode(model_type: type[M], data: bytes | str) -> M:
    try:
        return model_type.model_validate_json(data)
    except ValidationError as exc:
        raise ProtocolError(describe_validation_error(exc)) from exc


def decode_object(model_type: type[M], data: object) -> M:
    try:
        return model_type.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(describe_validation_error(exc)) from exc


def describe_validation_error(exc: ValidationError) -> str:
    """One readable clause per problem, without echoing input values (they may be secrets)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in error["loc"]) or "body"
        parts.append(f"{where}: {_in_words(error)}")
    return "; ".join(parts)


def _in_words(error: ErrorDetails) -> str:
    """pydantic's message, but a pattern's says what the value must be instead, and our own
    validators' reasons come without pydantic's "Value error, " in front."""
    context = error.get("ctx") or {}
    if error["type"] == "string_pattern_mismatch" and context.get("pattern") in PATTERN_WORDS:
        return f"must be {PATTERN_WORDS[context['pattern']]}"
    if error["type"] == "value_error" and "error" in context:
        return str(context["error"])
    return error["msg"]
