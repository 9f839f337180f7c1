"""The systemd unit of an agent or a server, hardened by default.

Rated by ``systemd-analyze security --offline=true``: the server unit about 1.2, the agent
unit 3.0 (tests/test_service.py keeps them at or under 3.0 and 5.0). The agent is looser on
purpose: deploy scripts run as its children and inherit its sandbox, so it keeps the network,
namespaces and system calls scripts commonly use, write access to all but /usr, /boot and
/etc, and a delegated cgroup (``Delegate=yes``) so each task's whole tree can
be ended (docs/guarantees.md). docs/operations.md shows the drop-in for scripts that need root.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tentacle_poll.exceptions import ConfigurationError

Role = Literal["agent", "server"]
MARKER = (
    "# Written by `tentacle-poll service install`; `tentacle-poll service uninstall` removes it."
)
DEFAULT_USER = "tentacle-poll"
# Folders ProtectHome= hides; a home or an interpreter under them is bound back in.
HOME_FOLDERS = (Path("/home"), Path("/root"), Path("/run/user"))
UNIT_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,200}")
LOW_PORT = 1024

COMMON_HARDENING = """\
UMask=0077
NoNewPrivileges=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
KeyringMode=private
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
SystemCallArchitectures=native
SystemCallErrorNumber=EPERM
"""

# MemoryDenyWriteExecute= is left out: a Python extension using libffi closures (ctypes
# callbacks) would fail in a way no test here can show.
SERVER_HARDENING = """\
ProtectSystem=strict
ProtectControlGroups=yes
ProtectProc=invisible
ProcSubset=pid
PrivateUsers=yes
PrivateIPC=yes
RemoveIPC=yes
RestrictNamespaces=yes
DevicePolicy=closed
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
LimitNOFILE=262144
"""

AGENT_HARDENING = """\
RestartPreventExitStatus=78
ProtectSystem=full
Delegate=yes
SystemCallFilter=~@clock @cpu-emulation @module @mount @obsolete @raw-io @reboot @swap
LimitNOFILE=65536
"""


@dataclass(frozen=True)
class ServiceSpec:
    """What a unit needs to know; the command line fills it from flags and settings."""

    role: Role
    name: str
    home: Path
    user: str
    python: Path
    python_paths: tuple[Path, ...]  # what the interpreter reads: its venv, its installation
    stop_timeout_seconds: int
    low_ports: bool = False  # the server listens under 1024 (e.g. 443)

    @property
    def unit_file(self) -> str:
        return f"{self.name}.service"


def unit_name(text: str) -> str:
    """A unit name as given (``.service`` optional), or a ConfigurationError."""
    name = text.removesuffix(".service")
    if not UNIT_NAME.fullmatch(name):
        raise ConfigurationError(
            f"{text!r} is not a unit name: use letters, digits and _ . : - only "
            "(e.g. tentacle-poll-agent-web)"
        )
    return name


def default_unit_name(role: Role) -> str:
    return f"tentacle-poll-{role}"


def render_unit(spec: ServiceSpec) -> str:
    return "\n".join(
        [
            MARKER,
            _unit_section(spec),
            _service_section(spec),
            "[Install]\nWantedBy=multi-user.target\n",
        ]
    )


def _unit_section(spec: ServiceSpec) -> str:
    after = "network-online.target" + (" postgresql.service" if spec.role == "server" else "")
    return (
        f"[Unit]\nDescription=tentacle-poll {spec.role} ({_specifiers_escaped(spec.home)})\n"
        "Documentation=https://github.com/tentacle-poll/tentacle_poll/blob/main/docs/operations.md\n"
        f"After={after}\nWants=network-online.target\n"
        # A unit that keeps failing (a home deleted, settings broken) stops being restarted.
        "StartLimitIntervalSec=300\nStartLimitBurst=5\n"
    )


def _service_section(spec: ServiceSpec) -> str:
    lines = [
        "[Service]",
        "Type=exec",
        f"User={spec.user}",
        f"ExecStart={_quoted(spec.python)} -m tentacle_poll {' '.join(_command(spec))}",
        "Restart=on-failure",
        "RestartSec=5",
        # SIGTERM to the daemon alone, so it drains; SIGKILL to every leftover at the timeout.
        "KillMode=mixed",
        f"TimeoutStopSec={spec.stop_timeout_seconds}",
        "Environment=PYTHONUNBUFFERED=1",
        *_paths(spec),
        *_capabilities(spec),
    ]
    role_hardening = SERVER_HARDENING if spec.role == "server" else AGENT_HARDENING
    return "\n".join(lines) + "\n" + COMMON_HARDENING + role_hardening


def _command(spec: ServiceSpec) -> list[str]:
    if spec.role == "server":
        return ["server", "run", "--server-home", _quoted(spec.home)]
    return ["--home", _quoted(spec.home), "run"]


def _paths(spec: ServiceSpec) -> list[str]:
    """The home is the one folder the server writes; a home, a virtualenv or an interpreter
    (pyenv's) under /home or /root is bound into an otherwise empty /home and /root."""
    lines = [home_line(spec.home)]
    hidden = [path for path in spec.python_paths if _under_home_folders(path)]
    if not hidden and not _under_home_folders(spec.home):
        return [*lines, "ProtectHome=yes"]
    lines.append("ProtectHome=tmpfs")
    if _under_home_folders(spec.home):
        lines.append(f"BindPaths={_quoted(spec.home)}")
    if hidden:
        lines.append("BindReadOnlyPaths=" + " ".join(_quoted(path) for path in hidden))
    return lines


def home_line(home: Path) -> str:
    """The line naming the home a unit writes: also how a unit of a home is found again."""
    return f"ReadWritePaths={_quoted(home)}"


def _capabilities(spec: ServiceSpec) -> list[str]:
    """None at all, unless the server must bind a port under 1024."""
    if spec.low_ports:
        return [
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
            "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        ]
    return ["CapabilityBoundingSet=", "AmbientCapabilities="]


def _under_home_folders(path: Path) -> bool:
    return any(path == folder or folder in path.parents for folder in HOME_FOLDERS)


def _quoted(path: Path | str) -> str:
    """systemd splits command lines and path lists at spaces and expands % specifiers (and
    $ in command lines): a path keeps its meaning quoted, with % doubled."""
    text = str(path)
    if any(c in text for c in "\"'\\\n$"):
        raise ConfigurationError(
            f"{text!r}: a path with quotes, backslashes, $ or newlines cannot go in a unit; "
            "choose a plainer path"
        )
    text = _specifiers_escaped(text)
    return f'"{text}"' if " " in text else text


def _specifiers_escaped(text: Path | str) -> str:
    return str(text).replace("%", "%%")
