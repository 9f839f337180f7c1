"""The nodes of a server cluster, as its poll answers announce them.

A cluster's nodes share one certificate, so a node learnt from an announcement is pinned to
the thumbprints of the node that announced it, and reached like it (same proxy; no server
name of its own). Nodes learnt this way are marked ``discovered``: when the cluster stops
announcing one (it was removed, or has been dead for a while) the agent stops polling it.
Nodes configured by hand are never added twice nor dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from loguru import logger
from pydantic import ValidationError

from tentacle_poll.agent.connections.nodes import add_node, remove_node
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.config import ServerNode


class Discovery:
    """Keeps the nodes an agent polls in step with what its clusters announce: ``start`` polls
    a node (saved first in agent.toml), ``stop`` stops polling one (removed first)."""

    def __init__(
        self, home: AgentHome, start: Callable[[ServerNode], None], stop: Callable[[str], None]
    ) -> None:
        self._home = home
        self._start = start
        self._stop = stop
        self._announced: dict[str, list[str]] = {}  # the nodes each node last announced

    def heard(self, url: str, announced: list[str]) -> None:
        """The node at ``url`` announced its cluster's nodes (on every poll answer)."""
        if self._announced.get(url) == announced:
            return
        self._announced[url] = announced
        nodes = self._home.settings().servers
        announcing = next((n for n in nodes if _same(n.url) == _same(url)), None)
        if announcing is None:
            return
        added, dropped = discovered_changes(nodes, announcing, self._announced)
        for node in dropped:
            remove_node(self._home, node.url)
            self._announced.pop(node.url.rstrip("/"), None)
            logger.info("server node {} left the cluster: no longer polled", node.url)
            self._stop(node.url.rstrip("/"))
        for node in added:
            add_node(self._home, node)
            logger.info("server node {} joined the cluster: polling it too", node.url)
            self._start(node)


def _same(url: str) -> str:
    return url.rstrip("/").lower()


def discovered_changes(
    nodes: list[ServerNode], announcing: ServerNode, announcements: dict[str, list[str]]
) -> tuple[list[ServerNode], list[ServerNode]]:
    """(nodes to add, nodes to drop) after ``announcing`` listed its cluster's nodes;
    ``announcements``: the latest list from each node polled (``announcing``'s included)."""
    announced = announcements[announcing.url.rstrip("/")]
    known = {_same(n.url) for n in nodes}
    added = []
    for url in dict.fromkeys(announced):
        if _same(url) not in known:
            node = _learnt(announcing, url)
            if node is not None:
                added.append(node)
                known.add(_same(url))
    cluster = set(announcing.thumbprints)
    dropped = [
        n for n in nodes
        if n.discovered and cluster & set(n.thumbprints) and not _listed(n, announcements)
    ]  # fmt: skip
    return added, dropped


def _listed(node: ServerNode, announcements: dict[str, list[str]]) -> bool:
    """Whether a node other than ``node`` itself still announces it."""
    return any(
        _same(node.url) in {_same(url) for url in urls}
        for announcer, urls in announcements.items()
        if _same(announcer) != _same(node.url)
    )


def _learnt(announcing: ServerNode, url: str) -> ServerNode | None:
    try:
        return ServerNode(
            url=url,
            thumbprint=announcing.thumbprint,
            also_trusted=announcing.also_trusted,
            discovered=True,
        )
    except ValidationError:
        return None  # not a URL this agent could poll: ignored
