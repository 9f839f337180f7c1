"""Changes to the agent's configuration file: server nodes, pins, the proxy.

Each change reads the file, edits one part and writes it back atomically, so a command run
while the daemon runs never loses the daemon's own updates (and the reverse).
"""

from __future__ import annotations

from tentacle_poll.agent.home import AgentHome
from tentacle_poll.config import (
    ListeningSettings,
    ProxySettings,
    ServerNode,
    given_thumbprint,
    toml_data,
    update_config_file,
)
from tentacle_poll.exceptions import ConfigurationError


def save_nodes(home: AgentHome, nodes: list[ServerNode]) -> None:
    update_config_file(home.config_file, servers=[toml_data(node) for node in nodes])


def add_node(home: AgentHome, node: ServerNode) -> None:
    """Adds a server node, or replaces the one with the same URL."""
    nodes = [n for n in home.settings().servers if n.url != node.url]
    save_nodes(home, [*nodes, node])


def remove_node(home: AgentHome, url: str) -> None:
    nodes = home.settings().servers
    kept = [n for n in nodes if n.url.rstrip("/") != url.rstrip("/")]
    if len(kept) == len(nodes):
        raise ConfigurationError(
            f"this agent does not poll {url}; `tentacle-poll poll-server list`"
        )
    save_nodes(home, kept)


def find_node(home: AgentHome, url: str) -> ServerNode:
    for node in home.settings().servers:
        if node.url.rstrip("/") == url.rstrip("/"):
            return node
    raise ConfigurationError(f"this agent does not poll {url}; `tentacle-poll poll-server list`")


def learn_server_thumbprints(home: AgentHome, url: str, thumbprints: list[str]) -> None:
    """The server's announced certificates: the first is current, the rest also trusted."""
    node = find_node(home, url)
    add_node(
        home,
        node.model_copy(update={"thumbprint": thumbprints[0], "also_trusted": thumbprints[1:]}),
    )


def set_listening(home: AgentHome, listening: ListeningSettings | None) -> None:
    """Listening mode's settings; None: the agent no longer listens."""
    update_config_file(home.config_file, listen=toml_data(listening) if listening else None)


def learn_listening_thumbprints(home: AgentHome, thumbprints: list[str]) -> None:
    listening = home.settings().listen
    if listening is not None:
        update = {"server_thumbprint": thumbprints[0], "also_trusted": thumbprints[1:]}
        set_listening(home, listening.model_copy(update=update))


def set_trust(home: AgentHome, url: str, add: list[str], remove: list[str]) -> ServerNode:
    node = find_node(home, url)
    removed = {given_thumbprint(r, "--remove") for r in remove}
    trusted = [t for t in node.thumbprints if t not in removed]
    trusted += [t for t in (given_thumbprint(a, "--add") for a in add) if t not in trusted]
    if not trusted:
        raise ConfigurationError("a server must keep at least one trusted thumbprint")
    updated = ServerNode.model_validate(
        {**toml_data(node), "thumbprint": trusted[0], "also_trusted": trusted[1:]}
    )
    add_node(home, updated)
    return updated


def set_proxy(home: AgentHome, proxy: ProxySettings) -> None:
    update_config_file(home.config_file, proxy=toml_data(proxy))
