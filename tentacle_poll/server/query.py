"""Reading query parameters of admin API requests: a value, or a 400 saying what is allowed."""

from __future__ import annotations

from aiohttp import web

from tentacle_poll.protocol.models import TaskState
from tentacle_poll.server.problems import ProblemError

TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    return int(float_query(request, name, default, low, high))


def float_query(request: web.Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise malformed(f"{name} must be a number") from exc
    if not low <= value <= high:
        raise malformed(f"{name} must be between {low:g} and {high:g}")
    return value


def optional_float_query(request: web.Request, name: str, low: float, high: float) -> float | None:
    return float_query(request, name, low, low, high) if name in request.query else None


def bool_query(request: web.Request, name: str) -> bool | None:
    """True, False, or None when not given (or given empty, as a form's "any" sends it)."""
    raw = request.query.get(name)
    if not raw:
        return None
    if raw.lower() in TRUE + FALSE:
        return raw.lower() in TRUE
    raise malformed(f"{name} must be true or false")


def states_query(request: web.Request) -> tuple[str, ...]:
    """``state=failed,timed_out`` (or the parameter repeated)."""
    given = [s for raw in request.query.getall("state", []) for s in raw.split(",") if s]
    known = {state.value for state in TaskState}
    unknown = sorted(set(given) - known)
    if unknown:
        raise malformed(f"unknown task state {', '.join(unknown)}; use {', '.join(sorted(known))}")
    return tuple(dict.fromkeys(given))


def malformed(detail: str) -> ProblemError:
    return ProblemError(400, "malformed request", detail)
