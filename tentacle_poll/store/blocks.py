"""Which lines of an arriving block of output are new, and how far output is stored without a
gap: the rules both stores apply, so each line is stored once however retries batch it."""

from __future__ import annotations

from collections.abc import Iterable

from tentacle_poll.protocol.models import Event

# Text goes to storage as UTF-8; a lone surrogate (valid in JSON, not in UTF-8) survives as is.
TEXT_ERRORS = "surrogatepass"


def uncovered_parts(event: Event, covering: Iterable[tuple[int, int]]) -> list[Event]:
    """The parts of ``event`` whose lines no stored block covers. ``covering``: (seq, lines) of
    the stored blocks that may overlap it, in seq order (stored blocks never overlap each
    other: the last one starting at or before the event, and those starting inside it)."""
    first, last = event.seq, event.last_seq
    gaps, start = [], first
    for seq, lines in covering:
        if seq + lines - 1 < first or seq > last:
            continue
        if seq > start:
            gaps.append((start, min(seq - 1, last)))
        start = max(start, seq + lines)
    if start <= last:
        gaps.append((start, last))
    if gaps == [(first, last)]:
        return [event]  # the usual case: nothing of it stored yet
    return [lines_of(event, a, b) for a, b in gaps]


def lines_of(event: Event, first: int, last: int) -> Event:
    """Lines ``first`` to ``last`` (sequence numbers) of a block, as a block of their own."""
    texts = event.text.split("\n")[first - event.seq : last - event.seq + 1]
    return Event.model_construct(
        seq=first, stream=event.stream, text="\n".join(texts), ts=event.ts, lines=len(texts),
        continues=event.continues and last == event.last_seq,  # the mark is on its last line
    )  # fmt: skip


def contiguous_end(blocks: Iterable[tuple[int, int]], last_seq: int) -> int:
    """The highest seq stored with no gap after ``last_seq``, given the (seq, lines) of the
    blocks after it in seq order. Past the known end there are only the batches that overtook
    a missing one (the agent keeps two on the way, and sends a failed one again first)."""
    for seq, lines in blocks:
        if seq != last_seq + 1:
            break
        last_seq = seq + lines - 1
    return int(last_seq)
