"""Generated requests to every route of both ports, with and without credentials: a client's
mistake never gets a 5xx, every refusal is a JSON problem, and the server still runs a real
task afterwards. `make test` runs a bounded profile; `make fuzz` a long one."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tentacle_poll.protocol.models import Problem, TaskState
from tentacle_poll.protocol.routes import (
    API_KEY_HEADER,
    DEREGISTER,
    PROBLEM_CONTENT_TYPE,
    PROTOCOL_HEADER,
)
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.server.portal.guard import SESSIONS
from tentacle_poll.tls import pinned_client_context

from .conftest import (
    LONG_RUN,
    AgentFactory,
    comms_url,
    register_agent,
    run_and_follow,
    script_task,
    start_server,
)

FIELDS = [
    "free_slots", "running", "hold_seconds", "events", "seq", "stream", "text", "ts", "lines",
    "state", "exit_code", "last_seq", "reason", "certificate_pem", "name", "environments",
    "roles", "replace", "target", "kind", "script", "body", "syntax", "variables", "value",
    "sensitive", "timeout_seconds", "deploy", "package_id", "version", "size", "sha256",
    "environment", "task", "action", "force", "scope", "expires_at",
]  # fmt: skip
EDGES = [0, -1, 2**31, -(2**31) - 1, 2**62 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30]
NUMBERS = st.one_of(
    st.sampled_from([*EDGES, float("nan"), float("inf"), float("-inf"), -0.0, 1e308]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, st.text(max_size=40))
JSON = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), inner, max_size=6),
    ),
    max_leaves=20,
)
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)


@dataclass(frozen=True)
class Call:
    port: str
    method: str
    path: str
    query: dict[str, str]
    body: bytes
    headers: dict[str, str]
    credential: str


EVENT = {"seq": 1, "stream": "stdout", "text": "x", "ts": 1.0, "lines": 1}
SCRIPT = {"syntax": "bash", "body": "echo hi"}
# A valid body per route (by its last path segment): a hostile value put into one of its
# leaves reaches the deep checks that random JSON never gets past.
TEMPLATES: dict[str, Any] = {
    "poll": {"free_slots": 1, "running": [], "hold_seconds": 0},
    "events": {"events": [EVENT, {**EVENT, "seq": 2}]},
    "result": {"state": "succeeded", "exit_code": 0, "last_seq": 0, "reason": ""},
    # Generated scripts go to "sink", a target no agent runs for: queued, never executed.
    "tasks": {"target": "sink", "kind": "script", "script": SCRIPT, "timeout_seconds": 5},
    "register": {
        "name": "fuzz",
        "certificate_pem": "x" * 120,
        "environments": ["T"],
        "roles": ["r"],
    },
    "deployments": {"environment": "Sink", "task": {"kind": "script", "script": SCRIPT}},
    "server-certificate": {"action": "cancel"},
    "certificate": {"certificate_pem": "x" * 120},
    # A listening target where nothing listens: its keeper's dials are refused, nothing else.
    "targets": {
        "name": "fuzz-listening",
        "listening_url": "https://127.0.0.1:1",
        "thumbprint": "A" * 64,
        "environments": ["T"],
        "roles": ["r"],
    },
}


def leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for key, inner in value.items() for p in leaves(inner, (*path, key))]
    if isinstance(value, list):
        return [p for index, inner in enumerate(value) for p in leaves(inner, (*path, index))]
    return [path]


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = replaced(value[path[0]], path[1:], new)
    return copy


def hostile_like(value: Any) -> st.SearchStrategy[Any]:
    """Mostly a hostile value of the leaf's own type (what gets past the type check), at
    times any value at all."""
    if isinstance(value, bool) or value is None:
        same: st.SearchStrategy[Any] = st.booleans()
    elif isinstance(value, int | float):
        same = NUMBERS
    else:
        same = st.one_of(st.text(max_size=40), st.just("x" * 70_000), st.just("\x00\n\ud7ff"))
    return st.one_of(same, same, same, SCALARS)


@st.composite
def near_valid(draw: st.DrawFn, template: Any) -> Any:
    where = draw(st.sampled_from(leaves(template)))
    original = template
    for key in where:
        original = original[key]
    return replaced(template, where, draw(hostile_like(original)))


def bodies(template: Any) -> st.SearchStrategy[bytes]:
    shapes = [JSON, near_valid(template)] if template is not None else [JSON]
    as_json = st.one_of(*shapes).map(lambda value: json.dumps(value, allow_nan=True).encode())
    return st.one_of(as_json, as_json, st.binary(max_size=64), st.just(b""))


def path_values(known: dict[str, list[str]]) -> st.SearchStrategy[str]:
    odd = st.text(max_size=30).filter(lambda t: t not in ("", ".", ".."))
    real = st.sampled_from(known["ids"])
    return st.one_of(real, real, odd, st.just("x" * 9000))


@st.composite
def calls(draw: st.DrawFn, routes: list[tuple[str, str, str]], known: dict[str, list[str]]) -> Call:
    port, method, template_path = draw(st.sampled_from(routes))
    path = template_path
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = path[:start] + quote(draw(path_values(known)), safe="") + path[end + 1 :]
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", "x/y"]))}
    version = draw(st.one_of(st.just("1"), st.none(), HEADER_TEXT))
    if version is not None:
        headers[PROTOCOL_HEADER] = version
    if draw(st.booleans()):
        headers["X-Filler"] = "y" * draw(st.sampled_from([10, 9000]))
    query = draw(
        st.dictionaries(
            st.sampled_from(["after", "limit", "wait", "ttl", "target"]), HEADER_TEXT, max_size=3
        )
    )
    credential = draw(st.sampled_from(["valid", "valid", "wrong", "none"]))
    template = TEMPLATES.get(template_name(template_path))
    return Call(port, method, path, query, draw(bodies(template)), headers, credential)


def template_name(route: str) -> str:
    return route.rstrip("/").rsplit("/", 1)[-1]


class Wire:
    """Sends calls to both ports of a real server, as a registered agent or a stranger."""

    def __init__(self, server: Server, api_key: str, agent_identity: Path) -> None:
        self.urls = {"comms": comms_url(server), "admin": f"http://127.0.0.1:{server.admin_port}"}
        self.api_key = api_key
        pin = [server.state.thumbprint]
        self.tls = {
            "valid": pinned_client_context(pin, agent_identity),
            "wrong": pinned_client_context(pin, None),
            "none": pinned_client_context(pin, None),
        }
        # A connection per request: each generated call stands alone (no pooled connection a
        # previous call's answer closed), and each goes through a full handshake of its own.
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))

    async def send(self, call: Call) -> tuple[int, str, bytes]:
        headers = dict(call.headers)
        if call.credential != "none":
            headers[API_KEY_HEADER] = self.api_key if call.credential == "valid" else "API-WRONG"
        ssl_context: ssl.SSLContext | bool = (
            self.tls[call.credential] if call.port == "comms" else False
        )
        async with self.session.request(
            call.method,
            self.urls[call.port] + call.path,
            params=call.query,
            data=call.body,
            headers=headers,
            ssl=ssl_context,
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:
            return response.status, response.content_type, await response.read()


def routes_of(server: Server) -> list[tuple[str, str, str]]:
    found = []
    for port, app in server.applications.items():
        for route in app.router.routes():
            if route.method != "HEAD":
                found.append((port, route.method, route.resource.canonical))  # type: ignore[union-attr]
    return sorted(set(found))


def check_answer(call: Call, status: int, content_type: str, payload: bytes) -> None:
    assert status < 500, (call, status, payload[:300])
    if status >= 400 and not call.path.startswith("/portal"):  # the portal answers people: HTML
        assert content_type == PROBLEM_CONTENT_TYPE, (call, status, payload[:300])
        assert Problem.model_validate_json(payload).status == status


@pytest.mark.timeout(3600 if LONG_RUN else 120)
async def test_generated_requests_to_every_route_never_get_a_5xx(
    server: Server, api_key: str, admin: AdminClient, start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = await start_agent("web1")
    await register_agent(server, api_key, tmp_path / "sink", "sink", environments=["Sink"])
    real = await admin.submit(script_task("web1", "echo before the storm"))
    # Ids that exist, or look as if they might; never "web1" itself: a generated DELETE of the
    # target this test talks as would (rightly) cut it off.
    known = {"ids": [real.id, "0" * 64, "nobody", "../web1", "sink/../web1"]}
    # Not deregistration: a generated one with web1's certificate would (rightly) remove the
    # target this test talks as; tests/test_leaving.py sends it malformed bodies instead.
    routes = [route for route in routes_of(server) if route[2] != DEREGISTER]
    assert len(routes) >= 20  # both ports, every route
    wire = Wire(server, api_key, tmp_path / "web1" / "identity")
    loop = asyncio.get_running_loop()

    statuses: list[int] = []

    @given(calls(routes, known))
    def property_holds(call: Call) -> None:
        answer = asyncio.run_coroutine_threadsafe(wire.send(call), loop).result(timeout=30)
        statuses.append(answer[0])
        check_answer(call, *answer)

    try:
        await asyncio.to_thread(property_holds)  # hypothesis drives; the server runs here
    finally:
        await wire.session.close()
    assert len(statuses) >= 100 and len(set(statuses)) >= 4, sorted(set(statuses))
    final, events = await run_and_follow(admin, script_task("web1", "echo still standing"))
    assert final.state == TaskState.SUCCEEDED and [e.text for e in events] == ["still standing"]
    assert agent.task.done() is False


@pytest.mark.timeout(3600 if LONG_RUN else 120)
async def test_hostile_values_in_otherwise_valid_bodies_never_get_a_5xx(
    server: Server, api_key: str, admin: AdminClient, start_agent: AgentFactory, tmp_path: Path
) -> None:
    """As a registered agent and with a valid key, the protocol header right, a real task's
    id: each route's valid body with one leaf made hostile (a seq past 64 bits, NaN...)."""
    await start_agent("web1")
    await register_agent(server, api_key, tmp_path / "sink", "sink", environments=["Sink"])
    real = await admin.submit(script_task("web1", "echo target"))
    wire = Wire(server, api_key, tmp_path / "web1" / "identity")
    loop = asyncio.get_running_loop()
    sent = 0
    try:
        for port, method, route in routes_of(server):
            template = TEMPLATES.get(template_name(route))
            if template is None or method not in ("POST", "PUT"):
                continue
            path = route.replace("{task_id}", real.id)
            await asyncio.to_thread(
                hostile_bodies_property(wire, loop, port, method, path, template)
            )
            sent += 1
    finally:
        await wire.session.close()
    assert sent >= 7  # poll, events, result, register, certificate, tasks, deployments, targets
    final, _ = await run_and_follow(admin, script_task("web1", "echo still standing"))
    assert final.state == TaskState.SUCCEEDED


