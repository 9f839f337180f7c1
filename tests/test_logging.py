"""Logs: text or JSON lines, stdlib logging routed in, and never a secret in any line."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
from loguru import logger

from tentacle_poll.logs import hide_secret, setup_logging
from tentacle_poll.protocol.models import TaskState
from tentacle_poll.server.admin_client import AdminClient

from .conftest import AgentFactory, run_and_follow, script_task, secret


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
