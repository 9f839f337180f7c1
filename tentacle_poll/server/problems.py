"""RFC 7807 problem answers, and the middleware that turns every error into one.

A client mistake is a 4xx with a JSON problem body; a 500 only ever means a bug in the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from loguru import logger

from tentacle_poll.exceptions import ProtocolError
from tentacle_poll.protocol.models import Problem
from tentacle_poll.protocol.routes import PROBLEM_CONTENT_TYPE, PROTOCOL_HEADER

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ProblemError(Exception):
    """Raised by handlers to answer with a problem body."""

    def __init__(self, status: int, title: str, detail: str = "") -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.problem = Problem(title=title, status=status, detail=detail)
        self.headers: dict[str, str] = {}


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=problem.status,
        body=problem.model_dump_json(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        _check_protocol_version(request)
        return await handler(request)
    except ProblemError as exc:
        return problem_response(exc.problem, exc.headers)
    except ProtocolError as exc:
        return problem_response(Problem(title="malformed request", status=400, detail=str(exc)))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        title = exc.reason or "request refused"
        return problem_response(Problem(title=title, status=exc.status, detail=_detail(exc)))
    except Exception:
        logger.exception("unexpected error answering {} {}", request.method, request.path)
        detail = "the server hit a bug; its log has the details"
        return problem_response(Problem(title="internal error", status=500, detail=detail))


def _check_protocol_version(request: web.Request) -> None:
    version = request.headers.get(PROTOCOL_HEADER)
    if version is not None and version != "1":
        raise ProblemError(
            400, "unsupported protocol version", f"this server speaks version 1, not {version}"
        )


def _detail(exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return "the body is larger than this server accepts"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return f"allowed methods: {', '.join(sorted(exc.allowed_methods))}"
    if isinstance(exc, web.HTTPNotFound):
        return "no such route; see docs/protocol.md"
    return exc.text or ""
