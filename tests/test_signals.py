"""Signals as operators expect, sent to a real agent process: SIGHUP reloads what can change at
run time and says what changed (and that a broken file changes nothing); Ctrl-C (SIGINT) is
logged as an interrupt; no traceback at shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tentacle_poll.config import update_config_file
from tentacle_poll.protocol.models import HealthSpec, SubmitTask
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient

from .conftest import register_agent, run_and_follow
from .processes import Daemon, start_agent_process


async def test_sighup_reloads_the_settings_that_can_change_and_says_so(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, processes: list[Daemon]
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    update_config_file(home.config_file, concurrency=4)
    agent = await start_agent_process(home.folder)
    processes.append(agent)
    update_config_file(home.config_file, concurrency=2, log_level="DEBUG", spool_max_mb=10)
    agent.process.send_signal(signal.SIGHUP)
    line = await agent.wait_for("SIGHUP: reloaded")
    assert "concurrency 4 -> 2" in line and "log_level INFO -> DEBUG" in line
    await agent.wait_for("spool_max_mb changed; that takes effect at the next restart")
    final, events = await run_and_follow(
        admin, SubmitTask(target="web1", kind="health", health=HealthSpec())
    )
    assert final.state == "succeeded"
    assert json.loads(events[0].text)["free_slots"] == 2
    home.config_file.write_text("concurrency = 0\n")  # invalid: nothing changes
    agent.process.send_signal(signal.SIGHUP)
    await agent.wait_for("SIGHUP: settings not reloaded, the old ones stay")
    agent.process.send_signal(signal.SIGINT)
    await agent.wait_for("interrupted (Ctrl-C): stopping")
    assert await agent.process.wait() == 0  # by itself: one Ctrl-C is enough
    await agent.stop()  # reads its output to the end
    assert "Traceback" not in agent.output and "Event loop is closed" not in agent.output


async def test_sighup_moves_the_log_to_a_file_as_json(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, processes: list[Daemon]
) -> None:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    agent = await start_agent_process(home.folder)
    processes.append(agent)
    log_file = tmp_path / "logs" / "agent.log"
    update_config_file(home.config_file, log_file=str(log_file), log_format="json")
    agent.process.send_signal(signal.SIGHUP)
    await agent.wait_for(f"SIGHUP: logging to {log_file} from now on")  # the last on stderr
    final, _ = await run_and_follow(
        admin, SubmitTask(target="web1", kind="health", health=HealthSpec())
    )
    assert await agent.stop() == 0
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    ended = [r for r in records if r.get("event") == "task_ended"]
    assert [r["task_id"] for r in ended] == [final.id], records
    assert ended[0]["server"] == f"https://127.0.0.1:{server.comms_port}"
    assert log_file.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_after_the_command_ended_is_ignored(signum: int) -> None:
    """Between the loop's close (which puts the default handlers back) and the process's end,
    a second stop signal (systemd's SIGTERM after a Ctrl-C) killed a cleanly stopped agent
    (-15) or printed a KeyboardInterrupt: it is now ignored, the process ending by itself."""
    script = (
        "import os\n"
        "from tentacle_poll.cli.main import _ignore_late_stop_signals\n"
        "_ignore_late_stop_signals()\n"
        f"os.kill(os.getpid(), {int(signum)})\n"
        "print('the rest of its output')\n"
        "raise SystemExit(3)\n"
    )
    ended = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=30)
    assert (ended.returncode, ended.stdout, ended.stderr) == (3, b"the rest of its output\n", b"")
