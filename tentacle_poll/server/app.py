"""The server's lifecycle: startup → serve until asked to stop → shutdown.

Two listeners share one state: the comms listener (mutual TLS, agents) and the admin API
(HTTP, loopback by default, people and scripts). ``started`` is set once both listen, so
callers and tests wait for it instead of sleeping.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import IO, TYPE_CHECKING

from aiohttp import web
from loguru import logger

from tentacle_poll.config import ServerSettings
from tentacle_poll.exceptions import ConfigurationError, StorageFull, StoreUnavailable
from tentacle_poll.keepalive import listening_socket
from tentacle_poll.protocol import routes
from tentacle_poll.refusals import address_text
from tentacle_poll.server.access import require_api_key
from tentacle_poll.server.admin import add_admin_routes
from tentacle_poll.server.cluster_identity import join_identity
from tentacle_poll.server.comms import add_comms_routes, talking
from tentacle_poll.server.deployments import add_deployment_routes
from tentacle_poll.server.dispatch import Dispatcher
from tentacle_poll.server.handshakes import Gate
from tentacle_poll.server.health import add_health_routes
from tentacle_poll.server.identity import ServerHome
from tentacle_poll.server.leaving import deregister
from tentacle_poll.server.listening import Listening, counting_requests
from tentacle_poll.server.listings import add_listing_routes
from tentacle_poll.server.memory import shrink_tls_read_buffers
from tentacle_poll.server.packages import (
    add_file_admin_routes,
    add_package_admin_routes,
    add_package_comms_routes,
)
from tentacle_poll.server.portal import add_portal_routes
from tentacle_poll.server.portal.security import portal_headers
from tentacle_poll.server.problems import PROTOCOL_REQUIRED, SHORTAGE, problem_middleware
from tentacle_poll.server.retention import add_retention_routes, prune_forever
from tentacle_poll.server.rotation import add_rotation_routes
from tentacle_poll.server.sites import MutualTlsSite, PlainSite
from tentacle_poll.server.state import STATE, ServerState
from tentacle_poll.server.sweeper import (
    certificates_of,
    sweep_forever,
    warn_expiring_certificates,
)
from tentacle_poll.server.vault import Vault
from tentacle_poll.store.base import AgentRecord, ClusterStore, Store
from tentacle_poll.store.opening import open_store
from tentacle_poll.tls import TrustedClientCertificates, load_identity

if TYPE_CHECKING:
    from tentacle_poll.server.cluster import Cluster

SHUTDOWN_TIMEOUT = 5.0


class Server:
    def __init__(self, settings: ServerSettings, home: Path, migrate: bool = False) -> None:
        self.settings = settings
        self.migrate = migrate  # apply schema migrations the store needs (--migrate)
        self.home = ServerHome(home)
        self.started = asyncio.Event()
        self.comms_port = 0
        self.admin_port = 0
        self._runners: list[web.AppRunner] = []
        self.applications: dict[str, web.Application] = {}  # "comms", "admin": their routes
        self._sweeper: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        self._state: ServerState | None = None
        self._lock: IO[str] | None = None  # the home's lock, held from startup to shutdown
        self._cluster: Cluster | None = None  # with a PostgreSQL store
        self._store: Store | None = None
        self._comms_site: MutualTlsSite | None = None
        self._listening: Listening | None = None

    @property
    def state(self) -> ServerState:
        assert self._state is not None, "the server has not started"
        return self._state

    async def serve(self, stop: asyncio.Event) -> None:
        try:
            await self.startup()
            await stop.wait()
        finally:
            await self.shutdown()  # also after a failed start: the store has its own thread

    async def startup(self) -> None:
        self._lock = self.home.lock()  # first: nothing else may touch a home in use
        shrink_tls_read_buffers()
        identity_folder, _ = self.home.ensure_identity()
        vault = Vault.open(self.home.folder)
        store, blobs, change = await open_store(
            self.settings.store_url, self.home.folder, self.migrate
        )
        self._store = store  # closed by shutdown, even if the start fails from here on
        if change is not None and change[0] > 0:
            logger.info("database migrated from schema version {} to {}", *change)
        if isinstance(store, ClusterStore):
            await join_identity(self.home, vault, store)
        thumbprint = load_identity(identity_folder).thumbprint
        agents = await store.list_agents()  # read once: trust, listening targets, expiries
        trust = TrustedClientCertificates(identity_folder, certificates_of(agents))
        self._state = ServerState(
            self.settings, store, Dispatcher(), trust, thumbprint, self.home, vault, blobs
        )
        self._state.next_thumbprint = self.home.next_thumbprint()
        self.comms_port = await self._listen(
            self._comms_app(), self.settings.comms_host, self.settings.comms_port, trust, "comms"
        )
        self.admin_port = await self._listen(
            self._admin_app(), self.settings.admin_host, self.settings.admin_port, None, "admin"
        )
        logger.info(
            "server {} listening: comms (mutual TLS) on {}:{}, admin API on http://{}:{}",
            thumbprint,
            self.settings.comms_host,
            self.comms_port,
            self.settings.admin_host,
            self.admin_port,
        )
        if isinstance(store, ClusterStore):
            await self._join_cluster(store)
        self._keep_listening_targets(agents)
        warn_expiring_certificates(self.state, agents)
        self._sweeper = asyncio.create_task(sweep_forever(self.state), name="sweeper")
        self._pruner = asyncio.create_task(prune_forever(self.state), name="retention")
        self.started.set()

    def _keep_listening_targets(self, agents: list[AgentRecord]) -> None:
        assert self._comms_site is not None
        listening = self._listening = Listening(self.state, self._comms_site)
        self.state.listening = listening
        listening.sync(agents)

    async def _join_cluster(self, store: ClusterStore) -> None:
        from tentacle_poll.server.cluster import Cluster  # lazy: one-node servers skip it

        cluster = self._cluster = Cluster(self.state, store, self.comms_port)
        await cluster.start()
        self.state.node_urls = lambda: cluster.node_urls

    async def shutdown(self) -> None:
        if self._state is not None:
            # Held polls answer 503 + Retry-After at once instead of holding up cleanup.
            self._state.dispatcher.stop()
        for periodic in (self._sweeper, self._pruner):
            if periodic is not None:
                periodic.cancel()
        if self._cluster is not None:
            await self._cluster.stop()
        if self._listening is not None:
            await self._listening.stop()
        if self._state is not None:
            try:
                await self._state.flush_seen()
            # only last-seen times are lost: say so, stop cleanly
            except (StorageFull, StoreUnavailable) as exc:
                logger.warning("could not record the agents' last-seen times: {}", exc)
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        logger.info("server stopped")

    def _gate(self, trust: TrustedClientCertificates) -> Gate:
        state = self.state
        return Gate(trust.context, state.refusals, state.connections, state.strangers)

    def _comms_app(self) -> web.Application:
        app = web.Application(
            middlewares=[problem_middleware, talking, counting_requests],
            client_max_size=self.settings.max_body_bytes,
        )
        app[STATE] = self.state
        app[SHORTAGE] = self.state.shortage
        app[PROTOCOL_REQUIRED] = True
        add_comms_routes(app)
        app.router.add_post(routes.DEREGISTER, deregister)
        add_package_comms_routes(app)
        return app

    def _admin_app(self) -> web.Application:
        app = web.Application(
            middlewares=[portal_headers, problem_middleware, require_api_key],
            client_max_size=self.settings.max_body_bytes,
        )
        app[STATE] = self.state
        app[SHORTAGE] = self.state.shortage
        add_health_routes(app)
        add_portal_routes(app, self.settings.portal_session_minutes)
        add_admin_routes(app)
        add_listing_routes(app)
        add_retention_routes(app)
        add_rotation_routes(app)
        add_package_admin_routes(app)
        add_file_admin_routes(app)
        add_deployment_routes(app)
        return app

    async def _listen(
        self,
        app: web.Application,
        host: str,
        port: int,
        trust: TrustedClientCertificates | None,
        which: str,
    ) -> int:
        try:
            sock = listening_socket(host, port)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {address_text((host, port))} for the {which} port: "
                f"{exc.strerror or exc}; stop what is using it, or choose another with "
                f"--{which}-port or {which}_port in server.toml"
            ) from exc
        # handler_cancellation: a held poll whose agent went away stops at once, so its
        # tasks are not leased to a dead connection.
        runner = web.AppRunner(
            app, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT, access_log=None
        )
        await runner.setup()
        self._runners.append(runner)
        self.applications[which] = app
        state = self.state
        site: web.BaseSite = (
            MutualTlsSite(runner, sock, state.shortage, self._gate(trust))
            if trust
            else PlainSite(runner, sock, state.shortage)
        )
        await site.start()
        if isinstance(site, MutualTlsSite):
            self._comms_site = site
        return int(runner.addresses[-1][1])
