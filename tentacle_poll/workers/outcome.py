"""What a finished worker reports, and the callback through which it streams output."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Stream = Literal["stdout", "stderr", "system"]
OutputSink = Callable[[Stream, str], None]
FinalState = Literal["succeeded", "failed", "timed_out", "cancelled"]


@dataclass(frozen=True)
class Outcome:
    state: FinalState
    exit_code: int | None = None
    reason: str = ""

    @classmethod
    def failed(cls, reason: str) -> Outcome:
        return cls(state="failed", reason=reason)
