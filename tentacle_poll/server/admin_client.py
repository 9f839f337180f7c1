"""A small client of the admin API, used by the command line and the demo."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
from pydantic import BaseModel, TypeAdapter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_delay,
    wait_random_exponential,
)

from tentacle_poll.exceptions import ProtocolError, RequestRejected, ServerUnavailable
from tentacle_poll.protocol import routes
from tentacle_poll.protocol.codec import decode
from tentacle_poll.protocol.models import (
    AddListeningTarget,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyView,
    AuditEntryView,
    DeploymentSummaryView,
    DeploymentView,
    Event,
    EventsPage,
    FanOut,
    FileView,
    PackageView,
    Problem,
    PruneView,
    ServerCertificateAction,
    ServerCertificateView,
    SubmitTask,
    TargetView,
    TaskView,
    TokenCreated,
    TokenView,
)

M = TypeVar("M")
FOLLOW_WAIT_SECONDS = 30
FOLLOW_PAGE_LINES = 1000
FOLLOW_RECONNECT_SECONDS = 300.0  # a restart takes seconds; an outage this long is reported
TARGETS = TypeAdapter(list[TargetView])
TARGET_PAGE_SIZE = 500
TASKS = TypeAdapter(list[TaskView])


class AdminClient:
    def __init__(self, url: str, api_key: str) -> None:
        self.url = url.rstrip("/")
        self._headers = {routes.API_KEY_HEADER: api_key}
        self._session: aiohttp.ClientSession | None = None
        # Following a task: how long to wait for a restarting server, and who hears about it.
        self.reconnect_seconds = FOLLOW_RECONNECT_SECONDS
        self.on_reconnect: Callable[[str], None] = lambda _: None

    async def __aenter__(self) -> AdminClient:
        self._session = aiohttp.ClientSession(
            headers=self._headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def targets(self, **filters: str) -> list[TargetView]:
        """Every target matching ``filters`` (environment, role, tenant, connected)."""
        return [target async for page in self.target_pages(filters) for target in page]

    async def target_pages(
        self, filters: dict[str, str] | None = None, page_size: int = TARGET_PAGE_SIZE
    ) -> AsyncIterator[list[TargetView]]:
        """Pages in name order; a full page is followed by the next (docs/operations.md)."""
        query = {**(filters or {}), "limit": str(page_size)}
        while True:
            page = await self._call("GET", routes.ADMIN_TARGETS, TARGETS, query=query)
            yield page
            if len(page) < page_size:
                return
            query["after"] = page[-1].name

    async def add_listening_target(self, target: AddListeningTarget) -> TargetView:
        return await self._call("POST", routes.ADMIN_TARGETS, TypeAdapter(TargetView), body=target)

    async def delete_target(self, name: str) -> TargetView:
        return await self._call(
            "DELETE", routes.ADMIN_TARGET.format(name=name), TypeAdapter(TargetView)
        )

    async def submit(self, task: SubmitTask) -> TaskView:
        return await self._call("POST", routes.ADMIN_TASKS, TypeAdapter(TaskView), body=task)

    async def tasks(
        self, target: str | None = None, limit: int = 50, **filters: str
    ) -> list[TaskView]:
        """Newest first; ``filters``: state (comma-separated), since (seconds since the epoch)."""
        query = {**({"target": target} if target else {}), **filters, "limit": str(limit)}
        return await self._call("GET", routes.ADMIN_TASKS, TASKS, query=query)

    async def task(self, task_id: str) -> TaskView:
        return await self._call(
            "GET", routes.task_path(routes.ADMIN_TASK, task_id), TypeAdapter(TaskView)
        )

    async def cancel(self, task_id: str) -> TaskView:
        path = routes.task_path(routes.ADMIN_TASK_CANCEL, task_id)
        return await self._call("POST", path, TypeAdapter(TaskView))

    async def create_token(self, ttl_seconds: float) -> TokenCreated:
        return await self._call(
            "POST", routes.ADMIN_TOKENS, TypeAdapter(TokenCreated), query={"ttl": str(ttl_seconds)}
        )

    async def keys(self) -> list[ApiKeyView]:
        return await self._call("GET", routes.ADMIN_KEYS, TypeAdapter(list[ApiKeyView]))

    async def create_key(self, key: ApiKeyCreate) -> ApiKeyCreated:
        return await self._call("POST", routes.ADMIN_KEYS, TypeAdapter(ApiKeyCreated), body=key)

    async def revoke_key(self, name: str) -> None:
        await self._call("DELETE", routes.ADMIN_KEY.format(name=name), TypeAdapter(dict))

    async def tokens(self) -> list[TokenView]:
        return await self._call("GET", routes.ADMIN_TOKENS, TypeAdapter(list[TokenView]))

    async def revoke_token(self, token_id: str) -> None:
        path = routes.ADMIN_TOKEN.format(token_id=token_id)
        await self._call("DELETE", path, TypeAdapter(dict))

    async def audit(self, since: float, key: str | None, limit: int) -> list[AuditEntryView]:
        query = {"since": str(since), "limit": str(limit), **({"key": key} if key else {})}
        return await self._call(
            "GET", routes.ADMIN_AUDIT, TypeAdapter(list[AuditEntryView]), query=query
        )

    async def server_certificate(self) -> ServerCertificateView:
        path = routes.ADMIN_SERVER_CERTIFICATE
        return await self._call("GET", path, TypeAdapter(ServerCertificateView))

    async def change_server_certificate(
        self, action: str, force: bool = False
    ) -> ServerCertificateView:
        body = ServerCertificateAction.model_validate({"action": action, "force": force})
        path = routes.ADMIN_SERVER_CERTIFICATE
        return await self._call("POST", path, TypeAdapter(ServerCertificateView), body=body)

    async def upload_package(
        self, package_id: str, version: str, path: Path, package_format: str
    ) -> PackageView:
        """Streams the file (never read whole into memory)."""
        route = routes.ADMIN_PACKAGE.format(package_id=package_id, version=version)
        payload = await self._put_file(route, path, {"format": package_format})
        return _parse(TypeAdapter(PackageView), payload)

    async def upload_file(self, path: Path) -> FileView:
        """A file for send_file tasks; answers its SHA-256 and size."""
        return _parse(TypeAdapter(FileView), await self._put_file(routes.ADMIN_FILES, path, {}))

    async def download_file(self, sha256: str, destination: Path) -> int:
        """Bytes stored on the server (a fetch_file task's result) into ``destination``."""
        assert self._session is not None, "use AdminClient as an async context manager"
        url = self.url + routes.ADMIN_FILE.format(sha256=sha256)
        size = 0
        try:
            async with self._session.get(url) as response:
                if response.status >= 400:
                    raise _rejection(response.status, await response.read())
                with open(destination, "wb") as handle:
                    async for chunk in response.content.iter_chunked(1 << 20):
                        handle.write(chunk)
                        size += len(chunk)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServerUnavailable(f"cannot reach the admin API at {self.url} ({exc})") from exc
        return size

    async def _put_file(self, route: str, path: Path, query: dict[str, str]) -> bytes:
        assert self._session is not None, "use AdminClient as an async context manager"
        try:
            with open(path, "rb") as handle:
                async with self._session.put(
                    self.url + route, data=handle, params=query
                ) as response:
                    payload = await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ServerUnavailable(f"cannot reach the admin API at {self.url} ({exc})") from exc
        if response.status >= 400:
            raise _rejection(response.status, payload)
        return payload

    async def fan_out(self, fan_out: FanOut) -> DeploymentView:
        return await self._call(
            "POST", routes.ADMIN_DEPLOYMENTS, TypeAdapter(DeploymentView), body=fan_out
        )

    async def prune(self, dry_run: bool, older_than_days: float | None = None) -> PruneView:
        query = {} if older_than_days is None else {"older_than_days": str(older_than_days)}
        method = "GET" if dry_run else "POST"
        return await self._call(method, routes.ADMIN_PRUNE, TypeAdapter(PruneView), query=query)

    async def deployments(self, limit: int) -> list[DeploymentSummaryView]:
        answer = TypeAdapter(list[DeploymentSummaryView])
        return await self._call(
            "GET", routes.ADMIN_DEPLOYMENTS, answer, query={"limit": str(limit)}
        )

    async def roll_back_deployment(self, deployment_id: str) -> DeploymentView:
        path = routes.ADMIN_DEPLOYMENT_ROLLBACK.format(deployment_id=deployment_id)
        return await self._call("POST", path, TypeAdapter(DeploymentView))

    async def deployment(self, deployment_id: str) -> DeploymentView:
        path = routes.ADMIN_DEPLOYMENT.format(deployment_id=deployment_id)
        return await self._call("GET", path, TypeAdapter(DeploymentView))

    async def packages(self) -> list[PackageView]:
        return await self._call("GET", routes.ADMIN_PACKAGES, TypeAdapter(list[PackageView]))

    async def delete_package(self, package_id: str, version: str) -> PackageView:
        path = routes.ADMIN_PACKAGE.format(package_id=package_id, version=version)
        return await self._call("DELETE", path, TypeAdapter(PackageView))

    async def events(
        self, task_id: str, after: int, wait: float, limit: int = FOLLOW_PAGE_LINES
    ) -> EventsPage:
        path = routes.task_path(routes.ADMIN_TASK_EVENTS, task_id)
        query = {"after": str(after), "wait": str(wait), "limit": str(limit)}
        return await self._call("GET", path, TypeAdapter(EventsPage), query=query)

    async def follow(self, task_id: str, on_event: Callable[[Event], None]) -> TaskView:
        """Calls ``on_event`` for every line, in order, until the task has ended.

        The server reads a page's task before its lines, and an agent reports a result only
        once all its lines are stored: a page that shows the task ended and is not full holds
        the last lines, so no further request is made for an empty page."""
        after = 0
        while True:
            page = await self._next_page(task_id, after)
            for event in page.events:
                on_event(event)
                after = event.seq
            if page.task.state.is_final and len(page.events) < FOLLOW_PAGE_LINES:
                return page.task

    async def _next_page(self, task_id: str, after: int) -> EventsPage:
        """The next page, waiting through a server restart (reconnecting with jittered
        backoff, for up to ``reconnect_seconds``): the follower resumes after the last line it
        printed, so none is missed or repeated."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(ServerUnavailable),
            wait=wait_random_exponential(multiplier=0.2, max=5.0),
            stop=stop_after_delay(self.reconnect_seconds),
            before_sleep=self._reconnecting,
            reraise=True,
        ):
            with attempt:
                return await self.events(task_id, after, FOLLOW_WAIT_SECONDS)
        raise AssertionError("unreachable: tenacity reraises")

    def _reconnecting(self, state: RetryCallState) -> None:
        if state.attempt_number == 1 and state.outcome is not None:
            self.on_reconnect(f"{state.outcome.exception()}; reconnecting")

    async def _call(
        self,
        method: str,
        path: str,
        answer_type: TypeAdapter[M],
        body: BaseModel | None = None,
        query: dict[str, str] | None = None,
    ) -> M:
        assert self._session is not None, "use AdminClient as an async context manager"
        data = body.model_dump_json() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else None
        try:
            async with self._session.request(
                method, self.url + path, data=data, params=query, headers=headers
            ) as response:
                payload = await response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise ServerUnavailable(
                f"cannot reach the admin API at {self.url} ({exc}); is the server running?"
            ) from exc
        if response.status >= 400:
            raise _rejection(response.status, payload)
        return _parse(answer_type, payload)


def _rejection(status: int, payload: bytes) -> RequestRejected | ServerUnavailable:
    try:
        problem = decode(Problem, payload)
    except ProtocolError:
        problem = Problem(title=f"HTTP {status}", status=status)
    if status >= 500:
        return ServerUnavailable(f"the server failed: {problem.title}: {problem.detail}")
    return RequestRejected(status, problem.title, problem.detail)


def _parse(answer_type: TypeAdapter[M], payload: bytes) -> M:
    try:
        return answer_type.validate_json(payload)
    except ValueError as exc:
        raise ProtocolError(f"the admin API sent an unreadable answer: {exc}") from exc
