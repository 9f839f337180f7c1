"""kill -9 of the agent in the middle of a deploy (during extraction, and after the switch while
PostDeploy runs): once it is back, the release folders, ``current`` and ``.releases.json``
agree, on the release from before; the interrupted task is reported failed."""

from __future__ import annotations

import asyncio
import json
import os
import zipfile
from pathlib import Path

from tentacle_poll.protocol.models import DeploySpec, SubmitTask, TaskState
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient

from .conftest import register_agent, run_and_follow, wait_for_line
from .processes import Daemon, start_agent_process

FAST_AGENT = {"backoff_max_seconds": "0.3", "cancel_grace_seconds": "1"}


def package(folder: Path, version: str, files: dict[str, str]) -> Path:
    path = folder / f"web-{version}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return path


def deploy(version: str) -> SubmitTask:
    spec = DeploySpec(package_id="web", version=version)
    return SubmitTask(target="web1", kind="deploy", deploy=spec)


def assert_on_the_release_before(releases: Path) -> None:
    assert (releases / "current").readlink().name == "1.0.0"
    order = json.loads((releases / ".releases.json").read_text())
    assert [entry["release"] for entry in order] == ["1.0.0"]
    assert sorted(p.name for p in releases.iterdir()) == [".releases.json", "1.0.0", "current"]


async def started_with_one_release(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, processes: list[Daemon]
) -> tuple[Path, Daemon]:
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    agent = await start_agent_process(home.folder, **FAST_AGENT)
    processes.append(agent)
    await admin.upload_package("web", "1.0.0", package(tmp_path, "1.0.0", {"a.txt": "1"}), "zip")
    final, _ = await run_and_follow(admin, deploy("1.0.0"))
    assert final.state == TaskState.SUCCEEDED
    return home.folder, agent


async def test_killed_after_the_switch_the_agent_puts_current_back(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, processes: list[Daemon]
) -> None:
    home, agent = await started_with_one_release(server, api_key, admin, tmp_path, processes)
    slow = package(tmp_path, "2.0.0", {"PostDeploy.sh": "echo post-started\nsleep 60\n"})
    await admin.upload_package("web", "2.0.0", slow, "zip")
    task = await admin.submit(deploy("2.0.0"))
    await wait_for_line(admin, task.id, "post-started")
    releases = home / "Applications" / "Test" / "web"
    assert (releases / "current").readlink().name == "2.0.0"  # killed after the switch
    await agent.kill()
    processes.append(await start_agent_process(home, **FAST_AGENT))
    assert_on_the_release_before(releases)
    final = await admin.follow(task.id, lambda _: None)
    assert final.state == TaskState.FAILED and "restarted" in final.reason


async def test_killed_during_extraction_the_agent_leaves_no_partial_release(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path, processes: list[Daemon]
) -> None:
    home, agent = await started_with_one_release(server, api_key, admin, tmp_path, processes)
    many = {f"static/{i}.txt": os.urandom(600).hex() for i in range(20_000)}
    await admin.upload_package("web", "2.0.0", package(tmp_path, "2.0.0", many), "zip")
    await admin.submit(deploy("2.0.0"))
    releases = home / "Applications" / "Test" / "web"
    partial = releases / ".2.0.0.partial" / "static"
    async with asyncio.timeout(60):
        # No event to await: the folder appears in another process.
        while not partial.exists():  # noqa: ASYNC110
            await asyncio.sleep(0.002)
    await agent.kill()
    processes.append(await start_agent_process(home, **FAST_AGENT))
    assert_on_the_release_before(releases)
