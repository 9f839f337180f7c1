"""Runs several real agent daemons in one process (for the throughput benchmark: fifty agent
processes would measure Python start-up, not the system). Each has its own home, registration,
journal, spool and poll loop; they share nothing but the event loop.

    python -m tests.benchmarks.agents HOME [HOME ...]
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from tentacle_poll.agent.daemon import Agent
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.logs import setup_logging


async def main(homes: list[Path]) -> None:
    setup_logging("WARNING")
    agents = [Agent(AgentHome(h), AgentHome(h).settings_ready_to_run()) for h in homes]
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: [a.escalate() for a in agents])
    runs = [asyncio.create_task(a.run()) for a in agents]
    await asyncio.gather(*(a.started.wait() for a in agents))
    print("ready", flush=True)
    await asyncio.gather(*runs)


if __name__ == "__main__":
    asyncio.run(main([Path(p) for p in sys.argv[1:]]))
