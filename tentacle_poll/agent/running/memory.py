"""Giving freed memory back to the system after a task.

A task that printed 100 MB leaves glibc's heap holding the freed space (Python frees, malloc
keeps it for reuse): the agent's RSS would stay several MiB above its idle size for good.
``malloc_trim(0)`` hands free heap pages back; it is cheap (about a millisecond) and runs once
per task. Elsewhere than glibc it is skipped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    return trim


def release_freed_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
