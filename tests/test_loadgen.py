"""The load generator operators size a server with: it registers its simulated agents through
the API (pinning the server first) and holds their polls, as real processes against a real
server."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient

from .conftest import comms_url
from .processes import Daemon


async def _loadgen(
    server: Server, folder: Path, api_key: str, thumbprint: str, *extra: str
) -> Daemon:
    return await Daemon.run(
        sys.executable, "-m", "tests.benchmarks.loadgen",
        "--server", comms_url(server), "--server-thumbprint", thumbprint,
        "--certs", str(folder / "certs"), "--count", "5", "--seconds", "2", "--ramp", "0.2",
        "--report", str(folder / "report.jsonl"), "--register", *extra,
        env={"TENTACLE_POLL_API_KEY": api_key},
    )  # fmt: skip


@pytest.mark.parametrize("subjects", [[], ["--same-subject", "cloned-host"]])
async def test_registers_its_agents_and_holds_their_polls(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, subjects: list[str]
) -> None:
    generator = await _loadgen(server, tmp_path, api_key, server.state.thumbprint, *subjects)
    await generator.wait_for("registered sim-0 ... sim-4")
    await generator.wait_for("ready")
    assert await generator.process.wait() == 0
    names = {t.name for t in await admin.targets()}
    assert names >= {f"sim-{i}" for i in range(5)}
    report = [json.loads(line) for line in (tmp_path / "report.jsonl").read_text().splitlines()]
    assert len(report) == 5 and all(agent["sent"] and not agent["failed"] for agent in report)
    assert (tmp_path / "certs" / "key-4.pem").stat().st_mode & 0o777 == 0o600


async def test_refuses_to_send_the_api_key_to_an_unpinned_server(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    generator = await _loadgen(server, tmp_path, api_key, "AB" * 32)
    assert await generator.process.wait() != 0
    await generator.stop()
    assert "thumbprint is not" in generator.output and "Traceback" not in generator.output
    assert await admin.targets() == []
    assert api_key not in generator.output and os.environ.get("TENTACLE_POLL_API_KEY") is None
