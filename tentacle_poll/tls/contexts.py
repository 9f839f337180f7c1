"""SSLContext factories: a client pinned to server thumbprints, a server trusting registered agents.

Python's ``ssl`` has no verify callback, so pinning is done in an ``SSLObject`` subclass that
checks the peer's DER thumbprint right after the handshake and raises before any HTTP byte is
written. The server side loads each registered agent certificate as a trust anchor that
matches exactly that certificate (partial-chain verification, whatever its subject); removals
need a fresh context, swapped in per handshake from ``sni_callback`` (which runs even when the
client sends no SNI).
"""

from __future__ import annotations

import asyncio
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tentacle_poll.tls.certs import thumbprint_of_der
from tentacle_poll.tls.files import identity_paths
from tentacle_poll.tls.policy import apply_policy


class PinnedServerMismatch(ssl.SSLError):
    """The server's certificate thumbprint is not one of the pinned thumbprints."""

    def __init__(self, actual: str, expected: frozenset[str]) -> None:
        pinned = ", ".join(sorted(expected))
        super().__init__(f"server certificate thumbprint {actual} is not the pinned {pinned}")
        self.actual = actual


class _PinnedSSLObject(ssl.SSLObject):
    expected_thumbprints: frozenset[str] = frozenset()

    def do_handshake(self) -> None:
        super().do_handshake()
        der = self.getpeercert(binary_form=True)
        actual = thumbprint_of_der(der) if der else "none"
        if actual not in self.expected_thumbprints:
            raise PinnedServerMismatch(actual, self.expected_thumbprints)


def update_pins(ctx: ssl.SSLContext, thumbprints: Iterable[str]) -> None:
    """Changes the thumbprints a pinned context accepts, for connections made from now on."""
    ctx.sslobject_class.expected_thumbprints = frozenset(t.upper() for t in thumbprints)  # type: ignore[attr-defined]


def pinned_client_context(
    thumbprints: Iterable[str], identity_folder: Path | None
) -> ssl.SSLContext:
    """A client context that talks only to a server with one of ``thumbprints``.

    ``identity_folder`` holds the agent's key and certificate; ``None`` connects without a client
    certificate, which the server allows for registration only.
    """
    ctx = apply_policy(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the pin below replaces chain verification
    pins = frozenset(t.upper() for t in thumbprints)
    ctx.sslobject_class = type(
        "PinnedSSLObject", (_PinnedSSLObject,), {"expected_thumbprints": pins}
    )
    if identity_folder is not None:
        cert, key = identity_paths(identity_folder)
        ctx.load_cert_chain(cert, key)
    return ctx


class TrustedClientCertificates:
    """The server's TLS context, trusting exactly the registered agent certificates.

    OpenSSL 3.0 re-sorts its whole trust store for every anchor added, so building a context
    for n agents costs O(n²): about 9 s at 10,000 agents, measured. Adding one agent stays
    cheap (one sort). A removal needs a new context: it is built on a thread from one bundle
    file (OpenSSL reads files with the GIL released), so polls keep being answered; until it is
    swapped in, a removed agent can still complete a handshake, and every route refuses it
    with 403 (no registration matches its thumbprint any more).
    """

    def __init__(self, identity_folder: Path, pems: Iterable[bytes]) -> None:
        self._identity_folder = identity_folder
        self._pems: set[bytes] = set(pems)
        self._current = self._with_identity(self._build_trust_context(frozenset(self._pems)))
        self._rebuilding = asyncio.Lock()
        self._removals = 0  # removals asked for so far
        self._removals_built = 0  # of those, how many the current trust already leaves out
        self.context = self._with_identity(self._new_context())
        self.context.sni_callback = self._use_current_trust

    def add(self, pem: bytes) -> None:
        if pem not in self._pems:
            self._pems.add(pem)
            self._current.load_verify_locations(cadata=pem.decode())

    async def remove(self, *pems: bytes) -> None:
        """Returns once new handshakes no longer trust ``pems`` (one rebuild for them all).

        Removals that arrive while a rebuild runs share the next one: deleting a hundred
        targets at once costs two rebuilds, not a hundred (each is seconds at 10,000 agents)."""
        if self._pems.intersection(pems):
            self._pems.difference_update(pems)
            self._removals += 1
            await self._rebuild(self._removals)

    async def replace_all(self, pems: Iterable[bytes]) -> set[bytes]:
        """Trusts exactly ``pems`` (another node of a cluster changed the registrations);
        returns the certificates no longer trusted."""
        wanted = set(pems)
        for pem in wanted - self._pems:
            self.add(pem)
        dropped = self._pems - wanted
        await self.remove(*dropped)
        return dropped

    def reload_identity(self) -> None:
        """Presents the server certificate now in the identity folder (after a rotation)."""
        self._with_identity(self.context)
        self._with_identity(self._current)

    async def _rebuild(self, removal: int) -> None:
        async with self._rebuilding:
            if self._removals_built >= removal:
                return  # a rebuild that began after this removal has left it out already
            covered, wanted = self._removals, frozenset(self._pems)
            context = await asyncio.to_thread(self._build_trust_context, wanted)
            self._with_identity(context)  # here, not on the thread: a rotation may have happened
            for pem in self._pems - wanted:  # registered while it was being built
                context.load_verify_locations(cadata=pem.decode())
            self._current = context
            self._removals_built = covered

    def _use_current_trust(self, sslobj: Any, server_name: str | None, ctx: ssl.SSLContext) -> None:
        sslobj.context = self._current

    def _build_trust_context(self, pems: frozenset[bytes]) -> ssl.SSLContext:
        ctx = self._new_context()
        if pems:
            with tempfile.NamedTemporaryFile(suffix=".pem") as bundle:
                bundle.write(b"".join(pems))
                bundle.flush()
                ctx.load_verify_locations(cafile=bundle.name)
        return ctx

    def _new_context(self) -> ssl.SSLContext:
        ctx = apply_policy(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        # An anchor matches only the exact certificate: OpenSSL otherwise looks anchors up by
        # subject name, and of two registered certificates with one subject (two agents on a
        # host, an old and a rotated one) only one would verify. A certificate of an earlier
        # version (CA:TRUE) could still anchor a child its key signed; every route then refuses
        # that child, whose own thumbprint is not registered.
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        # OPTIONAL, not REQUIRED: registration arrives without a client certificate; every other
        # route is authorised in its handler from the verified peer certificate.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        # No TLS 1.3 session tickets: agents never resume a session (aiohttp keeps connections
        # instead), and OpenSSL's two tickets per handshake more than doubled its server-side
        # cost (0.65 ms against 1.35-1.6 ms per mutual-TLS handshake, measured here).
        ctx.num_tickets = 0
        return ctx

    def _with_identity(self, ctx: ssl.SSLContext) -> ssl.SSLContext:
        ctx.load_cert_chain(*identity_paths(self._identity_folder))
        return ctx
