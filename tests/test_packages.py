"""Packages: upload, content addressing, refusals, and the agent's verified, resumable cache."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.kinds.packages import PackageCache
from tentacle_poll.exceptions import CommunicationError, RequestRejected, TaskExecutionError
from tentacle_poll.protocol.models import (
    AcceptResponse,
    DeploySpec,
    PollRequest,
    PollResponse,
    ResultRequest,
    SubmitTask,
    TaskView,
)
from tentacle_poll.protocol.routes import PACKAGE_BLOB, POLL, TASK_ACCEPT, TASK_RESULT, task_path
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient

from .conftest import client_for, register_agent
from .relay import CuttingRelay


def make_zip(folder: Path, name: str, files: dict[str, bytes]) -> Path:
    path = folder / name
    with zipfile.ZipFile(path, "w") as archive:
        for member, data in files.items():
            archive.writestr(member, data)
    return path


async def test_upload_list_idempotent_conflict_and_delete(
    admin: AdminClient, tmp_path: Path
) -> None:
    package = make_zip(tmp_path, "web.zip", {"index.html": b"<h1>v1</h1>"})
    stored = await admin.upload_package("web", "1.0.0", package, "zip")
    assert stored.sha256 == hashlib.sha256(package.read_bytes()).hexdigest()
    assert stored.size == package.stat().st_size
    again = await admin.upload_package("web", "1.0.0", package, "zip")  # same bytes: fine
    assert again.uploaded_at == stored.uploaded_at
    other = make_zip(tmp_path, "web2.zip", {"index.html": b"<h1>v2</h1>"})
    with pytest.raises(RequestRejected) as refused:
        await admin.upload_package("web", "1.0.0", other, "zip")
    assert refused.value.status == 409 and "upload it as a new version" in refused.value.detail
    await admin.upload_package("web", "1.0.1", other, "zip")
    assert [(p.package_id, p.version) for p in await admin.packages()] == [
        ("web", "1.0.0"), ("web", "1.0.1"),
    ]  # fmt: skip
    await admin.delete_package("web", "1.0.0")
    assert [p.version for p in await admin.packages()] == ["1.0.1"]


async def test_bad_uploads_get_a_clear_4xx_and_leave_nothing(
    server: Server, admin: AdminClient, tmp_path: Path
) -> None:
    not_zip = tmp_path / "fake.zip"
    not_zip.write_bytes(b"this is not an archive")
    empty = tmp_path / "empty.zip"
    empty.write_bytes(b"")
    for path, fmt, status in [(not_zip, "zip", 400), (empty, "zip", 400), (not_zip, "rar", 400)]:
        with pytest.raises(RequestRejected) as refused:
            await admin.upload_package("web", "1.0.0", path, fmt)
        assert refused.value.status == status
    with pytest.raises(RequestRejected) as bad_name:
        await admin.upload_package("../etc", "1", not_zip, "zip")
    assert bad_name.value.status in (400, 404)
    assert await admin.packages() == []
    assert [p.name for p in (server.home.folder / "packages").iterdir()] == []


@pytest.fixture
async def agent_client(server: Server, api_key: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    home = await register_agent(server, api_key, tmp_path / "web1", "web1")
    client = client_for(server, home)
    yield client, home
    await client.close()


async def lease_deploy(
    admin: AdminClient, client: CommsClient, package_id: str, version: str
) -> TaskView:
    """A deploy of the package, leased to the agent: what lets it download the bytes."""
    deploy = DeploySpec(package_id=package_id, version=version)
    task = await admin.submit(SubmitTask(target="web1", kind="deploy", deploy=deploy))
    answer = await client.post(POLL, PollRequest(free_slots=1, hold_seconds=0), PollResponse)
    assert [e.task_id for e in answer.envelopes] == [task.id]
    return task


async def test_an_agent_gets_only_the_bytes_a_task_it_holds_names(
    server: Server,
    admin: AdminClient,
    agent_client,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    client, _ = agent_client
    package = make_zip(tmp_path, "p.zip", {"a.txt": b"secret config"})
    stored = await admin.upload_package("p", "1", package, "zip")
    fetched_from_elsewhere = tmp_path / "fetched.txt"
    fetched_from_elsewhere.write_bytes(b"what another target sent up")
    other = await admin.upload_file(fetched_from_elsewhere)
    unknown = "0" * 64

    async def status(sha256: str) -> int:
        with open(tmp_path / "out", "wb") as out:
            try:
                await client.download(PACKAGE_BLOB.format(sha256=sha256), out, 0)
            except RequestRejected as refused:
                return refused.status
        return 200

    assert [await status(s) for s in (stored.sha256, other.sha256, unknown)] == [404, 404, 404]
    task = await lease_deploy(admin, client, "p", "1")
    assert await status(stored.sha256) == 200  # leased to it
    await client.post(task_path(TASK_ACCEPT, task.id), b"{}", AcceptResponse)
    assert await status(stored.sha256) == 200  # running
    assert await status(other.sha256) == 404  # still not what its task names
    result = ResultRequest(state="succeeded", exit_code=0, last_seq=0)
    await client.post(task_path(TASK_RESULT, task.id), result, TaskView)
    assert await status(stored.sha256) == 404  # ended: no longer


async def test_agent_downloads_verifies_and_caches(
    admin: AdminClient,
    agent_client,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    client, home = agent_client
    package = make_zip(tmp_path, "big.zip", {"blob.bin": os.urandom(3 * 1024 * 1024)})
    stored = await admin.upload_package("big", "1", package, "zip")
    await lease_deploy(admin, client, "big", "1")
    cache = PackageCache(home.folder / "packages")
    path = await cache.fetch(client, stored.sha256, stored.size)
    assert path.read_bytes() == package.read_bytes()
    assert cache.bytes_downloaded == stored.size
    await cache.fetch(client, stored.sha256, stored.size)  # a second deploy: no bytes move
    assert cache.bytes_downloaded == stored.size


async def test_a_cut_download_resumes_where_it_stopped(
    server: Server,
    admin: AdminClient,
    agent_client,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    client, home = agent_client
    package = make_zip(tmp_path, "big.zip", {"blob.bin": os.urandom(4 * 1024 * 1024)})
    stored = await admin.upload_package("big", "1", package, "zip")
    await lease_deploy(admin, client, "big", "1")
    cache = PackageCache(home.folder / "packages")
    async with CuttingRelay(server.comms_port) as relay:
        through = CommsClient(
            f"https://127.0.0.1:{relay.port}", [server.state.thumbprint], home.identity_folder
        )
        relay.cut_after_bytes(1024 * 1024)
        try:
            with pytest.raises(CommunicationError):
                await cache.fetch(through, stored.sha256, stored.size)
        finally:
            await through.close()
    partial = cache.path_of(stored.sha256).with_suffix(".part")
    first_part = partial.stat().st_size
    assert 0 < first_part < stored.size
    client, _ = agent_client
    path = await cache.fetch(client, stored.sha256, stored.size)
    assert path.read_bytes() == package.read_bytes()
    assert cache.bytes_downloaded == stored.size - first_part  # only the rest moved


async def test_corrupt_download_is_refused_and_deleted(
    admin: AdminClient,
    agent_client,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    client, home = agent_client
    package = make_zip(tmp_path, "p.zip", {"a.txt": b"a" * 100_000})
    stored = await admin.upload_package("p", "1", package, "zip")
    await lease_deploy(admin, client, "p", "1")
    cache = PackageCache(home.folder / "packages")
    partial = cache.path_of(stored.sha256).with_suffix(".part")
    partial.write_bytes(b"garbage" * 100)  # a corrupted partial download
    with pytest.raises(TaskExecutionError, match="it was deleted"):
        await cache.fetch(client, stored.sha256, stored.size)
    assert not partial.exists() and not cache.path_of(stored.sha256).exists()
    assert (await cache.fetch(client, stored.sha256, stored.size)).stat().st_size == stored.size


def test_the_cache_prunes_the_least_recently_used_but_never_one_in_use(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path / "packages", max_bytes=2500)
    for age, name in enumerate(["c" * 64, "b" * 64, "a" * 64]):  # a: the oldest
        path = cache.path_of(name)
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1000.0 - age, 1000.0 - age))
    (cache.folder / ("d" * 64 + ".part")).write_bytes(b"x" * 5000)  # a download under way
    with cache.in_use("a" * 64):
        assert cache.prune() == ["b" * 64]  # the oldest is in use: the next oldest goes
    assert sorted(p.name[:1] for p in cache.folder.iterdir()) == ["a", "c", "d"]
    assert cache.prune() == []  # 2,000 bytes of packages: within the cap
