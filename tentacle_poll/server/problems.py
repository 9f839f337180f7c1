"""RFC 7807 problem answers, and the middleware that turns every error into one.

A client mistake is a 4xx with a JSON problem body; a 500 only ever means a bug in the server.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from loguru import logger

from tentacle_poll.exceptions import ProtocolError, RequestRejected, StorageFull, StoreUnavailable
from tentacle_poll.protocol.models import PROTOCOL_VERSION, Problem
from tentacle_poll.protocol.routes import PROBLEM_CONTENT_TYPE, PROTOCOL_HEADER
from tentacle_poll.server.shortage import Shortage, condition_of

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
        body=problem.model_dump_json().encode(),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if request.match_info.http_exception is None:  # an unknown route is a 404 first
            _check_protocol_version(request, required=request.app.get(PROTOCOL_REQUIRED, False))
            _refuse_nul(request)
        return await handler(request)
    except ProblemError as exc:
        return problem_response(exc.problem, exc.headers)
    except ProtocolError as exc:
        return problem_response(Problem(title="malformed request", status=400, detail=str(exc)))
    except RequestRejected as exc:  # raised by operations shared with the command line
        return problem_response(Problem(title=exc.title, status=exc.status, detail=exc.detail))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        title = exc.reason or "request refused"
        return problem_response(Problem(title=title, status=exc.status, detail=_detail(exc)))
    except (OSError, StorageFull, StoreUnavailable) as exc:
        if condition_of(exc) is None:
            return _bug(request)
        request.app[SHORTAGE].hit(f"answer {request.method} {request.path}", exc)
        reason = getattr(exc, "strerror", None) or str(exc)
        detail = f"the server is short of resources ({reason}); retry shortly"
        headers = {"Retry-After": str(RETRY_SHORTAGE_SECONDS)}
        return problem_response(Problem(title="server busy", status=503, detail=detail), headers)
    except Exception:
        return _bug(request)


def _bug(request: web.Request) -> web.Response:
    logger.exception("unexpected error answering {} {}", request.method, request.path)
    detail = "the server hit a bug; its log has the details"
    return problem_response(Problem(title="internal error", status=500, detail=detail))


# Set on the comms application: every request there must name the protocol version.
PROTOCOL_REQUIRED = web.AppKey("protocol_required", bool)
# Set on both: where a request that failed for want of descriptors is reported.
SHORTAGE = web.AppKey("shortage", Shortage)
RETRY_SHORTAGE_SECONDS = 2


def _refuse_nul(request: web.Request) -> None:
    """No name, id or filter holds a NUL, and PostgreSQL cannot even be asked about one: a 400
    here, not a 500 from the store."""
    if "\x00" in request.path or "\x00" in request.query_string:  # both decoded
        detail = "the request's path or query holds a NUL character (%00); remove it"
        raise ProblemError(400, "malformed request", detail)


def _check_protocol_version(request: web.Request, required: bool) -> None:
    version = request.headers.get(PROTOCOL_HEADER)
    if version is None and not required:
        return
    if version != PROTOCOL_VERSION:
        given = (
            f"not {version[:20]!r}"
            if version is not None
            else f"and needs the {PROTOCOL_HEADER} header"
        )
        raise ProblemError(
            400,
            "unsupported protocol version",
            f"this server speaks protocol version {PROTOCOL_VERSION}, {given}",
        )


class ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering the errors its HTTP parser finds (a URL or header
    line over the limit, a malformed request line) with a JSON problem, not text and a logged
    traceback: those are a client's mistakes."""

    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        detail = (message or str(exc or "") or phrase).strip()
        logger.debug("refused a malformed request from {}: {} {}", request.remote, status, detail)
        response = problem_response(
            Problem(title=phrase.lower() or "bad request", status=status, detail=detail)
        )
        response.force_close()
        return response


def answering_problems(handler: RequestHandler) -> RequestHandler:
    """A new connection's aiohttp handler, made to answer parse errors as problems."""
    handler.__class__ = ProblemRequestHandler  # same slots, one method more: a safe swap
    return handler


def refuse_oversized(request: web.Request, limit: int) -> None:
    """413 at once for a body declared larger than ``limit``, before a byte of it is read."""
    declared = request.content_length
    if declared is not None and declared > limit:
        raise ProblemError(
            413, "body too large", f"{declared} bytes declared; this server accepts up to {limit}"
        )


def _detail(exc: web.HTTPException) -> str:
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return "the body is larger than this server accepts"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return f"allowed methods: {', '.join(sorted(exc.allowed_methods))}"
    if isinstance(exc, web.HTTPNotFound):
        return "no such route; see docs/protocol.md"
    return exc.text or ""
