"""Choosing the HTTP CONNECT proxy for a server URL: none, the system's, or an explicit one.

The system proxy comes from ``https_proxy``/``HTTPS_PROXY`` and ``no_proxy``/``NO_PROXY``, read
here rather than by aiohttp (whose ``trust_env`` ignores ``https://`` proxy URLs silently and
knows no CIDR ranges in NO_PROXY). Credentials go in a header (tentacle_poll/proxies.py).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from urllib.parse import SplitResult, unquote, urlsplit

from tentacle_poll.config import ENV_PREFIX, ProxySettings
from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.proxies import ProxyRoute, proxy_route

PROXY_PASSWORD_VARIABLE = f"{ENV_PREFIX}PROXY_PASSWORD"


def proxy_for(
    target_url: str, settings: ProxySettings, environ: Mapping[str, str] = os.environ
) -> ProxyRoute | None:
    if settings.mode == "explicit":
        assert settings.host is not None and settings.port is not None
        stored = settings.password.get_secret_value() if settings.password else None
        # The environment wins, and is never written anywhere: a password can stay off disk.
        password = environ.get(PROXY_PASSWORD_VARIABLE) or stored
        return proxy_route(settings.host, settings.port, settings.username, password)
    if settings.mode == "system":
        return system_proxy(target_url, environ)
    return None


def system_proxy(target_url: str, environ: Mapping[str, str]) -> ProxyRoute | None:
    """The proxy the environment names for ``target_url``, or None (unset or bypassed)."""
    proxy_url = environ.get("https_proxy") or environ.get("HTTPS_PROXY")
    if not proxy_url:
        return None
    target = urlsplit(target_url)
    no_proxy = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    if bypassed(target.hostname or "", target.port or 443, no_proxy):
        return None
    proxy, port = _parsed(proxy_url)
    if proxy.scheme != "http":
        raise ConfigurationError(
            f"the proxy {proxy.hostname}:{port} is given as {proxy.scheme}://; only http:// "
            "proxies (HTTP CONNECT) are supported: TLS to the proxy itself is not, but the "
            "tunnel inside carries this agent's own end-to-end TLS. Use http://HOST:PORT"
        )
    user = unquote(proxy.username) if proxy.username else None
    password = unquote(proxy.password) if proxy.password else None
    return proxy_route(proxy.hostname or "", port, user, password)


def _parsed(proxy_url: str) -> tuple[SplitResult, int]:
    """The environment's proxy address and its port (3128 when it names none)."""
    try:
        proxy = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
        return proxy, proxy.port or 3128
    except ValueError as exc:  # never echoed whole: it may hold a password
        raise ConfigurationError(
            f"HTTPS_PROXY (or https_proxy) is not a proxy address ({exc}): use "
            "http://[user:password@]HOST:PORT, or unset it"
        ) from None


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """NO_PROXY matching: ``*``, domain suffixes (``.corp``, ``corp``), IPs and CIDR ranges,
    each optionally with ``:port``."""
    host = host.lower().strip("[]")
    for raw in no_proxy.replace(" ", "").split(","):
        entry, _, entry_port = (
            raw.lower().rpartition(":") if _has_port(raw) else (raw.lower(), "", "")
        )
        if not entry or (entry_port and entry_port != str(port)):
            continue
        if entry == "*" or _matches(host, entry.strip("[]")):
            return True
    return False


def _has_port(entry: str) -> bool:
    # "host:443" and "[::1]:443" carry a port; a bare IPv6 address or CIDR does not.
    if entry.startswith("["):
        return "]:" in entry
    return entry.count(":") == 1


def _matches(host: str, entry: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        suffix = entry.lstrip(".")
        return host == suffix or host.endswith("." + suffix)
    try:
        return address in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False
