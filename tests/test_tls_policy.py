"""The comms port's TLS offer, swept with real handshakes: each protocol version, each TLS 1.2
suite OpenSSL knows, each key-exchange group."""

from __future__ import annotations

import asyncio
import ssl
import warnings

from tentacle_poll.server import Server

AEAD_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
}
AEAD_TLS13 = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}


def client(version: ssl.TLSVersion, ciphers: str = "ALL:@SECLEVEL=0") -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ctx.maximum_version = version
    ctx.set_ciphers(ciphers)
    return ctx


async def handshake(server: Server, ctx: ssl.SSLContext) -> tuple[str, str] | None:
    """(protocol, cipher) the server agreed to, or None when it refused."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.comms_port, ssl=ctx)
    except (ssl.SSLError, ConnectionError):
        return None
    ssl_object = writer.get_extra_info("ssl_object")
    agreed = (ssl_object.version(), ssl_object.cipher()[0])
    writer.close()
    return agreed


def tls12_suites() -> list[str]:
    ctx = client(ssl.TLSVersion.TLSv1_2)
    return sorted({c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"})


async def test_only_tls_1_2_and_1_3_are_accepted(server: Server) -> None:
    agreed = {}
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1_2):
        agreed[version.name] = await handshake(server, client(version))
    agreed["TLSv1_3"] = await handshake(server, client(ssl.TLSVersion.TLSv1_3))
    assert agreed["TLSv1"] is None and agreed["TLSv1_1"] is None
    assert agreed["TLSv1_2"] is not None and agreed["TLSv1_3"] is not None
    assert agreed["TLSv1_3"][1] in AEAD_TLS13


async def test_tls_1_2_accepts_exactly_the_ecdhe_aead_suites(server: Server) -> None:
    suites = tls12_suites()
    assert len(suites) > 20  # the sweep offers what OpenSSL has, CBC and RSA key exchange too
    accepted = set()
    for suite in suites:
        if await handshake(server, client(ssl.TLSVersion.TLSv1_2, f"{suite}:@SECLEVEL=0")):
            accepted.add(suite)
    assert accepted == AEAD_TLS12


async def test_key_exchange_groups_are_x25519_and_p256_only(server: Server) -> None:
    accepted = set()
    for group in ("X25519", "prime256v1", "secp384r1", "secp521r1", "X448"):
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client(version)
            ctx.set_ecdh_curve(group)  # the client offers this group alone
            if await handshake(server, ctx):
                accepted.add(group)
    assert accepted == {"X25519", "prime256v1"}
