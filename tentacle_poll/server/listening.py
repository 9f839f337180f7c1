"""Listening targets: this node opens their connections, the agents speak v1 over them.

A keeper per listening target keeps SPARE_CONNECTIONS more connections open than the target
has requests in flight (counted by ``counting_requests``), so that its held poll, its output
posts and its results always find one ready; that is how the agent, which cannot ask for a
connection without having one, never waits for the server. A target added by thumbprint alone
is enrolled first: its certificate is fetched over a connection of its own and trusted once it
matches. A target that cannot be reached is retried with the agents' rule (full jitter, capped,
sooner when refused) and shown unreachable, with the reason, in ``targets``.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace

from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import load_der_x509_certificate
from loguru import logger

from tentacle_poll.exceptions import StoreError
from tentacle_poll.protocol.models import ConnectionView
from tentacle_poll.protocol.routes import CERTIFICATE_PREAMBLE, DIAL_PREAMBLE
from tentacle_poll.server.dialling import DialFailed, dial, listening_proxy
from tentacle_poll.server.handshakes import HANDSHAKE_SECONDS, Dialled
from tentacle_poll.server.problems import Handler
from tentacle_poll.server.sites import MutualTlsSite
from tentacle_poll.server.state import STATE, ServerState
from tentacle_poll.store import AgentRecord
from tentacle_poll.tls import thumbprint_of_der

SPARE_CONNECTIONS = 2
MAX_CONNECTIONS = 64
CHECK_SECONDS = 30.0  # an idle keeper looks at its connections this often anyway
BACKOFF_BASE_SECONDS = 0.5
REFUSED_MAX_SECONDS = 15.0
# A generator of its own: the module's shared state is left to whoever seeded it.
JITTER = random.Random()
# Connections being opened at once, all targets together: a node starting with thousands of
# listening targets opens their connections in waves, not in one storm of handshakes.
DIALS_AT_ONCE = 100


class Listening:
    """This node's keepers, by target id."""

    def __init__(self, state: ServerState, site: MutualTlsSite) -> None:
        self._state = state
        self._site = site
        self._keepers: dict[str, Keeper] = {}
        self._by_transport: dict[asyncio.BaseTransport, Keeper] = {}
        self.proxy = listening_proxy(state.settings.listening_proxy)
        self._dialling = asyncio.Semaphore(DIALS_AT_ONCE)

    def sync(self, agents: list[AgentRecord]) -> None:
        """Keeps exactly the listening targets among ``agents`` (all of them): at start, and
        when another node of a cluster changed the registrations."""
        wanted = {agent.id: agent for agent in agents if agent.listening_url}
        for agent_id in set(self._keepers) - set(wanted):
            self.forget(agent_id)
        for agent in wanted.values():
            keeper = self._keepers.get(agent.id)
            if keeper is None or (keeper.agent.listening_url, keeper.agent.thumbprint) != (
                agent.listening_url,
                agent.thumbprint,
            ):
                self.watch(agent)
            elif agent.certificate_pem and not keeper.agent.certificate_pem:
                keeper.agent = agent  # enrolled by another node

    async def stop(self) -> None:
        keepers = list(self._keepers.values())
        self._keepers.clear()
        for keeper in keepers:
            keeper.stop()
        await asyncio.gather(*(k.task for k in keepers), return_exceptions=True)

    def watch(self, agent: AgentRecord) -> None:
        """Keeps ``agent``'s connections (again, if its address or certificate changed)."""
        self.forget(agent.id)
        if agent.listening_url:
            self._keepers[agent.id] = Keeper(agent, self._state, self)

    def forget(self, agent_id: str) -> None:
        keeper = self._keepers.pop(agent_id, None)
        if keeper is not None:
            keeper.stop()

    def counts(self) -> tuple[int, int]:
        """(listening targets, of them unreachable now), for /metrics."""
        failed = [k for k in self._keepers.values() if k.last is not None and not k.last.ok]
        return len(self._keepers), len(failed)

    def last_connection(self, agent_id: str) -> ConnectionView | None:
        keeper = self._keepers.get(agent_id)
        return keeper.last if keeper else None

    def keeper_of(self, transport: asyncio.BaseTransport | None) -> Keeper | None:
        return self._by_transport.get(transport) if transport is not None else None

    async def open_one(self, keeper: Keeper, url: str) -> asyncio.Transport:
        """One connection to the target, handed to the comms port's handshake; its TLS
        transport once trusted both ways."""
        async with self._dialling:
            return await self._open(keeper, url)

    async def _open(self, keeper: Keeper, url: str) -> asyncio.Transport:
        sock = await dial(url, self.proxy, DIAL_PREAMBLE, self._timeout())
        holder: list[asyncio.Transport] = []
        up: asyncio.Future[asyncio.Transport] = asyncio.get_running_loop().create_future()
        up.add_done_callback(_retrieved)  # a failure nobody awaits any more (a stop) is no error
        dialled = Dialled(up, lambda: self._lost(keeper, holder))
        try:
            await self._site.take_dialled(sock, dialled)
        except BaseException:
            sock.close()
            raise
        try:
            async with asyncio.timeout(HANDSHAKE_SECONDS + 1):
                tls = await asyncio.shield(dialled.up)
        except (ConnectionError, TimeoutError) as exc:
            raise DialFailed(f"reached {url}, but {exc}") from None
        if not tls.is_closing():  # lost meanwhile: its ``lost`` found nothing to forget
            holder.append(tls)
            self._by_transport[tls] = keeper
        return tls

    async def certificate_of(self, url: str) -> bytes:
        """The DER certificate the agent at ``url`` shows (enrolment)."""
        async with self._dialling:
            sock = await dial(url, self.proxy, CERTIFICATE_PREAMBLE, self._timeout())
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # compared with the thumbprint given, below
        try:
            transport, _ = await asyncio.get_running_loop().create_connection(
                asyncio.Protocol, sock=sock, ssl=context, server_hostname="",
                ssl_handshake_timeout=self._timeout(),
            )  # fmt: skip
        except BaseException as exc:
            sock.close()
            if not isinstance(exc, OSError | TimeoutError):
                raise
            raise _no_agent_at(url, exc) from None
        der = transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        transport.abort()  # nothing else to say: no TLS shutdown to wait for
        return bytes(der or b"")

    def _lost(self, keeper: Keeper, holder: list[asyncio.Transport]) -> None:
        for tls in holder:
            self._by_transport.pop(tls, None)
            keeper.connections.discard(tls)
        keeper.wake.set()

    def _timeout(self) -> float:
        return self._state.settings.listening_connect_timeout_seconds


