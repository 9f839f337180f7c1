"""Deploys of one package on one target run one at a time, in the order submitted, and the last
one submitted ends as ``current``; deploys of another package run alongside."""

from __future__ import annotations

import json
import time
import zipfile
from pathlib import Path

from tentacle_poll.protocol.models import DeploySpec, ResultRequest, SubmitTask, TaskState
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.store import NewTask, TaskRecord

from .conftest import RunningAgent, register_agent, registered


def package(folder: Path, package_id: str, version: str, log: Path) -> Path:
    """Deploy.sh notes its start and end in ``log``, a second apart."""
    path = folder / f"{package_id}-{version}.zip"
    deploy = (f'echo "start {package_id} {version}" >> {log}\nsleep 1\n'
              f'echo "end {package_id} {version}" >> {log}\n')  # fmt: skip
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("Deploy.sh", deploy)
    return path


def deploy(package_id: str, version: str) -> SubmitTask:
    spec = DeploySpec(package_id=package_id, version=version)
    return SubmitTask(target="web1", kind="deploy", deploy=spec)


async def test_deploys_of_one_package_run_in_submission_order_and_the_last_is_current(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    log = tmp_path / "order.log"
    for package_id, version in (("race", "1.0.0"), ("race", "2.0.0"), ("other", "1.0.0")):
        archive = package(tmp_path, package_id, version, log)
        await admin.upload_package(package_id, version, archive, "zip")
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    # Queued while the target is offline, so that the agent finds all three at once.
    first = await admin.submit(deploy("race", "1.0.0"))
    second = await admin.submit(deploy("race", "2.0.0"))
    other = await admin.submit(deploy("other", "1.0.0"))
    agent = RunningAgent(home)
    ends = [await admin.follow(t.id, lambda _: None) for t in (first, second, other)]
    await agent.stop()
    assert [t.state for t in ends] == [TaskState.SUCCEEDED] * 3
    lines = log.read_text().splitlines()
    race = [line for line in lines if " race " in line]
    assert race == ["start race 1.0.0", "end race 1.0.0", "start race 2.0.0", "end race 2.0.0"]
    # The other package did not wait for the first race deploy to end.
    assert lines.index("start other 1.0.0") < lines.index("end race 1.0.0")
    releases = home.folder / "Applications" / "Test" / "race"
    assert (releases / "current").readlink().name == "2.0.0"
    listed = json.loads((releases / ".releases.json").read_text())
    assert [entry["release"] for entry in listed] == ["1.0.0", "2.0.0"]


async def test_the_store_leases_a_serial_task_only_after_the_earlier_one_ended(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    agent = await registered(server, api_key, tmp_path)
    store = server.state.store
    at = time.time()
    made = [
        await store.create_task(NewTask(agent.id, "{}", serial=serial), at + i / 1000)
        for i, serial in enumerate(["package:a", "package:a", None, "package:b", "package:a"])
    ]
    leased = await store.lease_tasks(agent.id, 10, at + 1, 30)
    assert [t.id for t in leased] == [made[0].id, made[2].id, made[3].id]
    assert await store.lease_tasks(agent.id, 10, at + 1, 30) == []  # the first is not final
    finished = await _finish(server, made[0].id, agent.id, at + 2)
    assert finished.state == TaskState.SUCCEEDED
    assert [t.id for t in await store.lease_tasks(agent.id, 10, at + 3, 30)] == [made[1].id]


async def _finish(server: Server, task_id: str, agent_id: str, at: float) -> TaskRecord:
    store = server.state.store
    assert await store.accept_task(task_id, agent_id, at) is not None
    return await store.finish_task(
        task_id, ResultRequest(state="succeeded", exit_code=0, last_seq=0), at
    )


async def test_a_task_past_its_deadline_is_never_leased(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    agent = await registered(server, api_key, tmp_path)
    store = server.state.store
    at = time.time()
    late = await store.create_task(NewTask(agent.id, "{}", expires_at=at + 5), at)
    assert await store.lease_tasks(agent.id, 10, at + 6, 30) == []  # before any sweep
    expired = await store.expire_tasks(at + 6)
    assert [t.id for t in expired] == [late.id] and expired[0].state == TaskState.EXPIRED
