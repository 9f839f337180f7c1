"""Key and self-signed certificate generation, and thumbprints (SHA-256 of the DER form, hex).

Reading certificates needs only the standard ``ssl`` module; ``cryptography`` (about 9 MB of
memory) is imported only to make a new key, so the running agent never loads it. The server,
which reads the expiry of every target's certificate, uses it for that (``_fast``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tentacle_poll.tls.der import not_after_of_der

if TYPE_CHECKING:  # the agent daemon never loads cryptography
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
    from cryptography.x509 import Certificate

DEFAULT_VALIDITY_DAYS = 3650
CLOCK_TOLERANCE = dt.timedelta(days=1)


@dataclass(frozen=True)
class Identity:
    """A private key and its self-signed certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def thumbprint(self) -> str:
        return thumbprint_of_pem(self.cert_pem)


def normalised_thumbprint(text: str) -> str:
    """A SHA-256 thumbprint as this project writes it (64 upper-case hex digits), from the ways
    people paste one: lower case, with colons or spaces (as ``openssl x509 -fingerprint``
    prints it). Raises ValueError with what to do instead."""
    digits = text.strip().replace(":", "").replace(" ", "").upper()
    if len(digits) == 40 and all(c in "0123456789ABCDEF" for c in digits):
        raise ValueError(
            "that is a SHA-1 thumbprint (40 hex digits); tentacle-poll pins SHA-256: run "
            "`tentacle-poll server show-thumbprint` on the server, or `openssl x509 -in cert.pem "
            "-noout -fingerprint -sha256`"
        )
    if len(digits) != 64 or any(c not in "0123456789ABCDEF" for c in digits):
        raise ValueError(
            f"{text.strip()[:80]!r} is not a SHA-256 thumbprint (64 hex digits, colons allowed); "
            "`tentacle-poll server show-thumbprint` prints the server's"
        )
    return digits


def thumbprint_of_der(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest().upper()


def thumbprint_of_pem(pem: bytes) -> str:
    """Raises ValueError when ``pem`` holds no certificate."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.decode(errors="replace").strip())
    except (ValueError, IndexError) as exc:
        raise ValueError("not a PEM certificate") from exc
    return thumbprint_of_der(der)


def certificate_expiry(pem: bytes) -> dt.datetime:
    """With the standard library only (the agent's way; it never loads ``cryptography``)."""
    try:
        der = ssl.PEM_cert_to_DER_cert(pem.decode(errors="replace").strip())
    except (ValueError, IndexError) as exc:
        raise ValueError("not a PEM certificate") from exc
    return not_after_of_der(der)


def certificate_expiry_fast(pem: bytes) -> dt.datetime:
    """With ``cryptography``, for the server, which has it loaded anyway."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem).not_valid_after_utc


EXPIRY_WARNING_DAYS = 30


def expiry_warning(expires: dt.datetime, what: str) -> str | None:
    """A warning when ``expires`` is within EXPIRY_WARNING_DAYS, else None."""
    left = expires - dt.datetime.now(dt.UTC)
    if left > dt.timedelta(days=EXPIRY_WARNING_DAYS):
        return None
    return f"{what} expires on {expires:%Y-%m-%d} ({max(left.days, 0)} days); rotate it"


def generate_identity(common_name: str, days: int = DEFAULT_VALIDITY_DAYS) -> Identity:
    """ECDSA P-256 (key generation well under a millisecond) with a self-signed certificate.

    The subject is unique (CN plus a random serialNumber attribute): OpenSSL finds trust
    anchors by subject, and two agents on one host, or an old and a rotated certificate, must
    never share one. It is not a CA, so its key cannot sign a certificate that chains to it;
    the server trusts it as an exact match (partial-chain verification, ``tls.contexts``).
    It is valid from a day back, so a peer whose clock is behind still accepts it.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, secrets.token_hex(16)),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_TOLERANCE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return identity_of(key, cert)


def identity_of(key: EllipticCurvePrivateKey, cert: Certificate) -> Identity:
    """A key and its certificate as the PEM an identity folder holds."""
    from cryptography.hazmat.primitives import serialization

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Identity(key_pem=key_pem, cert_pem=cert.public_bytes(serialization.Encoding.PEM))