class Keeper:
    def __init__(self, agent: AgentRecord, state: ServerState, listening: Listening) -> None:
        self.agent = agent
        self._state = state
        self._listening = listening
        self.connections: set[asyncio.Transport] = set()
        self.busy = 0
        self.wake = asyncio.Event()
        self.last: ConnectionView | None = None
        self._failures = 0
        self.task = asyncio.create_task(self._run(), name=f"keeper {agent.name}")

    def stop(self) -> None:
        self.task.cancel()
        for tls in list(self.connections):
            tls.abort()

    @contextmanager
    def serving(self) -> Iterator[None]:
        """A request in flight on one of this target's connections."""
        self.busy += 1
        self.wake.set()
        try:
            yield
        finally:
            self.busy -= 1
            self.wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await self._keep_up()
            except DialFailed as exc:
                await self._failed(exc)
                continue
            except Exception as exc:  # a store outage or a bug must not end the keeping for good
                logger.opt(exception=exc).error(
                    "target {}: keeping its connections failed", self.agent.name
                )
                await self._failed(DialFailed(f"the server failed connecting to it: {exc}"))
                continue
            self.wake.clear()
            if self._wanted() <= 0:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for swallows a cancel that
                # arrives as the wait ends (a stop aborting the connections wakes it).
                with suppress(TimeoutError):
                    async with asyncio.timeout(CHECK_SECONDS):
                        await self.wake.wait()

    async def _keep_up(self) -> None:
        if not self.agent.certificate_pem:
            await self._enrol()
        while self._wanted() > 0:
            tls = await self._listening.open_one(self, self._url)
            self.connections.add(tls)
            self._succeeded()

    def _wanted(self) -> int:
        self.connections = {tls for tls in self.connections if not tls.is_closing()}
        return min(self.busy + SPARE_CONNECTIONS, MAX_CONNECTIONS) - len(self.connections)

    @property
    def _url(self) -> str:
        assert self.agent.listening_url is not None
        return self.agent.listening_url

    async def _enrol(self) -> None:
        der = await self._listening.certificate_of(self._url)
        shown = thumbprint_of_der(der) if der else "none"
        if shown != self.agent.thumbprint:
            raise DialFailed(
                f"the agent at {self._url} presents the certificate {shown}, not "
                f"{self.agent.thumbprint} given to `targets add`: check the thumbprint "
                "(`tentacle-poll show-thumbprint` on the target)"
            )
        pem = load_der_x509_certificate(der).public_bytes(Encoding.PEM).decode()
        try:
            self.agent = await self._state.store.save_agent(
                replace(self.agent, certificate_pem=pem), replace=False, now=time.time()
            )
        except StoreError as exc:
            raise DialFailed(f"cannot record the certificate of {self.agent.name}: {exc}") from None
        self._state.trust.add(pem.encode())
        self._state.registrations_changed()
        logger.info("target {} enrolled: its certificate {} is trusted", self.agent.name, shown)

    def _succeeded(self) -> None:
        if self._failures or self.last is None or not self.last.ok:
            logger.info("target {}: connected to {}", self.agent.name, self._url)
        self._failures = 0
        self.last = ConnectionView(ok=True, at=time.time(), detail="")

    async def _failed(self, exc: DialFailed) -> None:
        self._failures += 1
        self.last = ConnectionView(ok=False, at=time.time(), detail=str(exc))
        wait = jittered_backoff(
            self._failures, exc.refused, self._state.settings.listening_backoff_max_seconds
        )
        if self._failures == 1 or self._failures % 10 == 0:
            logger.warning("target {} unreachable ({} tries): {}; next try in {:.1f} s",
                           self.agent.name, self._failures, exc, wait)  # fmt: skip
        await asyncio.sleep(wait)


