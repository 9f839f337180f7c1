"""Certificates shaped the way real fleets make them: one subject for many hosts' agents, the
CA certificates earlier versions made, and children signed by an agent's key."""

from __future__ import annotations

import datetime as dt

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tentacle_poll.tls import Identity
from tentacle_poll.tls.certs import identity_of


def identity_with_subject(
    common_name: str,
    *,
    ca: bool,
    issuer: Identity | None = None,
    valid_from: dt.datetime | None = None,
) -> Identity:
    """A certificate whose subject is ``CN=common_name`` alone (not unique, as earlier versions
    and hand-made fleets have it); ``ca`` as earlier versions made them (CA:TRUE, path length
    0); signed by ``issuer``'s key when given, else self-signed; ``valid_from`` as made on a
    machine whose clock is ahead."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    signer, issuer_name = key, name
    if issuer is not None:
        signer = serialization.load_pem_private_key(issuer.key_pem, None)  # type: ignore[assignment]
        issuer_name = x509.load_pem_x509_certificate(issuer.cert_pem).subject
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from or now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .sign(signer, hashes.SHA256())
    )
    return identity_of(key, cert)
