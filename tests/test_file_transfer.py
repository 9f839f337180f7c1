"""File transfer tasks: to and from a target, confined to its file roots, SHA-256 checked."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from tentacle_poll.protocol.models import FetchFileSpec, SendFileSpec, SubmitTask, TaskState
from tentacle_poll.server.admin_client import AdminClient

from .conftest import AgentFactory, run_and_follow


def send(sha256: str, size: int, destination: str, overwrite: bool = False) -> SubmitTask:
    spec = SendFileSpec(sha256=sha256, size=size, destination=destination, overwrite=overwrite)
    return SubmitTask(target="web1", kind="send_file", send_file=spec)


def fetch(path: str) -> SubmitTask:
    return SubmitTask(target="web1", kind="fetch_file", fetch_file=FetchFileSpec(path=path))


@pytest.mark.parametrize("mode", ["polling", "listening"])
async def test_send_a_file_to_the_target_inside_its_roots(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    agent = await start_agent("web1")
    source = tmp_path / "app.conf"
    source.write_bytes(os.urandom(300_000))
    stored = await admin.upload_file(source)
    assert stored.sha256 == hashlib.sha256(source.read_bytes()).hexdigest()
    root = agent.agent.home.folder / "files"
    final, events = await run_and_follow(
        admin, send(stored.sha256, stored.size, str(root / "etc" / "app.conf"))
    )
    assert final.state == TaskState.SUCCEEDED
    assert (root / "etc" / "app.conf").read_bytes() == source.read_bytes()
    assert stored.sha256 in events[-1].text
    again, _ = await run_and_follow(
        admin, send(stored.sha256, stored.size, str(root / "etc" / "app.conf"))
    )
    assert again.state == TaskState.FAILED and "ask for overwrite" in again.reason
    for outside in ("/etc/evil.conf", str(root / ".." / "escaped.conf")):
        refused, _ = await run_and_follow(admin, send(stored.sha256, stored.size, outside))
        assert (
            refused.state == TaskState.FAILED
            and "outside this agent's file roots" in refused.reason
        )
    assert not Path("/etc/evil.conf").exists()
    assert not (root.parent / "escaped.conf").exists()


@pytest.mark.parametrize("mode", ["polling", "listening"])
async def test_fetch_a_file_from_the_target_with_its_digest(
    start_agent: AgentFactory, admin: AdminClient, tmp_path: Path
) -> None:
    agent = await start_agent("web1")
    root = agent.agent.home.folder / "files"
    root.mkdir(parents=True)
    log = root / "app.log"
    log.write_bytes(b"line\n" * 50_000)
    final, events = await run_and_follow(admin, fetch(str(log)))
    assert final.state == TaskState.SUCCEEDED
    digest = hashlib.sha256(log.read_bytes()).hexdigest()
    assert digest in events[-1].text
    copy = tmp_path / "copy.log"
    assert await admin.download_file(digest, copy) == log.stat().st_size
    assert copy.read_bytes() == log.read_bytes()
    refused, _ = await run_and_follow(
        admin, fetch(str(agent.agent.home.identity_folder / "key.pem"))
    )
    assert refused.state == TaskState.FAILED and "outside this agent's file roots" in refused.reason
    missing, _ = await run_and_follow(admin, fetch(str(root / "gone.log")))
    assert missing.state == TaskState.FAILED and "does not exist on this target" in missing.reason
    folder, _ = await run_and_follow(admin, fetch(str(root)))
    assert folder.state == TaskState.FAILED and "is not a file (a folder?" in folder.reason