def _no_agent_at(url: str, exc: OSError | TimeoutError) -> DialFailed:
    """Enrolment found no agent's listening port at ``url``: something else (a web server, the
    server's own port) or nothing that speaks."""
    if isinstance(exc, ssl.SSLError) and exc.reason:
        detail = exc.reason
    else:
        detail = str(exc) or type(exc).__name__
    return DialFailed(
        f"reached {url}, but no tentacle-poll agent answered there (it showed no certificate: "
        f"{detail}); check the address and port (`tentacle-poll listen` on the target prints "
        "them)"
    )


def _retrieved(future: asyncio.Future[asyncio.Transport]) -> None:
    if not future.cancelled():
        future.exception()


def jittered_backoff(failures: int, refused: bool, max_seconds: float) -> float:
    """The agents' retry rule (agent/connections/backoff.py): random up to base x 2^n, capped;
    a refused connection (nothing listening: a restart) with the lower cap."""
    cap = min(max_seconds, REFUSED_MAX_SECONDS) if refused else max_seconds
    return JITTER.uniform(0, min(cap, BACKOFF_BASE_SECONDS * 2 ** min(failures, 30)))


@web.middleware
async def counting_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request on a connection this node opened counts as in flight for its keeper."""
    listening = request.app[STATE].listening
    keeper = listening.keeper_of(request.transport) if listening else None
    if keeper is None:
        return await handler(request)
    with keeper.serving():
        return await handler(request)
