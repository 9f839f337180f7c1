"""Fleet and task listings: targets in name order a page at a time (with a Link to the next),
filtered by environment, role, tenant and connection; tasks by state and time; --json for
scripts; and a clear 400 (or usage error) for a filter that makes no sense."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import aiohttp
import pytest

from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient

from .conftest import AgentFactory, register_agent, run_and_follow, script_task
from .processes import CLI
from .test_deadlines import cli

LABELS = {  # name: (environment, roles, tenants)
    "api1": ("Production", ["api"], ["acme"]),
    "api2": ("Staging", ["api"], []),
    "db1": ("Production", ["db"], ["acme", "globex"]),
    "db2": ("Staging", ["db"], ["globex"]),
    "web2": ("Production", ["web"], []),
}


@pytest.fixture
async def fleet(
    server: Server, api_key: str, start_agent: AgentFactory, tmp_path: Path
) -> list[str]:
    """web1 connected (a running agent), the others registered only."""
    await start_agent("web1")
    web1 = await server.state.store.agent_by_name("web1")
    assert web1 is not None
    await server.state.dispatcher.wait_until_polling(web1.id)
    for name, (environment, roles, tenants) in LABELS.items():
        await register_agent(
            server, api_key, tmp_path / name, name, environments=[environment], roles=roles,
            tenants=tenants,
        )  # fmt: skip
    return sorted([*LABELS, "web1"])


async def names(admin: AdminClient, **filters: str) -> list[str]:
    return [t.name for t in await admin.targets(**filters)]


async def test_targets_are_paged_in_name_order_with_a_link_to_the_next(
    server: Server, api_key: str, admin: AdminClient, fleet: list[str]
) -> None:
    pages = [[t.name for t in page] async for page in admin.target_pages(page_size=4)]
    assert pages == [fleet[:4], fleet[4:]]
    url = f"http://127.0.0.1:{server.admin_port}/api/targets?limit=2&role=api"
    headers = {"X-Tentacle-Api-Key": api_key}
    async with aiohttp.ClientSession(headers=headers) as http, http.get(url) as response:
        link = response.headers["Link"]
        assert [t["name"] for t in await response.json()] == ["api1", "api2"]
    assert link == '</api/targets?limit=2&role=api&after=api2>; rel="next"'


async def test_targets_are_filtered_by_label_and_connection(
    admin: AdminClient, fleet: list[str]
) -> None:
    assert await names(admin, environment="Production") == ["api1", "db1", "web2"]
    assert await names(admin, environment="Staging", role="db") == ["db2"]
    assert await names(admin, tenant="globex") == ["db1", "db2"]
    assert await names(admin, connected="true") == ["web1"]
    assert await names(admin, connected="false") == [n for n in fleet if n != "web1"]
    assert await names(admin, environment="Prod") == [], "whole labels only"
    [web1] = await admin.targets(connected="true")
    assert web1.agent_version and web1.tenants == []


async def test_tasks_are_filtered_by_state_and_time(
    admin: AdminClient, start_agent: AgentFactory
) -> None:
    await start_agent("web1")
    before = time.time()
    failed, _ = await run_and_follow(admin, script_task("web1", "exit 3"))
    succeeded, _ = await run_and_follow(admin, script_task("web1", "true"))
    assert [t.id for t in await admin.tasks(state="failed")] == [failed.id]
    assert [t.id for t in await admin.tasks(state="failed,succeeded")] == [succeeded.id, failed.id]
    assert await admin.tasks(since=f"{time.time() + 60}") == []
    assert len(await admin.tasks("web1", since=f"{before - 1}")) == 2
    assert len(await admin.tasks(limit=1)) == 1


@pytest.mark.parametrize(
    ("path", "says"),
    [
        ("/api/targets?limit=0", "limit must be between 1 and 1000"),
        ("/api/targets?connected=maybe", "connected must be true or false"),
        ("/api/tasks?state=done", "unknown task state done"),
        ("/api/tasks?since=yesterday", "since must be a number"),
    ],
)
async def test_a_filter_that_makes_no_sense_is_a_clear_400(
    server: Server, api_key: str, path: str, says: str
) -> None:
    headers = {"X-Tentacle-Api-Key": api_key}
    url = f"http://127.0.0.1:{server.admin_port}{path}"
    async with aiohttp.ClientSession(headers=headers) as http, http.get(url) as response:
        assert response.status == 400
        assert says in (await response.json())["detail"]


async def command_json(server: Server, key: str, *args: str) -> object:
    env = {**os.environ, "TENTACLE_POLL_API_KEY": key,
           "TENTACLE_POLL_ADMIN_URL": f"http://127.0.0.1:{server.admin_port}"}  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *CLI, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        output, errors = await process.communicate()
    assert process.returncode == 0, errors.decode()
    return json.loads(output)


async def test_the_command_line_lists_as_json_and_as_a_table(
    server: Server, api_key: str, fleet: list[str]
) -> None:
    listed = await command_json(server, api_key, "targets", "--json", "--tenant", "acme")
    assert isinstance(listed, list) and [t["name"] for t in listed] == ["api1", "db1"]
    assert listed[1]["tenants"] == ["acme", "globex"] and "agent_version" in listed[1]
    code, table = await cli(server, api_key, "targets", "--disconnected", "--role", "db")
    rows = table.splitlines()
    assert code == 0 and rows[0].split()[:4] == ["NAME", "ENVIRONMENTS", "ROLES", "TENANTS"]
    assert [row.split()[0] for row in rows[1:]] == ["db1", "db2"]
    assert "acme,globex" in rows[1]
    tasks = await command_json(server, api_key, "task", "list", "--json", "--state", "queued")
    assert tasks == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["task", "list", "--since", "yesterday"], "use 30m, 2h, 7d or a date"),
        (["task", "list", "--state", "done"], "unknown state done"),
        (["targets", "--connected", "--disconnected"], "not allowed with argument"),
    ],
)
async def test_listing_mistakes_are_one_usage_line(
    server: Server, api_key: str, args: list[str], says: str
) -> None:
    code, output = await cli(server, api_key, *args)
    assert code == 2 and says in output and "Traceback" not in output
