"""This node's part in a cluster: several server nodes on one PostgreSQL store.

- Wake-ups: every ring of the dispatcher (work for an agent, news of a task) is sent to the
  other nodes by NOTIFY, batched per turn of the event loop; rings they send are rung here. So
  a task queued through node B wakes the poll node A holds for its target within milliseconds.
- Trust: a registration, deletion or rotation made through any node makes every other node
  reload the registered certificates (one reload per burst of changes).
- Heartbeats: each node writes one every HEARTBEAT_SECONDS; the nodes heard from within
  NODE_LOST_SECONDS are the cluster, announced to agents in poll answers so they poll each.
  A node that stops leaves at once; one that dies is dropped after NODE_LOST_SECONDS. Its work
  needs no hand-over: leases it gave expire back to the queue, and its agents' connections
  break, so they poll, stream and report through the other nodes (all state is in the store).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Coroutine
from typing import Any

from loguru import logger

from tentacle_poll.exceptions import StorageFull, StoreUnavailable
from tentacle_poll.server.cluster_identity import adopt_identity, publish_identity
from tentacle_poll.server.state import ServerState
from tentacle_poll.server.sweeper import certificates_of
from tentacle_poll.store.base import ClusterStore
from tentacle_poll.tls import load_identity
from tentacle_poll.tls.certs import thumbprint_of_pem

HEARTBEAT_SECONDS = 2.0
NODE_LOST_SECONDS = 10.0
FORGET_NODES_SECONDS = 24 * 3600.0
TRUST_RELOAD_DELAY = 0.05  # changes within this long share one reload
PAYLOAD_BYTES = 7000  # NOTIFY payloads must stay under 8000 bytes


class Cluster:
    def __init__(self, state: ServerState, store: ClusterStore, comms_port: int) -> None:
        self.node_id = uuid.uuid4().hex[:12]
        self.url = state.settings.advertised_url or f"https://{socket.getfqdn()}:{comms_port}"
        self.node_urls: list[str] = [self.url]  # the live nodes, this one included
        self._state = state
        self._store = store
        self._started = time.time()
        self._pending: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._trust_reload: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        # Rows of nodes killed long ago (each start is a new node id): cleared once, here.
        await self._store.forget_nodes(time.time() - FORGET_NODES_SECONDS)
        await self._beat()
        await self._store.listen({"wake": self._heard_wake}, self._missed_some)
        self._state.dispatcher.echo = self._echo
        self._state.trust_echo = lambda: self._echo("trust", "")
        self._state.identity_changed = self._publish_identity
        self._spawn(self._beat_forever())
        self._echo("nodes", "")  # the others list this node now, not at their next heartbeat
        logger.info("cluster node {} ({}) joined: {} nodes", self.node_id, self.url,
                    len(self.node_urls))  # fmt: skip

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(StoreUnavailable, StorageFull):
            await self._store.leave(self.node_id)
        self._pending.add("nodes:")  # and stop listing it now
        await self._flush()

    # --- rings to and from the other nodes --------------------------------------------------

    def _echo(self, kind: str, key: str) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(lambda: self._spawn(self._flush()))
        self._pending.add(f"{kind}:{key}")

    async def _flush(self) -> None:
        pending, self._pending = sorted(self._pending), set()
        for payload in _payloads(self.node_id, pending):
            try:
                await self._store.notify("wake", payload)
            except (StoreUnavailable, StorageFull) as exc:  # the others re-check on reconnect
                logger.warning("could not wake the other nodes: {}", exc)
                return

    def _heard_wake(self, payload: str) -> None:
        sender, _, keys = payload.partition("|")
        if sender == self.node_id:
            return
        for key in keys.split(","):
            kind, _, name = key.partition(":")
            if kind == "trust":
                self._heard_trust()
            elif kind == "identity":
                self._spawn(self._adopt_identity())
            elif kind == "nodes":
                self._spawn(self._nodes_changed())
            else:
                self._state.dispatcher.heard(kind, name)

    def _heard_trust(self) -> None:
        if self._trust_reload is None:
            loop = asyncio.get_running_loop()
            self._trust_reload = loop.call_later(
                TRUST_RELOAD_DELAY, lambda: self._spawn(self._reload_trust())
            )

    def _missed_some(self) -> None:
        """The wake-up channel was lost for a while: re-check everything once."""
        self._state.dispatcher.heard_everything()
        self._heard_trust()

    async def _reload_trust(self) -> None:
        self._trust_reload = None
        try:
            agents = await self._store.list_agents()
        except (StoreUnavailable, StorageFull) as exc:
            logger.warning("could not reload the registered certificates: {}", exc)
            return
        pems = certificates_of(agents)
        if self._state.listening is not None:
            self._state.listening.sync(agents)  # listening targets added or removed elsewhere
        self._state.forget_agents()
        dropped = await self._state.trust.replace_all(pems)
        if dropped:
            self._state.connections.cut(thumbprint_of_pem(pem) for pem in dropped)
            logger.info("{} certificates no longer trusted (changed on another node)",
                        len(dropped))  # fmt: skip

    async def _publish_identity(self) -> None:
        state = self._state
        await publish_identity(state.home, state.vault, self._store)
        self._echo("identity", "")

    async def _adopt_identity(self) -> None:
        """A rotation step made through another node: present and announce the same."""
        state = self._state
        try:
            if not await adopt_identity(state.home, state.vault, self._store):
                return
        except (StoreUnavailable, StorageFull) as exc:
            logger.warning("could not take the cluster's server certificate: {}", exc)
            return
        state.thumbprint = load_identity(state.home.identity_folder).thumbprint
        state.next_thumbprint = state.home.next_thumbprint()
        state.trust.reload_identity()

    # --- heartbeats ----------------------------------------------------------------------

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self._beat()
            except (StoreUnavailable, StorageFull) as exc:
                self._state.shortage.hit("node heartbeat", exc)

    async def _beat(self) -> None:
        await self._store.heartbeat(self.node_id, self.url, self._started, time.time())
        await self._refresh_nodes()

    async def _nodes_changed(self) -> None:
        """Another node joined or left: list the live nodes now (else at the next beat)."""
        with contextlib.suppress(StoreUnavailable, StorageFull):
            await self._refresh_nodes()

    async def _refresh_nodes(self) -> None:
        nodes = await self._store.live_nodes(time.time() - NODE_LOST_SECONDS)
        urls = list(dict.fromkeys(url for _, url in nodes))
        changed = urls != self.node_urls
        self.node_urls = urls or [self.url]
        if changed:
            logger.info("cluster nodes: {}", ", ".join(self.node_urls))
            self._state.dispatcher.heard_everything()  # held polls tell their agents now

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _payloads(sender: str, keys: list[str]) -> list[str]:
    """``sender|key,key,...`` in pieces that NOTIFY accepts."""
    payloads, current = [], ""
    for key in keys:
        if current and len(current) + len(key) + 1 > PAYLOAD_BYTES:
            payloads.append(f"{sender}|{current}")
            current = ""
        current = f"{current},{key}" if current else key
    if current:
        payloads.append(f"{sender}|{current}")
    return payloads
