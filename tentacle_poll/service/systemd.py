"""Installing, removing and driving a unit with systemd: the unit file, its user, systemctl.

Where systemd is not the init system (containers, this project's CI), install and uninstall
still write and remove the unit file and say that systemctl was not run; status, start and
stop say why they cannot work instead of printing systemctl's own confusion.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.service.units import MARKER, ServiceSpec, home_line, render_unit

UNIT_FOLDER = Path("/etc/systemd/system")
SYSTEMD_RUNNING_MARK = Path("/run/systemd/system")  # sd_booted(3)'s test
Say = Callable[[str], None]


def systemd_is_running() -> bool:
    return SYSTEMD_RUNNING_MARK.is_dir()


def install(spec: ServiceSpec, folder: Path, *, start: bool, create_user: bool, say: Say) -> None:
    """Writes the unit (refusing to replace one this command did not write), makes the home
    the service user's own, then enables (and starts) it when systemd runs here."""
    with _files_named(folder):
        _install(spec, folder, start=start, create_user=create_user, say=say)


def _install(spec: ServiceSpec, folder: Path, *, start: bool, create_user: bool, say: Say) -> None:
    path = folder / spec.unit_file
    _refuse_foreign_unit(path)
    user = _service_user(spec.user, spec.home, create_user, say)
    spec.home.mkdir(mode=0o700, parents=True, exist_ok=True)
    spec.home.chmod(0o700)  # it holds the private key: the service user's alone
    _give_home_to(spec.home, user)
    _write_atomically(path, render_unit(spec))
    say(f"wrote {path}")
    if not systemd_is_running():
        say(_not_running(f"systemctl enable --now {spec.unit_file}"))
        return
    _systemctl("daemon-reload")
    _systemctl("enable", *(["--now"] if start else []), spec.unit_file)
    say(
        f"{spec.unit_file} enabled" + (" and started" if start else "; start it with service start")
    )


def uninstall(name: str, folder: Path, *, say: Say) -> None:
    """Stops and disables the unit, then removes its file; the home (identity, journal,
    spool) stays: delete it by hand, or use `tentacle-poll deregister` for an agent."""
    path = folder / f"{name}.service"
    if not path.exists():
        raise ConfigurationError(f"there is no {path}; `tentacle-poll service status` names units")
    _refuse_foreign_unit(path)
    if systemd_is_running():
        _systemctl("disable", "--now", path.name)
    with _files_named(folder):
        path.unlink()
    say(f"removed {path}")
    if systemd_is_running():
        _systemctl("daemon-reload")
    else:
        say(_not_running("nothing to stop"))


def control(action: str, name: str) -> int:
    """``systemctl status|start|stop``, its output passed through; its exit status returned
    (status: 3 when the unit is not running, as systemctl says)."""
    if not systemd_is_running():
        raise ConfigurationError(
            f"cannot {action} {name}.service: systemd is not the init system here "
            f"(no {SYSTEMD_RUNNING_MARK}); run the {'agent' if 'agent' in name else 'server'} "
            "directly, or under the supervisor this machine uses"
        )
    return subprocess.run(["systemctl", action, f"{name}.service"], check=False).returncode


@contextlib.contextmanager
def _files_named(folder: Path) -> Iterator[None]:
    """A unit folder or home this user may not write: one line saying so, not a traceback."""
    try:
        yield
    except PermissionError as exc:
        raise ConfigurationError(
            f"cannot write {exc.filename}: permission denied; run it as root (sudo), or give "
            f"another --unit-dir than {folder}"
        ) from exc
    except OSError as exc:
        raise ConfigurationError(f"cannot write {exc.filename}: {exc.strerror or exc}") from exc


def _refuse_foreign_unit(path: Path) -> None:
    if path.exists() and MARKER not in path.read_text(errors="replace"):
        raise ConfigurationError(
            f"{path} exists and was not written by `tentacle-poll service install`; "
            "choose another --name, or move that file away first"
        )


def _service_user(name: str, home: Path, create: bool, say: Say) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        if not create:
            raise ConfigurationError(
                f"there is no user {name!r}: pass --create-user to make it a system user, "
                "or --user with an existing one"
            ) from None
    _create_system_user(name, home)
    say(f"created the system user {name!r} (no login shell, home {home})")
    return pwd.getpwnam(name)


def _create_system_user(name: str, home: Path) -> None:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    command = [useradd, "--system", "--user-group", "--home-dir", str(home), "--no-create-home"]
    result = subprocess.run(
        [*command, "--shell", "/usr/sbin/nologin", name],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ConfigurationError(
            f"could not create the user {name!r}: {result.stderr.strip() or result.returncode} "
            "(creating users needs root)"
        )


def _give_home_to(home: Path, user: pwd.struct_passwd) -> None:
    """The home was likely made by root (`register`, `server run` before install): the
    service reads its key and writes its journal as its own user."""
    if os.geteuid() != 0:
        return
    for path in [home, *home.rglob("*")]:
        os.lchown(path, user.pw_uid, user.pw_gid)


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    temporary.chmod(0o644)
    temporary.replace(path)


def _systemctl(*args: str) -> None:
    result = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ConfigurationError(
            f"systemctl {' '.join(args)} failed: {result.stderr.strip() or result.returncode}"
        )


def _not_running(then: str) -> str:
    return (
        f"systemd is not the init system here (no {SYSTEMD_RUNNING_MARK}): systemctl was not "
        f"run; on a systemd machine: {then}"
    )


def units_running(home: Path, folder: Path = UNIT_FOLDER) -> list[str]:
    """Names of the units this command wrote that run ``home``."""
    found = []
    for unit in sorted(folder.glob("*.service")) if folder.is_dir() else []:
        text = unit.read_text(errors="replace")
        if MARKER in text and f"{home_line(home)}\n" in text:
            found.append(unit.name.removesuffix(".service"))
    return found
