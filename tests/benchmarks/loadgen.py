"""A load generator that simulates many agents faithfully enough to stress a server, without a
Python agent per simulated agent: real mutual TLS with each agent's own certificate, real
`poll` long polls (and `accept`, `events`, `result` for delivered tasks), jittered backoff.

Operators can use it to size a server:

    export TENTACLE_POLL_API_KEY=API-...       # registers sim-0 ... sim-2499 first
    python -m tests.benchmarks.loadgen --server https://HOST:10943 --server-thumbprint T \\
        --certs DIR --first 0 --count 2500 --seconds 120 --register
    tentacle-poll targets delete $(seq -f 'sim-%g' 0 2499)      # afterwards

DIR holds ``key-<i>.pem``/``cert-<i>.pem`` for each simulated agent; ``--register`` makes the
missing ones and registers them through the API (environment ``Load``, role ``sim``), pinning
the server's thumbprint before the key is sent. Run several processes (with different
``--first``) for more than a few thousand agents. On exit it writes one JSON line per agent to
--report: poll successes and failures (and which of them were refused connections) with times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import ssl
import time
from pathlib import Path
from urllib.parse import urlsplit

from tentacle_poll.agent.connections.backoff import BASE_SECONDS, REFUSED_MAX_SECONDS
from tentacle_poll.protocol.routes import API_KEY_HEADER, PROTOCOL_HEADER, REGISTER
from tentacle_poll.tls import generate_identity, thumbprint_of_der
from tentacle_poll.tls.files import _write_private
from tests.certificates import identity_with_subject

BACKOFF_MAX = 60.0  # the agent's default backoff_max_seconds
POLL_BODY = json.dumps({"free_slots": 1, "running": [], "agent_version": "loadgen"}).encode()


class RegistrationFailed(Exception):
    """A simulated agent could not be registered; the message says which and why."""


class Refused(ValueError):
    """A status other than 2xx."""

    def __init__(self, status_line: str, payload: bytes) -> None:
        super().__init__(f"{status_line} {payload[:300]!r}")
        code = status_line.split(" ")[1] if " " in status_line else ""
        self.for_good = code.startswith("4")  # retrying will not help, as for the agent


class SimulatedAgent:
    def __init__(
        self, index: int, host: str, port: int, context: ssl.SSLContext, pinned: str | None
    ) -> None:
        self.index = index
        self.host, self.port, self.context = host, port, context
        self.pinned = pinned  # the server's thumbprint, checked on every new connection
        self.successes: list[float] = []
        self.failures: list[float] = []
        self.refusals: list[float] = []  # the failures that were refused connections
        # When each poll was written on a working connection: an agent is "polling again" from
        # the moment its poll is held by the server, not when the hold ends.
        self.polling_since: list[float] = []
        self.first_poll_sent = asyncio.Event()
        self.tasks_done = 0
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def run(self, stop: asyncio.Event) -> None:
        attempt = 0
        while not stop.is_set():
            try:
                answer = await self._request("/v1/poll", POLL_BODY)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as error:
                self._drop()
                self.failures.append(time.time())
                attempt += 1
                refused = isinstance(error, ConnectionRefusedError)
                if refused:
                    self.refusals.append(self.failures[-1])
                await _sleep_or_stop(stop, backoff(attempt, refused))
                continue
            attempt = 0
            self.successes.append(time.time())
            for envelope in answer.get("envelopes", []):
                await self._run_task(envelope["task_id"], stop)

    async def register(self, certificate_pem: str, api_key: str) -> None:
        body = {
            "name": f"sim-{self.index}",
            "certificate_pem": certificate_pem,
            "environments": ["Load"],
            "roles": ["sim"],
            "agent_version": "loadgen",
            "replace": True,
        }
        # Without a client certificate: the server would refuse one it does not know yet.
        await self._connect(agent_context(None, self.index))
        try:
            await self._request(REGISTER, json.dumps(body).encode(), {API_KEY_HEADER: api_key})
        finally:
            self._drop()

    async def _run_task(self, task_id: str, stop: asyncio.Event) -> None:
        """accept → one line → result, as an agent running `echo` would, each post retried
        with the agent's backoff until answered (all three are idempotent)."""
        line = {"seq": 1, "stream": "stdout", "text": "simulated", "ts": time.time()}
        steps = [
            ("accept", b"{}"),
            ("events", json.dumps({"events": [line]}).encode()),
            ("result", json.dumps({"state": "succeeded", "exit_code": 0, "last_seq": 1}).encode()),
        ]
        for step, body in steps:
            if not await self._until_answered(f"/v1/tasks/{task_id}/{step}", body, stop):
                return
        self.tasks_done += 1

    async def _until_answered(self, path: str, body: bytes, stop: asyncio.Event) -> bool:
        """False when the server refused it for good (4xx: the agent drops the task)."""
        attempt = 0
        while not stop.is_set():
            try:
                await self._request(path, body)
                return True
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError) as error:
                self._drop()
                if isinstance(error, Refused) and error.for_good:
                    return False
                attempt += 1
                await _sleep_or_stop(stop, backoff(attempt, isinstance(error, OSError)))
        return False

    async def _request(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> dict:  # type: ignore[type-arg]
        if self._writer is None:
            await self._connect(self.context)
        assert self._reader is not None and self._writer is not None
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"{PROTOCOL_HEADER}: 1\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode() + body)
        if path == "/v1/poll":
            self.polling_since.append(time.time())
            self.first_poll_sent.set()
        status = await self._reader.readline()
        length = 0
        while (line := await self._reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        payload = await self._reader.readexactly(length)
        if not status.startswith(b"HTTP/1.1 2"):
            raise Refused(status.decode(errors="replace").strip(), payload)
        return json.loads(payload)  # type: ignore[no-any-return]

    async def _connect(self, context: ssl.SSLContext) -> None:
        self._reader, self._writer = await asyncio.open_connection(
            self.host, self.port, ssl=context, server_hostname=None
        )
        if self.pinned is None:
            return
        der = self._writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        if thumbprint_of_der(der) != self.pinned.upper():
            self._drop()
            raise ssl.SSLError(f"the server's thumbprint is not {self.pinned}: nothing sent")

    def _drop(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def backoff(attempt: int, refused: bool) -> float:
    """Full jitter, capped, exactly as the agent's retry rule (agent/connections/backoff.py)
    does it."""
    cap = min(BACKOFF_MAX, REFUSED_MAX_SECONDS) if refused else BACKOFF_MAX
    return random.uniform(0, min(cap, BASE_SECONDS * 2 ** (attempt - 1)))


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def make_certificates(
    folder: Path, first: int, count: int, same_subject: str | None = None
) -> None:
    """A key and certificate for each simulated agent, made once: later runs reuse them.
    ``same_subject``: every certificate's subject is ``CN=<it>`` alone, as on a fleet of
    cloned hosts or agents made by earlier versions (the server must still tell them apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(first, first + count):
        if not (folder / f"cert-{index}.pem").exists():
            identity = (
                identity_with_subject(same_subject, ca=index % 2 == 0)
                if same_subject
                else generate_identity(f"sim-{index}")
            )
            _write_private(folder / f"key-{index}.pem", identity.key_pem)
            (folder / f"cert-{index}.pem").write_bytes(identity.cert_pem)


async def register_all(agents: list[SimulatedAgent], certs: Path, api_key: str) -> None:
    """Registers every simulated agent through the API, a few at a time."""
    gate = asyncio.Semaphore(16)

    async def register(agent: SimulatedAgent) -> None:
        async with gate:
            try:
                await agent.register((certs / f"cert-{agent.index}.pem").read_text(), api_key)
            except (OSError, ValueError, asyncio.IncompleteReadError) as error:
                raise RegistrationFailed(f"registering sim-{agent.index}: {error}") from error

    await asyncio.gather(*(register(agent) for agent in agents))
    print(f"registered sim-{agents[0].index} ... sim-{agents[-1].index}", flush=True)


def agent_context(certs: Path | None, index: int) -> ssl.SSLContext:
    """With the agent's certificate from ``certs``; none when ``certs`` is None."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the server is pinned by thumbprint when one is given
    if certs is not None:
        context.load_cert_chain(certs / f"cert-{index}.pem", certs / f"key-{index}.pem")
    return context


async def main(args: argparse.Namespace) -> None:
    url = urlsplit(args.server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if args.register:
        make_certificates(args.certs, args.first, args.count, args.same_subject)
    agents = [
        SimulatedAgent(
            i, url.hostname or "", url.port or 10943, agent_context(args.certs, i), args.pinned
        )
        for i in range(args.first, args.first + args.count)
    ]
    if args.register:
        await register_all(agents, args.certs, args.api_key)
    loop.call_later(args.seconds, stop.set)
    runs = []
    for agent in agents:  # ramp up: a burst of thousands of handshakes at once is a storm
        runs.append(asyncio.create_task(agent.run(stop)))
        await asyncio.sleep(args.ramp / max(len(agents), 1))
    # Ready once every agent holds a poll (a slow machine may lag behind the ramp), or after
    # twice the ramp at most: a server that refuses some agents must still be measurable.
    with contextlib.suppress(TimeoutError):
        polling = asyncio.gather(*(agent.first_poll_sent.wait() for agent in agents))
        await asyncio.wait_for(polling, timeout=max(10.0, 2 * args.ramp))
    waiting = sum(1 for agent in agents if not agent.first_poll_sent.is_set())
    print(f"ready ({waiting} agents not polling yet)" if waiting else "ready", flush=True)
    await stop.wait()
    for run in runs:
        run.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
    with open(args.report, "w") as report:
        for agent in agents:
            record = {
                "index": agent.index,
                "ok": agent.successes,
                "failed": agent.failures,
                "refused": agent.refusals,
                "sent": agent.polling_since,
                "tasks": agent.tasks_done,
            }
            report.write(json.dumps(record) + "\n")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=60.0, help="stop after this long")
    parser.add_argument("--ramp", type=float, default=5.0, help="seconds to start all agents")
    parser.add_argument("--report", type=Path, default=Path("loadgen-report.jsonl"))
    parser.add_argument(
        "--server-thumbprint", dest="pinned", help="pin the server (required with --register)"
    )
    parser.add_argument(
        "--same-subject",
        metavar="NAME",
        help="with --register: new certificates all have the subject CN=NAME (half as CAs, as "
        "earlier versions made them)",
    )
    parser.add_argument(
        "--register",
        action="store_true",
        help="make missing certificates and register the agents first "
        "(API key from $TENTACLE_POLL_API_KEY)",
    )
    args = parser.parse_args()
    args.api_key = os.environ.get("TENTACLE_POLL_API_KEY", "")
    if args.register and not (args.pinned and args.api_key):
        parser.error("--register needs --server-thumbprint and $TENTACLE_POLL_API_KEY")
    return args


if __name__ == "__main__":
    try:
        asyncio.run(main(parse()))
    except RegistrationFailed as failure:
        raise SystemExit(f"error: {failure}") from None
