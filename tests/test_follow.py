"""`task follow` (and `task run`) through a server restart: the command reconnects with backoff
and resumes after the last line it printed; every line appears once, and the exit code is the
task's, not "could not reach the server"."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tentacle_poll.server.admin_client import AdminClient

from .conftest import script_task, wait_for_line
from .processes import Daemon, start_server_process
from .test_faults import _server_and_agent_processes


async def test_following_survives_a_server_restart_with_every_line_once(
    tmp_path: Path, processes: list[Daemon]
) -> None:
    server, key, ports = await _server_and_agent_processes(tmp_path, processes)
    gate = tmp_path / "gate"
    body = f"seq 1 500\nwhile [ ! -e {gate} ]; do sleep 0.02; done\nseq 501 1000\nexit 3\n"
    admin_url = f"http://127.0.0.1:{ports[1]}"
    async with AdminClient(admin_url, key) as admin:
        task = await admin.submit(script_task("web1", body))
        await wait_for_line(admin, task.id, "500")
    env = {"TENTACLE_POLL_API_KEY": key, "TENTACLE_POLL_ADMIN_URL": admin_url}
    follower = await Daemon.start("task", "follow", task.id, env={**os.environ, **env})
    processes.append(follower)
    await follower.wait_for("500")
    await server.kill()
    await follower.wait_for("reconnecting")  # it noticed, and waits for the server
    gate.touch()  # the rest is printed while the server is down
    processes.append(await start_server_process(tmp_path / "server", *ports))
    async with asyncio.timeout(60):
        code = await follower.process.wait()  # it ends by itself, with the task
    await follower.stop()  # collects the last output lines
    numbers = [line for line in follower.lines if line.isdigit()]
    assert numbers == [str(i) for i in range(1, 1001)]
    assert code == 1 and "failed, exit code 3" in follower.output