def hostile_bodies_property(
    wire: Wire, loop: asyncio.AbstractEventLoop, port: str, method: str, path: str, template: Any
) -> Callable[[], None]:
    headers = {PROTOCOL_HEADER: "1", "Content-Type": "application/json"}

    @settings(max_examples=(200 if LONG_RUN else 15) * len(leaves(template)), database=None)
    @given(near_valid(template))
    def property_holds(body: Any) -> None:
        data = json.dumps(body, allow_nan=True).encode()
        call = Call(port, method, path, {}, data, headers, "valid")
        check_answer(call, *asyncio.run_coroutine_threadsafe(wire.send(call), loop).result(30))

    return property_holds  # type: ignore[no-any-return]


async def raw_request(port: int, head: bytes, context: ssl.SSLContext | None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(head)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(4096), 2)  # at once, not after a body timeout
    writer.close()
    return answer


async def test_a_huge_declared_body_gets_413_at_once_on_both_ports(
    server: Server, api_key: str, tmp_path: Path, agent_client: Any
) -> None:
    context = pinned_client_context([server.state.thumbprint], tmp_path / "web1" / "identity")
    for port, path, tls in [
        (server.comms_port, "/v1/poll", context),
        (server.admin_port, "/api/tasks", None),
        (server.admin_port, "/api/files", None),
    ]:
        method = "PUT" if path == "/api/files" else "POST"
        declared = server.settings.max_package_bytes + 1 if method == "PUT" else 999999999
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: x\r\n{PROTOCOL_HEADER}: 1\r\n"
            f"{API_KEY_HEADER}: {api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {declared}\r\n\r\n"
        ).encode()
        answer = await raw_request(port, head, tls)
        assert answer.startswith(b"HTTP/1.1 413"), (path, answer[:200])
        assert PROBLEM_CONTENT_TYPE.encode() in answer


