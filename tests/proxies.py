"""Real proxies from Debian packages, started on loopback ports for one test and stopped after.

tinyproxy and squid as HTTP CONNECT proxies (optionally with basic auth), haproxy as a TLS
passthrough router that picks its backend by SNI. Each runs as ``nobody`` in the foreground.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from .conftest import free_port

AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
START_TIMEOUT = 15.0


@dataclass
class RunningProxy:
    port: int
    process: asyncio.subprocess.Process
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise AssertionError(f"{binary} is not installed; `make test` installs it (as root)")
    return path


async def wait_until_listening(port: int, process: asyncio.subprocess.Process) -> None:
    """A proxy is ready when it accepts a connection; give up if it exits or takes too long."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT
    while loop.time() < deadline:
        if process.returncode is not None:
            raise AssertionError(f"the proxy exited with {process.returncode}")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.02)  # no readiness event to await from a foreign daemon
    raise AssertionError(f"nothing listened on port {port} within {START_TIMEOUT} s")


@contextlib.asynccontextmanager
async def run_proxy(command: list[str], port: int, log: Path) -> AsyncIterator[RunningProxy]:
    # Run in the proxy's own folder, which its user (nobody) can enter: haproxy refuses to start
    # when it cannot get back to its working folder (a clone in a 0700 folder, as /root is).
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        cwd=log.parent,
    )
    try:
        await wait_until_listening(port, process)
        yield RunningProxy(port, process, log)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


def _world_writable(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)
    for parent in folder.parents:  # nobody must reach the folder
        if parent == Path("/"):
            break
        parent.chmod(parent.stat().st_mode | 0o011)
    return folder


@contextlib.asynccontextmanager
async def tinyproxy(
    folder: Path, auth: tuple[str, str] | None = None, connect_ports: list[int] | None = None
) -> AsyncIterator[RunningProxy]:
    folder = _world_writable(folder)
    port = free_port()
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Allow 127.0.0.1",
        "Timeout 60",
        f'PidFile "{folder}/tinyproxy.pid"',
        f'LogFile "{folder}/tinyproxy.log"',
        "LogLevel Connect",
        "DisableViaHeader Yes",
    ]
    if auth:
        lines.append(f"BasicAuth {auth[0]} {auth[1]}")
    lines += [f"ConnectPort {p}" for p in connect_ports or []]
    config = folder / "tinyproxy.conf"
    config.write_text("\n".join(lines) + "\n")
    command = [*AS_NOBODY, require("tinyproxy"), "-d", "-c", str(config)]
    async with run_proxy(command, port, folder / "tinyproxy.log") as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def squid(folder: Path, auth: tuple[str, str] | None = None) -> AsyncIterator[RunningProxy]:
    folder = _world_writable(folder)
    port = free_port()
    lines = [
        f"http_port 127.0.0.1:{port}",
        f"pid_filename {folder}/squid.pid",
        f"cache_log {folder}/cache.log",
        f"access_log stdio:{folder}/access.log",
        "cache deny all",
        "shutdown_lifetime 0 seconds",
        "pinger_enable off",
        f"coredump_dir {folder}",
        "acl localhost src 127.0.0.1/32",
    ]
    if auth:
        passwords = folder / "passwords"
        hashed = await asyncio.create_subprocess_exec(
            "openssl", "passwd", "-apr1", auth[1], stdout=asyncio.subprocess.PIPE
        )
        digest = (await hashed.communicate())[0].decode().strip()
        passwords.write_text(f"{auth[0]}:{digest}\n")  # the MD5 format basic_ncsa_auth reads
        passwords.chmod(0o644)
        lines += [
            f"auth_param basic program /usr/lib/squid/basic_ncsa_auth {passwords}",
            "acl users proxy_auth REQUIRED",
            "http_access allow localhost users",
        ]
    else:
        lines.append("http_access allow localhost")
    lines.append("http_access deny all")
    config = folder / "squid.conf"
    config.write_text("\n".join(lines) + "\n")
    command = [require("squid"), "-N", "-f", str(config)]  # drops to the proxy user itself
    async with run_proxy(command, port, folder / "access.log") as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def sni_router(folder: Path, routes: dict[str, int]) -> AsyncIterator[RunningProxy]:
    """haproxy in TLS passthrough: the ClientHello's server name picks the backend port."""
    folder = _world_writable(folder)
    port = free_port()
    lines = [
        "global",
        "  maxconn 256",
        "defaults",
        "  mode tcp",
        "  timeout connect 5s",
        "  timeout client 120s",
        "  timeout server 120s",
        "frontend shared443",
        f"  bind 127.0.0.1:{port}",
        "  tcp-request inspect-delay 5s",
        "  tcp-request content accept if { req.ssl_hello_type 1 }",
    ]
    for index, name in enumerate(routes):
        lines.append(f"  use_backend b{index} if {{ req.ssl_sni -i {name} }}")
    for index, backend_port in enumerate(routes.values()):
        lines += [f"backend b{index}", f"  server s{index} 127.0.0.1:{backend_port}"]
    config = folder / "haproxy.cfg"
    config.write_text("\n".join(lines) + "\n")
    command = [*AS_NOBODY, require("haproxy"), "-db", "-f", str(config)]
    async with run_proxy(command, port, folder / "haproxy.log") as proxy:
        yield proxy


@contextlib.asynccontextmanager
async def tls_terminating_proxy(
    folder: Path, backend_port: int, certificate_pem: bytes
) -> AsyncIterator[RunningProxy]:
    """haproxy ending TLS in front of a plain HTTP listener (as in front of the admin port),
    telling it so with ``X-Forwarded-Proto: https``. ``certificate_pem``: certificate and key."""
    folder = _world_writable(folder)
    bundle = folder / "site.pem"
    bundle.write_bytes(certificate_pem)
    bundle.chmod(0o644)
    port = free_port()
    lines = [
        "global", "  maxconn 256",
        "defaults", "  mode http", "  timeout connect 5s", "  timeout client 120s",
        "  timeout server 120s",
        "frontend https", f"  bind 127.0.0.1:{port} ssl crt {bundle}",
        "  http-request set-header X-Forwarded-Proto https", "  default_backend admin",
        "backend admin", f"  server s0 127.0.0.1:{backend_port}",
    ]  # fmt: skip
    config = folder / "haproxy.cfg"
    config.write_text("\n".join(lines) + "\n")
    command = [*AS_NOBODY, require("haproxy"), "-db", "-f", str(config)]
    async with run_proxy(command, port, folder / "haproxy.log") as proxy:
        yield proxy
