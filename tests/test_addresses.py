"""Thumbprints and server addresses as people paste them get accepted, or one line saying what
to use instead."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tentacle_poll import config
from tentacle_poll.agent.connections.registration import Registration, register
from tentacle_poll.exceptions import ConfigurationError, ServerUnavailable
from tentacle_poll.server import Server
from tentacle_poll.tls.certs import normalised_thumbprint

from .conftest import comms_url, new_agent_home, register_at
from .test_cli import cli


def openssl_style(thumbprint: str) -> str:
    """As `openssl x509 -fingerprint -sha256` prints it, but lower case."""
    return ":".join(thumbprint[i : i + 2] for i in range(0, 64, 2)).lower()


async def test_a_lower_case_thumbprint_with_colons_registers(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    pasted = openssl_style(server.state.thumbprint)
    home = await register_at(comms_url(server), pasted, api_key, tmp_path / "web1", "web1")
    assert home.settings().servers[0].thumbprint == server.state.thumbprint


def test_a_sha1_thumbprint_is_refused_with_how_to_get_the_sha256_one() -> None:
    with pytest.raises(ValueError, match=r"SHA-1 thumbprint.*-fingerprint -sha256"):
        normalised_thumbprint("AB:" * 19 + "CD")
    with pytest.raises(ValueError, match="not a SHA-256 thumbprint"):
        normalised_thumbprint("hello")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("http://deploy.example:10943", "use https://deploy.example:10943 instead of http://"),
        ("deploy.example:10943", "use https://deploy.example:10943"),
        ("https://deploy.example:10943/v1/poll", "use https://HOST:PORT (no path)"),
        ("https://deploy.example:99999", "port 99999 is out of range: use 1-65535"),
        ("https://deploy.example:0", "port 0 is out of range: use 1-65535"),
    ],
)
def test_a_wrong_server_address_gets_one_line_saying_what_to_use(
    tmp_path: Path, address: str, expected: str
) -> None:
    home = str(tmp_path / "agent")
    cli("new-certificate", "--home", home)
    result = cli(
        "register", "--home", home, "--server", address, "--server-thumbprint", "AB" * 32,
        "--api-key", "API-X", "--environment", "T", "--role", "r", check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


async def test_the_admin_port_given_for_the_comms_port_is_named(
    server: Server, api_key: str, tmp_path: Path
) -> None:
    home = new_agent_home(tmp_path / "web1")
    details = Registration(
        f"https://127.0.0.1:{server.admin_port}", "web1", ["T"], ["r"],
        server_thumbprint=server.state.thumbprint, api_key=api_key,
    )  # fmt: skip
    with pytest.raises(ServerUnavailable, match="is this the admin port"):
        await register(home, details)


def test_a_thumbprint_given_to_trust_in_any_case_and_with_colons_is_kept_normalised(
    tmp_path: Path,
) -> None:
    home = str(tmp_path / "agent")
    cli("new-certificate", "--home", home)
    cli("poll-server", "add", "--home", home, "--server", "https://a:10943",
        "--server-thumbprint", openssl_style("AB" * 32))  # fmt: skip
    cli("trust", "--home", home, "--server", "https://a:10943", "--add", openssl_style("CD" * 32))
    listed = cli("poll-server", "list", "--home", home).stdout
    assert "AB" * 32 in listed and "CD" * 32 in listed
    bad = cli(
        "trust", "--home", home, "--server", "https://a:10943", "--add", "ab" * 20, check=False
    )
    assert bad.returncode == 1 and "SHA-1" in bad.stderr and "Traceback" not in bad.stderr


def test_a_hand_edited_server_port_out_of_range_is_refused_in_words(tmp_path: Path) -> None:
    """agent.toml edited by hand: the daemon refuses to start, rather than failing each poll
    with "cannot reach https://h:70000: https://h:70000/v1/poll"."""
    home = str(tmp_path / "agent")
    cli("new-certificate", "--home", home)
    (tmp_path / "agent" / "agent.toml").write_text(
        f'[[servers]]\nurl = "https://deploy.example:70000"\nthumbprint = "{"AB" * 32}"\n'
    )
    result = cli("--home", home, "run", check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "port 70000 is out of range: use 1-65535" in result.stderr


@given(text=st.one_of(
    st.text(max_size=40),
    st.builds(lambda scheme, host, port: f"{scheme}://{host}{port}",
              st.sampled_from(["https", "http", "ftp", ""]),
              st.sampled_from(["h", "[::1]", "[::1", "10.0.0.1", "", "h/x"]),
              st.one_of(st.just(""), st.integers(-1, 200_000).map(lambda p: f":{p}"))),
))  # fmt: skip
def test_any_server_or_admin_address_is_taken_usable_or_refused_in_words(text: str) -> None:
    """What people type for --server and --admin-url: taken only with a port a connection can
    use, or refused with a ConfigurationError (a one-line message), never another exception."""
    for parse in (config.comms_url, config.admin_url):
        try:
            taken = parse(text)
        except ConfigurationError as exc:
            assert "use " in str(exc) and "\n" not in str(exc)
        else:
            assert urlsplit(taken).port in (None, *range(1, 65536))