async def test_an_overlong_url_or_header_gets_a_problem_without_a_traceback(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    for head in [
        f"GET /api/{'x' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n",
        f"GET /api/health HTTP/1.1\r\nHost: x\r\nX-Long: {'y' * 9000}\r\n\r\n",
    ]:
        answer = await raw_request(server.admin_port, head.encode(), None)
        assert answer.split(b" ")[1].startswith(b"4"), answer[:200]
        assert PROBLEM_CONTENT_TYPE.encode() in answer
    assert "Traceback" not in caplog.text and "Error handling request" not in caplog.text


# Every filter the listings and the portal read, with any text in it: NUL, controls, markup,
# wildcards, very long (no lone surrogate: a URL cannot carry one).
FILTERS = ["search", "environment", "role", "tenant", "connected", "target", "state", "since",
           "limit", "after"]  # fmt: skip
FILTER_TEXT = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=40),
    st.sampled_from(["\x00", "a\x00b", "%", "_", "'; --", "\\", "x" * 3000]),
)


@pytest.mark.timeout(3600 if LONG_RUN else 120)
async def test_generated_filters_never_get_a_5xx_from_a_postgresql_backed_server(
    tmp_path: Path, pg_url: str
) -> None:
    """PostgreSQL refuses what SQLite takes (a NUL in a text): every reading route of the admin
    listener, the portal's included, with generated filters, against a real PostgreSQL store."""
    server = await start_server(tmp_path / "server", store_url=pg_url)
    key = await server.state.store.create_api_key("tests")
    await register_agent(server, key, tmp_path / "web1", "web1")
    admin_routes = [route for port, method, route in routes_of(server)
                    if port == "admin" and method == "GET" and "{" not in route]  # fmt: skip
    base, loop = f"http://127.0.0.1:{server.admin_port}", asyncio.get_running_loop()
    session = aiohttp.ClientSession(headers={API_KEY_HEADER: key})
    cookie = await portal_session(server, key)

    async def send(route: str, query: dict[str, str]) -> tuple[int, bytes]:
        async with session.get(base + route, params=query, cookies=cookie,
                               allow_redirects=False) as response:  # fmt: skip
            return response.status, await response.read()

    @settings(max_examples=300 if LONG_RUN else 60, database=None)
    @given(st.sampled_from(admin_routes), st.dictionaries(st.sampled_from(FILTERS), FILTER_TEXT,
                                                          max_size=3))  # fmt: skip
    def property_holds(route: str, query: dict[str, str]) -> None:
        status, payload = asyncio.run_coroutine_threadsafe(send(route, query), loop).result(30)
        assert status < 500, (route, query, status, payload[:300])

    try:
        await asyncio.to_thread(property_holds)
    finally:
        await session.close()
        await server.shutdown()


async def portal_session(server: Server, key: str) -> dict[str, str]:
    record = await server.state.store.api_key(key, time.time())
    assert record is not None
    session_id, _ = server.applications["admin"][SESSIONS].open(record, key)
    return {"tp_session": session_id}
