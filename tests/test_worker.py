"""The script worker on its own: lines, masking, stray children, interpreters, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from tentacle_poll.agent.connections.transport import CommsClient
from tentacle_poll.agent.running.reporter import TaskReporter
from tentacle_poll.agent.running.spool import Spool
from tentacle_poll.protocol.models import MAX_EVENT_CHARS, ScriptSpec, Variable
from tentacle_poll.workers import Outcome, ScriptJob, ScriptWorker
from tentacle_poll.workers.lines import LineSplitter
from tentacle_poll.workers.masking import MASK, SecretMasker

from .helpers import process_running, read_pids

marks: list[bool] = []  # each block's continuation mark, in order (run_script fills it)


async def run_script(
    tmp_path: Path, body: str, syntax: str = "bash", **job: object
) -> tuple[Outcome, list[tuple[str, str]]]:
    lines: list[tuple[str, str]] = []
    marks.clear()
    spec = ScriptSpec(syntax=syntax, body=body)  # type: ignore[arg-type]
    script_job = ScriptJob("t1", spec, tmp_path / "work", **job)  # type: ignore[arg-type]

    def collect(stream: str, block: str, continues: bool = False) -> None:
        lines.extend((stream, line) for line in block.split("\n"))
        marks.append(continues)

    outcome = await ScriptWorker(script_job, collect).run()
    return outcome, lines


def collected(blocks: list[tuple[str, bool]]) -> Callable[[str, bool], None]:
    return lambda text, continues: blocks.append((text, continues))


def test_line_splitter_handles_partial_writes_long_lines_and_utf8() -> None:
    lines: list[tuple[str, bool]] = []
    splitter = LineSplitter(collected(lines), max_chars=5)
    for chunk in [b"ab", b"c\r\nd\xc3", b"\xa9f\n", b"0123456789AB", b"\nlast"]:
        splitter.feed(chunk)
    splitter.close()
    assert lines == [("abc", False), ("d\u00e9f", False), ("01234", True), ("56789", True),
                     ("AB", False), ("last", False)]  # fmt: skip


def test_line_splitter_emits_a_busy_read_as_one_block_with_long_lines_marked() -> None:
    blocks: list[tuple[str, bool]] = []
    splitter = LineSplitter(collected(blocks), max_chars=5)
    splitter.feed(b"one\r\ntwo\nthree\n")
    splitter.feed(b"a\n0123456789\nb\n")
    splitter.close()
    assert blocks == [("one\ntwo\nthree", False), ("a", False), ("01234", True),
                      ("56789\nb", False)]  # fmt: skip


def test_masker_catches_plain_base64_and_url_forms() -> None:
    masker = SecretMasker(["p@ss w0rd", "xy"])
    assert masker.mask("pw=p@ss w0rd") == f"pw={MASK}"
    assert masker.mask("url=p%40ss%20w0rd") == f"url={MASK}"
    assert masker.mask("b64=cEBzcyB3MHJk") == f"b64={MASK}"
    assert masker.mask("xyz") == f"{MASK}z"


async def test_secret_written_in_two_pieces_is_masked(tmp_path: Path) -> None:
    body = 'printf "token=hun"; sleep 0.1; printf "ter2\\n"; echo "$PW"'
    secret = Variable(name="PW", value="hunter2", sensitive=True)
    outcome, lines = await run_script(tmp_path, body, variables=[secret])
    assert outcome.state == "succeeded"
    assert lines == [("stdout", f"token={MASK}"), ("stdout", MASK)]


async def test_a_child_holding_stdout_does_not_hang_the_task(tmp_path: Path) -> None:
    body = f"sleep 300 & echo $! > {tmp_path}/child.pid; echo done"
    outcome, lines = await asyncio.wait_for(
        run_script(tmp_path, body, straggler_seconds=0.5), timeout=10
    )
    assert outcome.state == "succeeded"
    assert ("stdout", "done") in lines
    assert any(s == "system" and "ending them" in t for s, t in lines)
    assert not any(process_running(p) for p in read_pids(tmp_path))


async def test_background_daemon_that_closed_stdout_is_ended(tmp_path: Path) -> None:
    body = f"nohup sleep 300 >/dev/null 2>&1 & echo $! > {tmp_path}/daemon.pid"
    outcome, lines = await run_script(tmp_path, body)
    assert outcome.state == "succeeded"
    assert any("left processes running" in t for _, t in lines)
    assert not any(process_running(p) for p in read_pids(tmp_path))


async def test_huge_line_is_cut_not_fatal_and_its_pieces_are_marked(tmp_path: Path) -> None:
    outcome, lines = await run_script(tmp_path, "head -c 200000 /dev/zero | tr '\\0' x; echo")
    assert outcome.state == "succeeded"
    assert sum(len(t) for _, t in lines) == 200000
    assert marks[:-1] == [True] * (len(marks) - 1) and marks[-1] is False  # one line, whole


@pytest.mark.parametrize(
    "syntax, body", [("sh", "echo $0 | grep -q script.sh && echo ok"), ("python", "print('ok')")]
)
async def test_interpreters(tmp_path: Path, syntax: str, body: str) -> None:
    outcome, lines = await run_script(tmp_path, body, syntax=syntax)
    assert outcome.state == "succeeded" and lines == [("stdout", "ok")]


async def test_missing_interpreter_or_folder_fails_with_the_reason(tmp_path: Path) -> None:
    outcome, _ = await run_script(tmp_path, "Get-Date", syntax="cmd")
    assert outcome.state == "failed" and "cmd.exe is not installed" in outcome.reason
    spec = ScriptSpec(body="true", working_directory=str(tmp_path / "nowhere"))
    job = ScriptJob("t1", spec, tmp_path / "work")
    outcome = await ScriptWorker(job, lambda s, t: None).run()
    assert outcome.state == "failed" and "does not exist" in outcome.reason


async def test_a_block_grown_past_an_event_by_masking_is_spooled_as_two(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=10**9).task("t1")
    client = CommsClient("https://127.0.0.1:9", ["00" * 32], None)  # never called here
    reporter = TaskReporter(client, spool, asyncio.Event(), max_backoff=1.0)
    lines = [f"{i:07d}" * 1000 for i in range(40)]  # 40 lines of 7,000 chars: 280,039 chars
    reporter.line("stdout", "\n".join(lines))
    reporter.line("stdout", "x" * (MAX_EVENT_CHARS + 5))  # no newline at all: cut in two
    reporter.close()
    await client.close()
    events = spool.events()
    assert all(len(e.text) <= MAX_EVENT_CHARS for e in events)
    assert [(e.seq, e.lines) for e in events] == [(1, 37), (38, 3), (41, 1), (42, 1)]
    assert "\n".join(e.text for e in events[:2]).split("\n") == lines
    assert reporter.seq == 42
