"""Logs: text or JSON lines, stdlib logging routed in, and never a secret in any line."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from loguru import logger

from tentacle_poll.logs import hide_secret, setup_logging
from tentacle_poll.protocol.models import FanOut, ScriptSpec, TaskSpec, TaskState
from tentacle_poll.server import Server
from tentacle_poll.server.admin_client import AdminClient

from .conftest import AgentFactory, run_and_follow, script_task, secret
from .processes import CLI


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Later tests must not log into this test's (by then closed) captured streams."""
    root_handlers, root_level = logging.root.handlers[:], logging.root.level
    yield
    logger.remove()
    logger.add(lambda message: sys.stderr.write(message), level="DEBUG", diagnose=False)
    logger.configure(patcher=None)
    logging.root.handlers[:] = root_handlers
    logging.root.setLevel(root_level)


def test_json_lines_and_stdlib_routing() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream)
    logging.getLogger("aiohttp.server").warning("from the stdlib %s", "logger")
    logger.bind(task="t1").info("hello")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [r["message"] for r in records] == ["from the stdlib logger", "hello"]
    assert records[1]["level"] == "INFO" and records[1]["task"] == "t1"


def test_registered_secrets_are_masked_in_every_sink() -> None:
    stream = io.StringIO()
    setup_logging("INFO", "text", stream)
    hide_secret("s3cr3t-value")
    logger.info("connecting with s3cr3t-value now")
    assert "s3cr3t-value" not in stream.getvalue() and "********" in stream.getvalue()


async def test_no_secret_reaches_the_logs_of_a_whole_run(
    start_agent: AgentFactory, admin: AdminClient, api_key: str, caplog: object
) -> None:
    await start_agent("web1")
    task = script_task(
        "web1",
        'echo "pw=$PW"; echo "$PW" >&2; exit 1',
        variables=[secret("PW", "tr0ub4dor&3")],
    )
    final, events = await run_and_follow(admin, task)
    assert final.state == TaskState.FAILED
    assert all("tr0ub4dor&3" not in e.text for e in events)
    logged = "\n".join(r.getMessage() for r in caplog.records)  # type: ignore[attr-defined]
    assert "tr0ub4dor&3" not in logged
    assert api_key not in logged


def test_a_log_file_is_rotated_by_size_keeps_its_newest_files_and_is_private(
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "logs" / "agent.log"
    setup_logging("INFO", "json", log_file=log_file, rotation_mb=0.002, retention_files=2)
    for n in range(300):
        logger.bind(task_id=f"T-{n}").info("line {} with {{braces}} and 'quotes'", n)
    logger.remove()
    files = sorted(log_file.parent.iterdir())
    assert log_file in files and len(files) == 3, files  # the live file and the newest two
    for path in files:
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.stat().st_size < 0.002 * 2**20 + 400  # rotated at the size, within a line
    last = [json.loads(line) for line in log_file.read_text().splitlines()][-1]
    assert last["task_id"] == "T-299" and last["message"] == "line 299 with {braces} and 'quotes'"


def test_an_unwritable_log_file_is_one_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    result = subprocess.run(
        [*CLI, "--log-file", str(blocker / "agent.log"), "--home", str(tmp_path), "show-config"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 1 and "cannot write the log file" in result.stderr
    assert "Traceback" not in result.stderr


async def test_lines_about_a_task_carry_its_fields(
    start_agent: AgentFactory, admin: AdminClient, server: Server
) -> None:
    stream = io.StringIO()
    setup_logging("INFO", "json", stream)
    await start_agent("web1")
    final, _ = await run_and_follow(admin, script_task("web1", "echo hi"))
    script = TaskSpec(script=ScriptSpec(body="true"))
    deployment = await admin.fan_out(FanOut(environment="Test", task=script))
    await admin.follow(deployment.targets[0].task_id, lambda _: None)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    by_event = {r.get("event"): r for r in records if r.get("task_id") == final.id}
    assert {"task_queued", "task_started", "task_ended"} <= by_event.keys(), records
    assert by_event["task_queued"]["target"] == "web1"
    assert by_event["task_started"]["server"] == f"https://127.0.0.1:{server.comms_port}"
    in_deployment = [r for r in records if r.get("deployment_id") == deployment.id]
    assert {r["event"] for r in in_deployment} >= {"deployment_created", "task_ended"}
