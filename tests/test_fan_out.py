"""Fan-out by environment and role over several agents, aggregate state, stop on failure,
offline targets reported; the health check on every target of an environment."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tentacle_poll.exceptions import RequestRejected
from tentacle_poll.protocol.models import FanOut, HealthSpec, ScriptSpec, TaskSpec, TaskState
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient

from .conftest import RunningAgent, register_agent


async def fleet(server: Server, api_key: str, tmp_path: Path) -> list[RunningAgent]:
    """web1 (Prod, web), web2 (Prod, web+api, tenant acme), db1 (Prod, db), test1 (Test, web)."""
    layout = {
        "web1": (["Prod"], ["web"], []), "web2": (["Prod"], ["web", "api"], ["acme"]),
        "db1": (["Prod"], ["db"], []), "test1": (["Test"], ["web"], []),
    }  # fmt: skip
    agents = []
    for name, (environments, roles, tenants) in layout.items():
        home = await register_agent(
            server, api_key, tmp_path / name, name, environments=environments, roles=roles,
            tenants=tenants,
        )  # fmt: skip
        agents.append(RunningAgent(home))
    return agents


def script(body: str) -> TaskSpec:
    return TaskSpec(kind="script", script=ScriptSpec(body=body))


async def follow_all(admin: AdminClient, deployment_id: str) -> None:
    view = await admin.deployment(deployment_id)
    await asyncio.gather(*(admin.follow(t.task_id, lambda _: None) for t in view.targets))


async def test_fan_out_hits_exactly_the_matching_targets(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    agents = await fleet(server, api_key, tmp_path)
    view = await admin.fan_out(
        FanOut(environment="Prod", roles=["web"], task=script("echo $TENTACLE_TASK_ID"))
    )
    assert sorted(t.target for t in view.targets) == ["web1", "web2"]
    await follow_all(admin, view.id)
    final = await admin.deployment(view.id)
    assert final.state == "succeeded" and final.counts == {"succeeded": 2}
    by_tenant = await admin.fan_out(
        FanOut(environment="Prod", roles=["web", "db"], tenants=["acme"], task=script("true"))
    )
    assert [t.target for t in by_tenant.targets] == ["web2"]
    everyone = await admin.fan_out(
        FanOut(environment="Prod", task=TaskSpec(kind="health", health=HealthSpec()))
    )
    assert sorted(t.target for t in everyone.targets) == ["db1", "web1", "web2"]
    await follow_all(admin, everyone.id)
    report = json.loads((await admin.events(everyone.targets[0].task_id, 0, 0)).events[0].text)
    assert {
        "agent_version",
        "os",
        "python",
        "free_disk_bytes",
        "free_slots",
        "certificate_expires",
    } <= set(report)
    assert report["free_slots"] == agents[0].agent.settings.concurrency  # all idle: all free
    with pytest.raises(RequestRejected) as none:
        await admin.fan_out(FanOut(environment="Staging", roles=["web"], task=script("true")))
    assert none.value.status == 404
    for agent in agents:
        await agent.stop()


async def test_stop_on_first_failure_cancels_the_rest_and_offline_targets_are_reported(
    server: Server, api_key: str, admin: AdminClient, tmp_path: Path
) -> None:
    agents = await fleet(server, api_key, tmp_path)
    await agents[2].stop()  # db1 goes offline: its task waits, and is reported
    view = await admin.fan_out(
        FanOut(environment="Prod", roles=["web", "db"], stop_on_first_failure=True,
               task=script("exit 4"))
    )  # fmt: skip
    assert sorted(t.target for t in view.targets) == ["db1", "web1", "web2"]
    assert view.offline == ["db1"]
    online = [t for t in view.targets if t.target != "db1"]
    await asyncio.gather(*(admin.follow(t.task_id, lambda _: None) for t in online))
    after = await admin.deployment(view.id)
    states = {t.target: t.state for t in after.targets}
    assert states["web1"] == states["web2"] == TaskState.FAILED
    assert states["db1"] == TaskState.CANCELLED  # stopped before it ever started
    assert after.state == "failed" and after.counts == {"failed": 2, "cancelled": 1}
    for agent in agents:
        if not agent.task.done():
            await agent.stop()


async def test_deployments_are_listed_and_a_script_deployment_does_not_roll_back(
    server: Server, admin: AdminClient, api_key: str, tmp_path: Path
) -> None:
    agents = await fleet(server, api_key, tmp_path)
    try:
        view = await admin.fan_out(FanOut(environment="Prod", roles=["db"], task=script("true")))
        await follow_all(admin, view.id)
        listed = await admin.deployments(5)
        assert [(d.id, d.description, d.state, d.counts) for d in listed] == [
            (view.id, "bash script to Prod (db)", "succeeded", {"succeeded": 1})
        ]
        with pytest.raises(RequestRejected) as refused:
            await admin.roll_back_deployment(view.id)
        assert refused.value.status == 400 and "only a package rolls back" in refused.value.detail
        with pytest.raises(RequestRejected) as unknown:
            await admin.roll_back_deployment("D-nothing")
        assert unknown.value.status == 400
    finally:
        for agent in agents:
            await agent.stop(levels=3)
