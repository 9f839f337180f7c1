"""What an agent that died finds when it comes back: its journal (with each running script's
process group) and its spool. Real processes, real files."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tentacle_poll.agent.running.journal import Journal
from tentacle_poll.agent.running.recovery import DIED_RUNNING, fail_interrupted_tasks
from tentacle_poll.agent.running.spool import OLDER_RESULT_FILE, PROCESS_GROUP_FILE, Spool
from tentacle_poll.protocol.models import Event, ResultRequest
from tentacle_poll.workers.process_group import group_of_record, group_record

SERVER = "https://deploy.example:10943"


def test_a_running_script_s_group_survives_the_journal_being_compacted(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.record("t1", "accepted", SERVER)
    journal.record("t1", "started", SERVER)
    journal.record("t1", "started", SERVER, process_group=group_record(4242))
    journal.close()
    reopened = Journal(tmp_path / "journal.jsonl")  # compacts: one line per task
    reopened.close()
    [entry] = reopened.in_step("started")
    assert group_of_record(entry.process_group) == 4242
    assert len((tmp_path / "journal.jsonl").read_text().splitlines()) == 1


def test_a_group_recorded_in_another_boot_is_never_named() -> None:
    assert group_of_record("4242 8c1f0a5e-another-boot") is None
    assert group_of_record("") is None and group_of_record("x y") is None


@pytest.mark.parametrize("recorded_in", ["journal", "older spool file"])
def test_the_orphaned_script_of_a_dead_agent_is_ended(tmp_path: Path, recorded_in: str) -> None:
    orphan = subprocess.Popen(["sleep", "300"], start_new_session=True)  # its own group
    try:
        journal, spool = Journal(tmp_path / "journal.jsonl"), Spool(tmp_path / "spool", 10**9)
        journal.record("t1", "accepted", SERVER)
        journal.record("t1", "started", SERVER)
        if recorded_in == "journal":
            journal.record("t1", "started", SERVER, process_group=group_record(orphan.pid))
        else:  # as agents before the journal held it left it
            (tmp_path / "spool" / "t1").mkdir(parents=True)
            (tmp_path / "spool" / "t1" / PROCESS_GROUP_FILE).write_text(group_record(orphan.pid))
        fail_interrupted_tasks(journal, spool)
        journal.close()
        assert orphan.wait(timeout=10) == -9
    finally:
        orphan.kill()
        orphan.wait()
    result = spool.task("t1").result()
    assert result is not None and result.state == "failed" and result.reason == DIED_RUNNING
    assert spool.task("t1").events()[-1].text.endswith("its processes, still running, were ended")


def test_a_result_line_torn_by_a_crash_leaves_the_task_interrupted(tmp_path: Path) -> None:
    journal, spool = Journal(tmp_path / "journal.jsonl"), Spool(tmp_path / "spool", 10**9)
    journal.record("t1", "accepted", SERVER)
    journal.record("t1", "started", SERVER)
    task = spool.task("t1")
    task.append(Event(seq=1, stream="stdout", text="before the crash", ts=1.0))
    task.close()
    with open(tmp_path / "spool" / "t1" / "events.jsonl", "ab") as events:
        events.write(b'{"result":{"state":"succ')  # the agent died writing its result
    assert task.result() is None
    fail_interrupted_tasks(journal, spool)
    journal.close()
    result = spool.task("t1").result()
    assert result is not None and (result.state, result.reason) == ("failed", DIED_RUNNING)
    texts = [e.text for e in spool.task("t1").events()]
    assert texts == ["before the crash", DIED_RUNNING]  # the note was not glued to the torn line


def test_a_result_spooled_by_an_earlier_agent_is_still_delivered(tmp_path: Path) -> None:
    folder = tmp_path / "spool" / "t1"
    folder.mkdir(parents=True)
    (folder / OLDER_RESULT_FILE).write_text('{"state":"succeeded","exit_code":0,"last_seq":0}')
    result = Spool(tmp_path / "spool", 10**9).task("t1").result()
    assert result is not None and result.state == "succeeded"


def test_the_result_is_read_from_the_end_of_a_long_output(tmp_path: Path) -> None:
    task = Spool(tmp_path / "spool", 10**9).task("t1")
    for seq in range(1, 101):
        task.append(Event(seq=seq, stream="stdout", text="x" * 4000, ts=1.0))
    reason = "\U0001f600\x01" * 2048  # the longest reason, every character escaped in JSON
    task.write_result(ResultRequest(state="failed", last_seq=100, reason=reason))
    result = task.result()
    assert result is not None and result.reason == reason and result.last_seq == 100
    assert len(task.events()) == 100


def test_the_journal_forgets_old_ended_tasks_but_never_an_unfinished_one(tmp_path: Path) -> None:
    from tentacle_poll.agent.running.journal import KEEP_ENDED, Journal

    journal = Journal(tmp_path / "journal.jsonl")
    journal.record("running", "accepted", "s")
    for n in range(3 * KEEP_ENDED):
        for step in ("accepted", "started", "finished", "reported"):
            journal.record(f"t{n}", step, "s")  # type: ignore[arg-type]
    assert journal.blocks("running") and journal.blocks(f"t{3 * KEEP_ENDED - 1}")
    assert len(journal.entries) <= 2 * KEEP_ENDED + 1
    lines = (tmp_path / "journal.jsonl").read_text().count("\n")
    journal.close()
    assert lines < 4 * 2 * KEEP_ENDED + 10  # compacted on the way, not 12,000 lines
    reopened = Journal(tmp_path / "journal.jsonl")
    assert reopened.blocks("running") and len(reopened.entries) == KEEP_ENDED + 1
    reopened.close()
