"""`tentacle-poll service`: the units it writes pass systemd's own checks (verify, and the
security rating the operations issue asks for), install and uninstall touch only the units
they wrote, and without systemd as init the commands say so instead of failing obscurely.
PID 1 is not systemd here: systemctl itself is never run by these tests."""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.service import systemd
from tentacle_poll.service.units import MARKER, ServiceSpec, render_unit

from .processes import CLI

ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
pytestmark = pytest.mark.skipif(
    not Path(ANALYZE).exists(), reason="systemd-analyze is installed by `make system-deps`"
)
SERVER_LIMIT = 3.0
AGENT_LIMIT = 5.0


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=30, check=False,
        env={"PATH": "/usr/bin:/bin", "HOME": str(home)},
    )  # fmt: skip


def exposure(unit: Path) -> float:
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(unit)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1))


def registered_home(folder: Path) -> Path:
    """An agent home as `register` leaves it (install checks it is registered; nothing here
    contacts that server)."""
    folder.mkdir(parents=True, exist_ok=True)
    server = f'[[servers]]\nurl = "https://deploy.example:10943"\nthumbprint = "{"A" * 64}"\n'
    (folder / "agent.toml").write_text(server)
    return folder


def verify(unit: Path) -> None:
    result = subprocess.run(
        [ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr


@pytest.mark.parametrize(("flags", "limit"), [([], AGENT_LIMIT), (["--server"], SERVER_LIMIT)])
def test_the_default_units_pass_verify_and_are_rated_safe(
    tmp_path: Path, flags: list[str], limit: float
) -> None:
    result = run_cli("service", "install", "--dry-run", *flags, home=tmp_path)
    assert result.returncode == 0, result.stderr
    unit = tmp_path / ("server.service" if flags else "agent.service")
    unit.write_text(result.stdout)
    verify(unit)
    assert exposure(unit) <= limit
    for directive in ("NoNewPrivileges=yes", "PrivateTmp=yes", "KillMode=mixed", "Restart="):
        assert directive in result.stdout
    assert "User=tentacle-poll" in result.stdout
    assert not list(tmp_path.glob(".tentacle_poll*")), "a dry run created a home"


def test_the_interpreter_stays_visible_behind_protect_home(tmp_path: Path) -> None:
    """A virtualenv made from pyenv's Python under /root (as on this project's machines) runs
    from folders ProtectHome= hides: each is bound back in, read-only."""
    result = run_cli("--home", str(tmp_path / "agent"), "service", "install", "--dry-run",
                     home=tmp_path)  # fmt: skip
    needed = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parents[1]}
    hidden = {p for p in needed if p.parts[1:2] in (("root",), ("home",))}
    bound = re.search(r"^BindReadOnlyPaths=(.*)$", result.stdout, re.MULTILINE)
    if hidden:
        assert bound and {Path(p) for p in shlex.split(bound.group(1))} == hidden, result.stdout
        assert "ProtectHome=tmpfs" in result.stdout
    else:
        assert bound is None and "ProtectHome=yes" in result.stdout


def test_the_stop_timeout_covers_the_agents_drain(tmp_path: Path) -> None:
    home = tmp_path / "agent"
    home.mkdir()
    (home / "agent.toml").write_text("drain_seconds = 600\ncancel_grace_seconds = 30\n")
    result = run_cli("--home", str(home), "service", "install", "--dry-run", home=tmp_path)
    assert "TimeoutStopSec=645\n" in result.stdout, result.stdout


def test_a_server_on_port_443_keeps_only_the_capability_to_bind_it(tmp_path: Path) -> None:
    home = tmp_path / "server"
    home.mkdir()
    (home / "server.toml").write_text("comms_port = 443\n")
    args = ["service", "install", "--server", "--server-home", str(home), "--dry-run"]
    result = run_cli(*args, home=tmp_path)
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" in result.stdout
    unit = tmp_path / "s.service"
    unit.write_text(result.stdout)
    assert exposure(unit) <= SERVER_LIMIT


def test_bad_settings_stop_the_install_with_the_settings_problem(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text("drain_seconds = -1\n")
    result = run_cli("--home", str(tmp_path), "service", "install", "--dry-run", home=tmp_path)
    assert result.returncode == 1 and "drain_seconds" in result.stderr
    assert "Traceback" not in result.stderr


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    home=st.text(
        st.characters(codec="ascii", categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=30
    )
)
def test_any_home_path_keeps_its_meaning_or_is_refused_clearly(tmp_path: Path, home: str) -> None:
    """Spaces, % (a systemd specifier) and $ (a variable in command lines) in a home either
    survive into the unit as the same path or are refused: never a unit that runs elsewhere."""
    path = tmp_path / "srv" / home.replace("/", "_")
    spec = ServiceSpec(
        role="agent", name="t", home=path, user="tentacle-poll", python=Path(sys.executable),
        python_paths=(Path(sys.prefix),), stop_timeout_seconds=60,
    )  # fmt: skip
    try:
        text = render_unit(spec)
    except ConfigurationError as exc:
        assert "cannot go in a unit" in str(exc)
        assert any(c in str(path) for c in "\"'\\$")
        return
    unit = tmp_path / "t.service"
    unit.write_text(text)
    shown = subprocess.run(
        [ANALYZE, "security", "--offline=true", str(unit)], capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    verify(unit)
    written = re.search(r"^ReadWritePaths=(.*)$", text, re.MULTILINE)
    assert written and shlex.split(written.group(1)) == [str(path).replace("%", "%%")]


@pytest.mark.skipif(systemd.systemd_is_running(), reason="would run systemctl for real")
def test_install_writes_the_unit_and_uninstall_removes_it(tmp_path: Path) -> None:
    units, home = tmp_path / "units", registered_home(tmp_path / "agent-home")
    args = ["--home", str(home), "service", "install", "--user", "nobody", "--unit-dir", str(units)]
    result = run_cli(*args, home=tmp_path)
    assert result.returncode == 0, result.stderr
    unit = units / "tentacle-poll-agent.service"
    assert MARKER in unit.read_text() and f"ReadWritePaths={home}" in unit.read_text()
    assert unit.stat().st_mode & 0o777 == 0o644
    assert home.stat().st_mode & 0o777 == 0o700
    assert not systemd.systemd_is_running() and "systemctl was not run" in result.stdout
    again = run_cli(*args, home=tmp_path)
    assert again.returncode == 0, "reinstalling over its own unit must work"
    assert systemd.units_running(home, units) == ["tentacle-poll-agent"]
    assert systemd.units_running(tmp_path / "other", units) == []
    result = run_cli("service", "uninstall", "--unit-dir", str(units), home=tmp_path)
    assert result.returncode == 0, result.stderr
    assert not unit.exists() and home.exists(), "uninstall removes the unit, never the home"


def test_units_it_did_not_write_are_never_replaced_or_removed(tmp_path: Path) -> None:
    units = tmp_path / "units"
    units.mkdir()
    foreign = units / "tentacle-poll-server.service"
    foreign.write_text("[Service]\nExecStart=/bin/true\n")
    install = ["service", "install", "--server", "--user", "nobody", "--unit-dir", str(units)]
    for args in (install, ["service", "uninstall", "--server", "--unit-dir", str(units)]):
        result = run_cli(*args, "--server-home", str(tmp_path / "s"), home=tmp_path)
        assert result.returncode == 1 and "was not written by" in result.stderr, result.stderr
    assert foreign.read_text() == "[Service]\nExecStart=/bin/true\n"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["service", "install", "--user", "nobody"], "not registered with a server yet"),
        (["service", "install", "--name", "web/../../x"], "not a unit name"),
        (["service", "uninstall", "--name", "never-installed"], "there is no"),
        (["service", "status"], "systemd is not the init system"),
        (["service", "start", "--server"], "systemd is not the init system"),
    ],
)
def test_mistakes_and_a_missing_systemd_get_one_clear_line(
    tmp_path: Path, args: list[str], says: str
) -> None:
    if "systemd is not" in says and systemd.systemd_is_running():
        pytest.skip("systemd is the init system on this machine")
    result = run_cli(*args, "--unit-dir", str(tmp_path / "units"), home=tmp_path)
    assert result.returncode == 1 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "units").exists() or not list((tmp_path / "units").iterdir())


