"""Where each process of a benchmark spent its time: a py-spy raw profile, summed per process.

    py-spy record --subprocesses --format raw -o prof.txt -- \\
        python -m tests.benchmarks.run --only streaming
    python -m tests.benchmarks.profile_summary prof.txt [--top 15]

(`make profile GROUP=streaming` does both.) For each process: the functions with the most
samples of their own ("self"), then the project's functions with the most samples including
what they called ("total"). Idle waits (epoll, a thread pool's queue) are left out.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

IDLE = ("EpollSelector.select", "_worker (concurrent/futures/thread.py:81)", "Condition.wait")
LOCATION = re.compile(r"\(/.*?(site-packages/|lib/python3\.\d+/|/tentacle_poll/|/tests/)")


def process_name(frames: list[str]) -> str:
    processes = [f for f in frames if f.startswith("process ")]
    command = processes[-1] if processes else frames[0]
    if "server run" in command:
        return "server"
    if "tentacle_poll --home" in command or "benchmarks.agents" in command:
        return "agent"
    return "bench"


def shorten(frame: str) -> str:
    return LOCATION.sub("(", frame)


def summarise(path: Path) -> dict[str, tuple[Counter[str], Counter[str]]]:
    by_process: dict[str, tuple[Counter[str], Counter[str]]] = defaultdict(
        lambda: (Counter(), Counter())
    )
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if any(marker in frames[-1] for marker in IDLE):
            continue
        own, total = by_process[process_name(frames)]
        own[shorten(frames[-1])] += int(count)
        for frame in {shorten(f) for f in frames[1:] if "tentacle_poll/" in f}:
            total[frame] += int(count)
    return by_process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for name, (own, total) in sorted(summarise(args.profile).items()):
        print(f"== {name}: {sum(own.values())} busy samples")
        for frame, samples in own.most_common(args.top):
            print(f"  self  {samples:6d}  {frame}")
        for frame, samples in total.most_common(args.top):
            print(f"  total {samples:6d}  {frame}")


if __name__ == "__main__":
    main()
