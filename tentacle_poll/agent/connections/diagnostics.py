"""`tentacle-poll diagnose`: checks the way to each server step by step and says in plain words
which step fails and what to do.

    name resolution → TCP (direct, or to the proxy and through its tunnel) → TLS handshake and
    the server's thumbprint → this agent's certificate accepted → clock skew → round trip
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from tentacle_poll.agent.connections.causes import DIAGNOSE, describe_cause
from tentacle_poll.agent.connections.proxy import proxy_for
from tentacle_poll.agent.connections.transport import client_for
from tentacle_poll.agent.home import AgentHome
from tentacle_poll.config import AgentSettings, ServerNode
from tentacle_poll.exceptions import (
    CommunicationError,
    ConnectionCut,
    ProxyRefused,
    RequestRejected,
)
from tentacle_poll.protocol.models import PollRequest, PollResponse
from tentacle_poll.protocol.routes import POLL
from tentacle_poll.proxies import ProxyRoute
from tentacle_poll.tls import load_identity, thumbprint_of_der
from tentacle_poll.tls.der import validity_of_der
from tentacle_poll.tls.files import identity_paths

STEP_TIMEOUT = 10.0
VERDICT_SECONDS = 1.5  # how long a refusal may take to arrive after the handshake
MAX_SKEW_SECONDS = 60.0


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str
    advice: str = ""


class StepFailed(Exception):
    def __init__(self, step: Step) -> None:
        super().__init__(step.detail)
        self.step = step


async def diagnose(home: AgentHome, settings: AgentSettings, node: ServerNode) -> list[Step]:
    """Every step that ran; the last is the first failure, if any."""
    steps: list[Step] = []
    checks = _Checks(home, settings, node)
    try:
        steps_in_order = (
            checks.resolve,
            checks.connect,
            checks.handshake,
            checks.certificate,
            checks.round_trip,
        )
        for check in steps_in_order:
            steps.append(await asyncio.wait_for(check(), STEP_TIMEOUT))
    except StepFailed as failed:
        steps.append(failed.step)
    except TimeoutError:
        steps.append(
            Step("timeout", False, f"no answer within {STEP_TIMEOUT:g} s", "check firewalls")
        )
    return steps


class _Checks:
    def __init__(self, home: AgentHome, settings: AgentSettings, node: ServerNode) -> None:
        self.home, self.settings, self.node = home, settings, node
        parts = urlsplit(node.url)
        self.host, self.port = parts.hostname or "", parts.port or 443
        self.proxy: ProxyRoute | None = proxy_for(node.url, settings.proxy)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def resolve(self) -> Step:
        name = self.proxy.host if self.proxy else self.host
        what = "the proxy's name" if self.proxy else "the server's name"
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                name, None, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise StepFailed(
                Step(
                    "name resolution",
                    False,
                    f"{what} {name} does not resolve: {exc.strerror}",
                    "check the name and this machine's DNS",
                )
            ) from exc
        addresses = sorted({str(info[4][0]) for info in infos})
        return Step("name resolution", True, f"{name} → {', '.join(addresses)}")

    async def connect(self) -> Step:
        target = (self.proxy.host, self.proxy.port) if self.proxy else (self.host, self.port)
        try:
            self.reader, self.writer = await asyncio.open_connection(*target)
        except OSError as exc:
            where = "the proxy" if self.proxy else "the server"
            raise StepFailed(
                Step(
                    "TCP",
                    False,
                    f"cannot connect to {where} at {target[0]}:{target[1]}: {describe_cause(exc)}",
                    "is it running, and does the firewall allow this outgoing port?",
                )
            ) from exc
        if self.proxy is None:
            return Step("TCP", True, f"connected to {self.host}:{self.port}")
        return await self._tunnel()

    async def _tunnel(self) -> Step:
        assert self.proxy is not None and self.reader is not None and self.writer is not None
        headers = "".join(f"{k}: {v}\r\n" for k, v in self.proxy.headers.items())
        self.writer.write(
            f"CONNECT {self.host}:{self.port} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"{headers}\r\n".encode()
        )
        status_line = (await self.reader.readline()).decode(errors="replace").strip()
        while (await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        code = status_line.split(" ")[1] if status_line.count(" ") >= 1 else "?"
        if code != "200":
            raise StepFailed(
                Step(
                    "proxy tunnel",
                    False,
                    f"the proxy {self.proxy.url} answered "
                    f"'{status_line}' to CONNECT {self.host}:{self.port}",
                    _proxy_advice(code),
                )
            )
        return Step(
            "proxy tunnel", True, f"{self.proxy.url} opened a tunnel to {self.host}:{self.port}"
        )

    async def handshake(self) -> Step:
        name = self.node.server_name or self.host
        try:
            await self._start_tls(with_certificate=True)
        except (ssl.SSLError, OSError) as exc:
            raise StepFailed(
                Step(
                    "TLS handshake",
                    False,
                    f"TLS with {self.node.url} failed: {describe_cause(exc)}",
                    "is this the comms port (10943 by default) and not another service?",
                )
            ) from exc
        assert self.writer is not None
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        actual = thumbprint_of_der(der)
        if actual not in self.node.thumbprints:
            self.writer.close()  # not one byte more to an impostor
            raise StepFailed(
                Step(
                    "server thumbprint",
                    False,
                    f"the server presented {actual}, not "
                    f"the pinned {', '.join(self.node.thumbprints)}",
                    "if the server's certificate was replaced on purpose, run "
                    "`tentacle-poll trust --server URL --add THUMBPRINT`; otherwise "
                    "something is impersonating the server",
                )
            ) from None
        return Step("TLS and server thumbprint", True, f"{actual} matches the pin (SNI: {name})")

    async def certificate(self) -> Step:
        """The server's verdict on this agent's certificate, read without sending a byte: with
        TLS 1.3 a refusal comes just after the handshake (an alert; earlier versions of the
        server just close); silence means the server waits for a request: accepted."""
        mine = load_identity(self.home.identity_folder).thumbprint
        if await self._kept_open():
            return Step("agent certificate", True, f"{mine} accepted")
        # Closed: for this certificate, or is every connection cut (a proxy, a firewall)?
        await self.connect()
        await self._start_tls(with_certificate=False)
        if await self._kept_open(close=False):
            await self._check_validity_by_the_servers_clock()
            raise StepFailed(_not_registered(mine))
        raise StepFailed(_cut_connection("closed right after the handshake, with a client "
                                         "certificate or without one"))  # fmt: skip

    async def _kept_open(self, close: bool = True) -> bool:
        assert self.reader is not None and self.writer is not None
        try:
            return await asyncio.wait_for(self.reader.read(1), VERDICT_SECONDS) != b""
        except TimeoutError:
            return True
        except (ssl.SSLError, OSError):
            return False
        finally:
            if close:
                self.writer.close()

    async def _check_validity_by_the_servers_clock(self) -> None:
        """A certificate the server refuses may be one it holds that is not valid yet by its
        clock: ask the server its time (the Date of any answer) over the connection that has
        no certificate, and compare."""
        assert self.reader is not None and self.writer is not None
        try:
            server_time = await asyncio.wait_for(self._server_date(), STEP_TIMEOUT / 2)
        except (TimeoutError, OSError, ValueError, EOFError, asyncio.LimitOverrunError):
            return  # no time to compare with: say what is certain
        finally:
            self.writer.close()
        der = ssl.PEM_cert_to_DER_cert(load_identity(self.home.identity_folder).cert_pem.decode())
        not_before, _ = validity_of_der(der)
        if not_before.timestamp() > server_time:
            skew = time.time() - server_time
            raise StepFailed(
                Step(
                    "agent certificate",
                    False,
                    f"this agent's certificate is not valid yet by the server's clock: valid from "
                    f"{not_before:%Y-%m-%d %H:%M:%S} UTC; this machine's clock differs from the "
                    f"server's by {skew:+.0f} s",
                    "set up time synchronisation (NTP) on both machines; certificates made by "
                    "`tentacle-poll new-certificate` now are valid from a day back",
                )
            )

    async def _server_date(self) -> float:
        assert self.reader is not None and self.writer is not None
        self.writer.write(
            f"POST {POLL} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        for line in head.decode(errors="replace").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "date":
                return email.utils.parsedate_to_datetime(value.strip()).timestamp()
        raise ValueError("no Date header")

    async def _start_tls(self, with_certificate: bool) -> None:
        assert self.writer is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the thumbprint is compared by the caller
        if with_certificate:
            context.load_cert_chain(*identity_paths(self.home.identity_folder))
        await self.writer.start_tls(context, server_hostname=self.node.server_name or self.host)

    async def round_trip(self) -> Step:
        client = client_for(self.node, self.settings, self.home.identity_folder)
        started = time.monotonic()
        try:
            await client.post(POLL, PollRequest(free_slots=0, hold_seconds=0), PollResponse)
        except RequestRejected as exc:
            if exc.title != "certificate not registered":
                raise StepFailed(
                    Step("protocol round trip", False, str(exc), "see the server's log")
                ) from exc
            mine = load_identity(self.home.identity_folder).thumbprint
            raise StepFailed(_not_registered(mine)) from exc
        except ConnectionCut as exc:
            raise StepFailed(_cut_connection(str(exc).removesuffix(f"; {DIAGNOSE}"))) from exc
        except (ProxyRefused, CommunicationError) as exc:
            raise StepFailed(
                Step("protocol round trip", False, str(exc), "see the server's log")
            ) from exc
        finally:
            await client.close()
        elapsed = (time.monotonic() - started) * 1000
        return _clock_step(client.last_date_header, elapsed)


def _clock_step(date_header: str | None, elapsed_ms: float) -> Step:
    if date_header is None:
        return Step("round trip", True, f"the server answered a poll in {elapsed_ms:.0f} ms")
    skew = time.time() - email.utils.parsedate_to_datetime(date_header).timestamp()
    detail = (
        f"poll answered in {elapsed_ms:.0f} ms; clock differs from the server's by {skew:+.0f} s"
    )
    if abs(skew) > MAX_SKEW_SECONDS:
        return Step("clock", False, detail, "set up time synchronisation (NTP) on this machine")
    return Step("round trip and clock", True, detail)


def _not_registered(thumbprint: str) -> Step:
    return Step(
        "agent certificate",
        False,
        f"the server does not accept this agent's certificate {thumbprint}: it is not "
        "registered there (a deleted target? a certificate rotated out or replaced?)",
        "compare this thumbprint with the one `tentacle-poll targets` shows for this target: "
        "if the target was deleted, register again (`tentacle-poll register ...`); if the "
        "target shows another thumbprint, this home holds an old or copied certificate: "
        "restore the current one, or register with --replace to make this one current",
    )


def _cut_connection(detail: str) -> Step:
    return Step(
        "connection",
        False,
        f"the connection was cut before the server answered ({detail})",
        "a proxy or firewall closing connections, or the server restarting: try again, and "
        "if it repeats, read the proxy's and the server's logs",
    )


def _proxy_advice(code: str) -> str:
    return {
        "407": "the proxy wants credentials: `tentacle-poll proxy --mode explicit ... --username`",
        "401": "the proxy wants credentials: `tentacle-poll proxy --mode explicit ... --username`",
        "403": "the proxy does not allow CONNECT to this host and port; ask its administrator",
        "502": "the proxy cannot reach the server; check the server address",
    }.get(code, "see the proxy's log")
