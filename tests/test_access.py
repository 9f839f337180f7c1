"""Scoped API keys, revocation, listable tokens and the audit trail, against a real server."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from pathlib import Path

import pytest

from tentacle_poll.agent.connections.registration import Registration, register
from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.exceptions import RequestRejected
from tentacle_poll.protocol.models import (
    ApiKeyCreate,
    FanOut,
    RegisterResponse,
    ScriptSpec,
    TaskSpec,
)
from tentacle_poll.protocol.routes import REGISTER, REGISTRATION_TOKEN_HEADER
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.store import SqliteStore

from .conftest import comms_url, new_agent_home, register_agent, script_task
from .test_cli import cli


def admin_at(server: Server, key: str) -> AdminClient:
    return AdminClient(f"http://127.0.0.1:{server.admin_port}", key)


async def new_key(admin: AdminClient, name: str, scope: str, *environments: str) -> str:
    request = ApiKeyCreate(name=name, scope=scope, environments=list(environments))  # type: ignore[arg-type]
    return (await admin.create_key(request)).key


@pytest.fixture
async def two_targets(server: Server, api_key: str, tmp_path: Path) -> None:
    await register_agent(server, api_key, tmp_path / "stg", "stg-01", environments=["Staging"])
    await register_agent(server, api_key, tmp_path / "prod", "prod-01", environments=["Production"])


async def test_a_read_key_sees_but_cannot_change(
    server: Server, admin: AdminClient, two_targets: None
) -> None:
    queued = await admin.submit(script_task("stg-01", "true"))
    async with admin_at(server, await new_key(admin, "viewer", "read")) as viewer:
        assert {t.name for t in await viewer.targets()} == {"stg-01", "prod-01"}
        assert (await viewer.task(queued.id)).id == queued.id
        for attempt in (
            viewer.submit(script_task("stg-01", "true")),
            viewer.cancel(queued.id),
            viewer.delete_target("stg-01"),
            viewer.keys(),
        ):
            with pytest.raises(RequestRejected) as refused:
                await attempt
            assert (
                refused.value.status == 403 and "viewer has the read scope" in refused.value.detail
            )


async def test_a_staging_deploy_key_is_refused_production_with_a_clear_problem(
    server: Server, admin: AdminClient, two_targets: None
) -> None:
    production_task = await admin.submit(script_task("prod-01", "true"))
    async with admin_at(server, await new_key(admin, "ci-staging", "deploy", "Staging")) as ci:
        staged = await ci.submit(script_task("stg-01", "echo ok"))
        assert staged.submitted_by == "ci-staging"
        refusals = [
            ci.submit(script_task("prod-01", "echo no")),
            ci.cancel(production_task.id),
            ci.fan_out(
                FanOut(environment="Production", task=TaskSpec(script=ScriptSpec(body="x")))
            ),
            ci.delete_target("stg-01"),  # admin only, whatever the environment
        ]
        for attempt in refusals:
            with pytest.raises(RequestRejected) as refused:
                await attempt
            assert refused.value.status == 403
        with pytest.raises(RequestRejected, match="may deploy to Staging only, not to Production"):
            await ci.submit(script_task("prod-01", "echo no"))


async def test_keys_are_listed_without_secrets_and_a_revoked_key_is_refused_at_once(
    server: Server, admin: AdminClient
) -> None:
    secret = await new_key(admin, "temporary", "deploy")
    async with admin_at(server, secret) as temporary:
        await temporary.targets()  # works, and is now "last used"
        listed = {k.name: k for k in await admin.keys()}
        assert listed["temporary"].scope == "deploy" and listed["temporary"].last_used is not None
        assert listed["temporary"].created_by == "tests"
        assert secret not in str(await admin.keys())
        await admin.revoke_key("temporary")
        with pytest.raises(RequestRejected) as refused:
            await temporary.targets()
    assert refused.value.status == 401
    with pytest.raises(RequestRejected, match="an API key named tests exists"):
        await new_key(admin, "tests", "read")  # names are unique


async def test_tokens_are_listed_and_a_revoked_one_registers_nothing(
    server: Server, admin: AdminClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    created = await admin.create_token(3600)
    assert [t.id for t in await admin.tokens()] == [created.id]
    await admin.revoke_token(created.id)
    assert await admin.tokens() == []
    home = new_agent_home(tmp_path / "a")
    details = Registration(comms_url(server), "a", ["Test"], ["web"], token=created.token)
    with pytest.raises(RequestRejected) as refused:
        await register(home, details)
    assert refused.value.status == 401
    assert (
        "refused a registration" in caplog.text and created.token.split(".")[-1] not in caplog.text
    )


async def test_every_change_is_in_the_audit_trail_with_the_key_that_made_it(
    server: Server, admin: AdminClient, api_key: str, two_targets: None
) -> None:
    started = time.time()
    deployer = await new_key(admin, "deployer", "deploy")
    async with admin_at(server, deployer) as client:
        task = await client.submit(script_task("stg-01", "true"))
        await client.cancel(task.id)
    await admin.delete_target("prod-01")
    entries = await admin.audit(started - 1, None, 100)
    seen = {(e.key, e.action, e.subject) for e in entries}
    assert ("tests", "key created", "deployer") in seen
    assert ("deployer", "task submitted", task.id) in seen
    assert ("deployer", "task cancelled", task.id) in seen
    assert ("tests", "target deleted", "prod-01") in seen
    assert ("tests", "target registered", "stg-01") in seen
    only = await admin.audit(started - 1, "deployer", 100)
    assert {e.key for e in only} == {"deployer"} and len(only) == 2
    assert await admin.audit(time.time() + 60, None, 100) == []


def test_the_first_key_and_the_audit_work_on_the_local_database(tmp_path: Path) -> None:
    home = str(tmp_path / "server")
    key = cli("server", "api-key", "create", "--name", "first", "--server-home", home).stdout
    assert key.startswith("API-")
    cli("server", "api-key", "create", "--name", "ro", "--scope", "read", "--server-home", home)
    listing = cli("server", "api-key", "list", "--server-home", home).stdout
    assert "first: admin" in listing and "ro: read" in listing and key.strip() not in listing
    cli("server", "api-key", "revoke", "ro", "--server-home", home)
    audit = cli("server", "audit", "--server-home", home).stdout
    assert "key created first" in audit and "key revoked ro" in audit
    bad = cli("server", "token", "create", "--ttl-hours", "0", "--server-home", home, check=False)
    assert bad.returncode == 1 and "--ttl-hours must be more than 0" in bad.stderr
    assert "Traceback" not in bad.stderr


async def test_a_database_of_an_earlier_version_keeps_its_keys_as_admin(tmp_path: Path) -> None:
    database = tmp_path / "server.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE api_keys (key_hash TEXT PRIMARY KEY, name TEXT, created_at REAL)")
        old_hash = hashlib.sha256(b"API-OLD").hexdigest()
        db.execute("INSERT INTO api_keys VALUES (?, 'old', 1.0)", (old_hash,))
    store = SqliteStore(database, migrate=True)
    try:
        found = await store.api_key("API-OLD", time.time())
    finally:
        await store.close()
    assert found is not None and found.scope == "admin" and found.environments == []


async def test_a_read_key_cannot_register_and_a_bad_body_does_not_use_up_a_token(
    server: Server, admin: AdminClient, tmp_path: Path
) -> None:
    home = new_agent_home(tmp_path / "a")
    reader = await new_key(admin, "reader", "read")
    details = Registration(
        comms_url(server), "a", ["Test"], ["web"],
        server_thumbprint=server.state.thumbprint, api_key=reader,
    )  # fmt: skip
    with pytest.raises(RequestRejected, match="read scope; registering needs deploy or admin"):
        await register(home, details)
    created = await admin.create_token(3600)
    client = CommsClient(comms_url(server), [server.state.thumbprint], None)
    try:
        with pytest.raises(RequestRejected) as refused:
            await client.post(REGISTER, b'{"name": "a"}', RegisterResponse,
                              headers={REGISTRATION_TOKEN_HEADER: created.token})  # fmt: skip
    finally:
        await client.close()
    assert refused.value.status == 400
    assert [t.id for t in await admin.tokens()] == [created.id]  # still there, still usable
    token_details = Registration(comms_url(server), "a", ["Test"], ["web"], token=created.token)
    assert (await register(home, token_details)).name == "a"
