"""Key and self-signed certificate generation, and thumbprints (SHA-256 of the DER form, hex).

Reading certificates needs only the standard ``ssl`` module; ``cryptography`` (about 9 MB of
memory) is imported only to make a new key, so the running agent never loads it. The server,
which reads the expiry of every target's certificate, uses it for that (``_fast``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ssl
from dataclasses import dataclass

DEFAULT_VALIDITY_DAYS = 3650


@dataclass(frozen=True)
class Identity:
    """A private key and its self-signed certificate, both PEM."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def thumbprint(self) -> str:
        return thumbprint_of_pem(self.cert_pem)


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
    """With the standard ``ssl`` module only (the agent's way): about 0.5 ms a certificate."""
    # Our certificates are their own CA, so a context lists them, with notAfter, as CA certs.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=pem.decode())
    not_after = str(context.get_ca_certs()[0]["notAfter"])
    return dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), dt.UTC)


def certificate_expiry_fast(pem: bytes) -> dt.datetime:
    """With ``cryptography``: about 6 µs a certificate, for the server, which reads one per
    target (10,000 targets: 0.06 s, where ``certificate_expiry`` takes 5 s)."""
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

    The certificate is its own CA so that a peer can load it as the only trust anchor and let
    ordinary OpenSSL verification accept exactly this certificate (see shared stack notes).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(common_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return Identity(key_pem=key_pem, cert_pem=cert.public_bytes(serialization.Encoding.PEM))
