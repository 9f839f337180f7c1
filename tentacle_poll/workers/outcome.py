"""What a finished worker reports, and the callback through which it streams output."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

Stream = Literal["stdout", "stderr", "system"]


class OutputSink(Protocol):
    """Where a worker's output goes: a line or a block of lines; ``continues`` marks a block
    whose last line goes on in the next one (a long line, cut)."""

    def __call__(self, stream: Stream, text: str, continues: bool = False) -> None: ...


FinalState = Literal["succeeded", "failed", "timed_out", "cancelled"]


class Worker(Protocol):
    """Runs one task to an Outcome; ``cancel`` may come at any time, any number of times."""

    def cancel(self, reason: str) -> None: ...
    async def run(self) -> Outcome: ...


@dataclass(frozen=True)
class Outcome:
    state: FinalState
    exit_code: int | None = None
    reason: str = ""

    @classmethod
    def failed(cls, reason: str) -> Outcome:
        return cls(state="failed", reason=reason)
