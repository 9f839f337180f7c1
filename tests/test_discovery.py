"""Which nodes an agent adds and drops from a cluster's announcements
(agent/connections/discovery.py)."""

from __future__ import annotations

from tentacle_poll.agent.connections.discovery import discovered_changes
from tentacle_poll.config import ServerNode

PIN, OTHER = "A" * 64, "B" * 64


def node(url: str, discovered: bool = False, pin: str = PIN) -> ServerNode:
    return ServerNode(url=url, thumbprint=pin, discovered=discovered)


def test_new_nodes_are_added_pinned_like_the_node_that_announced_them() -> None:
    a = node("https://a:10943")
    added, dropped = discovered_changes(
        [a], a, {"https://a:10943": ["https://a:10943", "https://b:10943/"]}
    )
    assert [(n.url, n.thumbprint, n.discovered) for n in added] == [("https://b:10943/", PIN, True)]
    assert dropped == []


def test_a_discovered_node_is_dropped_only_when_no_other_node_lists_it() -> None:
    a, b, c = node("https://a:1"), node("https://b:1", True), node("https://c:1", True)
    lagging = {"https://a:1": ["https://a:1", "https://b:1"], "https://b:1": ["https://b:1",
               "https://c:1"], "https://c:1": ["https://c:1"]}  # fmt: skip
    assert discovered_changes([a, b, c], a, lagging) == ([], [])  # B still lists C
    gone = {**lagging, "https://b:1": ["https://a:1", "https://b:1"]}
    assert discovered_changes([a, b, c], a, gone) == ([], [c])  # C's own list does not count


def test_hand_configured_nodes_and_other_clusters_nodes_are_never_dropped() -> None:
    a, hand = node("https://a:1"), node("https://hand:1")
    elsewhere = node("https://x:1", discovered=True, pin=OTHER)
    announcements = {"https://a:1": ["https://a:1"]}
    assert discovered_changes([a, hand, elsewhere], a, announcements) == ([], [])


def test_an_announced_url_the_agent_could_not_poll_is_ignored() -> None:
    a = node("https://a:1")
    announced = {"https://a:1": ["https://a:1", "http://plain:80", "https://b:1/path", ""]}
    assert discovered_changes([a], a, announced) == ([], [])