def test_a_unit_folder_that_cannot_be_written_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["service", "install", "--user", "nobody", "--unit-dir", str(blocker / "units")]
    result = run_cli("--home", str(registered_home(tmp_path / "agent")), *args, home=tmp_path)
    assert result.returncode == 1 and "cannot write" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"), reason="needs root")
@pytest.mark.skipif(systemd.systemd_is_running(), reason="would run systemctl for real")
def test_create_user_makes_a_system_user_that_owns_the_home(tmp_path: Path) -> None:
    user = f"tp-test-{os.getpid() % 100000}"
    home = registered_home(tmp_path / "agent")  # made by root, as `register` would have
    args = ["--home", str(home), "service", "install", "--user", user, "--create-user"]
    try:
        result = run_cli(*args, "--unit-dir", str(tmp_path / "units"), home=tmp_path)
        assert result.returncode == 0, result.stderr
        account = pwd.getpwnam(user)
        assert account.pw_uid < 1000 and account.pw_shell.endswith("nologin")
        assert (home / "agent.toml").stat().st_uid == account.pw_uid
        assert f"User={user}" in (tmp_path / "units" / "tentacle-poll-agent.service").read_text()
    finally:
        subprocess.run(["userdel", user], capture_output=True, check=False)


def test_a_missing_user_is_named_with_the_flag_that_creates_it(tmp_path: Path) -> None:
    home = registered_home(tmp_path / "agent")
    args = ["service", "install", "--user", "no-such-user-here", "--unit-dir", str(tmp_path)]
    result = run_cli("--home", str(home), *args, home=tmp_path)
    assert result.returncode == 1 and "--create-user" in result.stderr, result.stderr
    assert not (tmp_path / "tentacle-poll-agent.service").exists()
