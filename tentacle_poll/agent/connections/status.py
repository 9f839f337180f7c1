"""What the poll loops last heard from each server node: for the agent's metrics and
readiness (agent/metrics.py), kept whether or not those are served."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

ANSWERED_LATELY_SECONDS = 120.0  # several holds: a server that answered none is unreachable


@dataclass
class NodeStatus:
    """What one poll loop last heard from its server node."""

    last_answer: float | None = None  # time.time()
    failures_in_a_row: int = 0
    refused_since: float | None = None  # our certificate refused ever since (no answer between)

    def answered(self) -> None:
        self.last_answer = time.time()
        self.failures_in_a_row = 0
        self.refused_since = None

    def failed(self, refused: bool) -> None:
        self.failures_in_a_row += 1
        if refused and self.refused_since is None:
            self.refused_since = time.time()

    def refused_for(self) -> float:
        return 0.0 if self.refused_since is None else time.time() - self.refused_since


@dataclass
class AgentStatus:
    nodes: dict[str, NodeStatus] = field(default_factory=dict)

    def node(self, url: str) -> NodeStatus:
        return self.nodes.setdefault(url, NodeStatus())

    def answered_lately(self) -> bool:
        since = time.time() - ANSWERED_LATELY_SECONDS
        return any((n.last_answer or 0.0) > since for n in self.nodes.values())
