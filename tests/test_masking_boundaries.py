"""Secrets stay masked across every boundary the agent itself makes: a long line's cut, a read
of the pipe, the output cap. Each test places the secret across that boundary."""

from __future__ import annotations

import itertools
import string
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tentacle_poll.protocol.models import TaskState
from tentacle_poll.server.admin_client import AdminClient
from tentacle_poll.workers.lines import LineSplitter
from tentacle_poll.workers.masking import MASK, SecretMasker

from .conftest import AgentFactory, run_and_follow, script_task, secret
from .test_worker import run_script

SECRET = "Zq7xK9pL2mW4vR8tYh3N"
SPLIT = 64  # a small cut size, so generated lines cross it cheaply
SECRETS = st.text(string.ascii_letters + string.digits, min_size=8, max_size=30)


def leaked(secret_value: str, output: str) -> list[str]:
    """Pieces of the secret (five characters or more) that show in the output."""
    size = 5
    return [
        secret_value[i : i + size]
        for i in range(len(secret_value) - size + 1)
        if secret_value[i : i + size] in output
    ]


def split_output(data: bytes, cuts: list[int], masker: SecretMasker) -> str:
    pieces: list[str] = []
    splitter = LineSplitter(lambda text, _continues: pieces.append(text), SPLIT, masker)
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for start, end in itertools.pairwise(bounds):
        splitter.feed(data[start:end])
    splitter.close()
    return "\n".join(pieces)


@given(
    secret_value=SECRETS,
    before=st.integers(min_value=0, max_value=3 * SPLIT),
    after=st.integers(min_value=0, max_value=2 * SPLIT),
    cuts=st.lists(st.integers(min_value=0, max_value=10**6), max_size=8),
)
def test_a_secret_across_a_long_lines_cut_or_a_read_boundary_stays_masked(
    secret_value: str, before: int, after: int, cuts: list[int]
) -> None:
    line = "." * before + secret_value + "-" * after
    output = split_output((line + "\n").encode(), cuts, SecretMasker([secret_value]))
    flat = output.replace("\n", "")  # the pieces of the cut line, joined
    assert not leaked(secret_value, flat), output
    assert flat == "." * before + MASK + "-" * after  # nothing else lost


@given(
    secret_value=SECRETS,
    lines=st.integers(min_value=1, max_value=5),
    cuts=st.lists(st.integers(), max_size=5),
)
def test_a_secret_in_every_one_of_several_long_lines_stays_masked(
    secret_value: str, lines: int, cuts: list[int]
) -> None:
    data = "".join("." * (SPLIT - 3 + i) + secret_value + "\n" for i in range(lines)).encode()
    output = split_output(data, cuts, SecretMasker([secret_value]))
    assert not leaked(secret_value, output.replace("\n", ""))
    assert output.replace("\n", "").count(MASK) == lines


def test_a_multi_line_secret_printed_line_by_line_is_masked_line_by_line() -> None:
    key = "-----BEGIN KEY-----\nMIIBVgIBADANBgkqhkiG9w0BAQEFAASCAUAwggE8\n-----END KEY-----"
    masker = SecretMasker([key])
    assert "MIIBVgIBADANBgkq" not in masker.mask("MIIBVgIBADANBgkqhkiG9w0BAQEFAASCAUAwggE8")


async def test_a_secret_across_the_real_line_split_of_a_real_task_stays_masked(
    admin: AdminClient, start_agent: AgentFactory
) -> None:
    """The issue's own reproduction: 65,530 characters, then the secret, on one line."""
    await start_agent("web1")
    body = 'import os,sys; sys.stdout.write("a"*65530 + os.environ["SECRET"] + "\\n")'
    task = script_task("web1", body, syntax="python", variables=[secret("SECRET", SECRET)])
    final, events = await run_and_follow(admin, task)
    assert final.state == TaskState.SUCCEEDED
    output = "".join(e.text for e in events)  # the line's pieces, joined
    assert not leaked(SECRET, output)
    assert output == "a" * 65530 + MASK


async def test_a_secret_written_across_two_reads_of_the_pipe_stays_masked(tmp_path: Path) -> None:
    body = f'printf "x{SECRET[:7]}"; sleep 0.3; printf "{SECRET[7:]}y\\n"'
    variables = [secret("SECRET", SECRET)]
    outcome, lines = await run_script(tmp_path, body, variables=variables)
    assert outcome.state == "succeeded"
    assert lines == [("stdout", f"x{MASK}y")]


async def test_a_secret_across_the_output_cap_stays_masked(tmp_path: Path) -> None:
    cap = 100
    body = f'printf "%0{cap - 8}d{SECRET}\\n"; echo after'  # the cap falls inside the secret
    outcome, lines = await run_script(
        tmp_path, body, variables=[secret("SECRET", SECRET)], max_output_bytes=cap
    )
    text = "\n".join(line for _, line in lines)
    assert outcome.state == "succeeded"
    assert not leaked(SECRET, text)
    assert "output limit of 100 bytes reached" in text


def test_a_secret_longer_than_the_cut_is_still_masked() -> None:
    long_secret = "K" * (3 * SPLIT) + "end"
    output = split_output(
        f"..{long_secret}..\n".encode(), [17, 90, 150], SecretMasker([long_secret])
    )
    assert output.replace("\n", "") == f"..{MASK}.."
