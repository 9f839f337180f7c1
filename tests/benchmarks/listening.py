"""Listening mode's dispatch latency, beside polling mode's measured in the same run: the same
script, the same server, one idle agent each (issue 19)."""

from __future__ import annotations

from tentacle_poll.server.identity import ServerHome

from ..conftest import listen_at
from ..processes import Daemon
from .figures import Bench, Row, dispatch_latency, latency_rows, percentile

TARGET_RATIO = 1.5  # listening may cost a little (a connection kept per request), not more


async def listening_latency_rows(bench: Bench, runs: int, polling: list[float],
                                 local: list[float]) -> list[Row]:  # fmt: skip
    _, thumbprint = ServerHome(bench.server_home).ensure_identity()
    home = await listen_at(
        bench.admin_url, thumbprint, bench.key, bench.folder / "listen", "listen"
    )
    agent = await Daemon.start("--home", str(home.folder))
    try:
        assert bench.server is not None
        # Measured from the server's first connection on, as the polling agent's are from its
        # first poll: not the enrolment, nor the wait for a port that was not listening yet.
        await bench.server.wait_for("target listen: connected to")
        listening = await dispatch_latency(bench, "listen", runs)
    finally:
        await agent.stop()
    ratio = percentile(listening, 50) / percentile(polling, 50)
    compared = Row(
        "dispatch latency p50, listening / polling mode",
        f"{percentile(listening, 50) * 1000:.1f} ms",
        f"polling {percentile(polling, 50) * 1000:.1f} ms",
        f"{ratio:.2f}x",
        f"<= {TARGET_RATIO}x polling",
        ratio <= TARGET_RATIO,
    )
    return [*latency_rows("1 idle listening agent", listening, local), compared]
