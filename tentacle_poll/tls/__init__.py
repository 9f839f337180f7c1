"""Certificates, thumbprints and SSL contexts. No policy here: callers decide whom to trust."""

from tentacle_poll.tls.certs import (
    Identity,
    certificate_expiry,
    certificate_expiry_fast,
    expiry_warning,
    generate_identity,
    thumbprint_of_der,
    thumbprint_of_pem,
)
from tentacle_poll.tls.contexts import (
    PinnedServerMismatch,
    TrustedClientCertificates,
    pinned_client_context,
    update_pins,
)
from tentacle_poll.tls.files import load_identity, save_identity

__all__ = [
    "Identity",
    "PinnedServerMismatch",
    "TrustedClientCertificates",
    "certificate_expiry",
    "certificate_expiry_fast",
    "expiry_warning",
    "generate_identity",
    "load_identity",
    "pinned_client_context",
    "save_identity",
    "thumbprint_of_der",
    "thumbprint_of_pem",
    "update_pins",
]
