"""What the TLS of both sides offers: TLS 1.3, and TLS 1.2 with ECDHE and AEAD suites only,
over the groups X25519 and P-256 (Mozilla's "intermediate" profile, less what no agent needs).

Python 3.11 can set one group (``set_ecdh_curve``), not a list; the list is set through
OpenSSL's ``SSL_CTX_set1_groups_list`` on the context's ``SSL_CTX``. Where that is not possible
the context keeps P-256 alone: still within the policy, but TLS 1.3 clients that lead with an
X25519 key share then need one more round trip (a HelloRetryRequest).
"""

from __future__ import annotations

import ctypes
import ssl

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
GROUPS = b"X25519:P-256"
FALLBACK_GROUP = "prime256v1"
_SSL_CTRL_SET_GROUPS_LIST = 92  # SSL_CTX_set1_groups_list is this SSL_CTX_ctrl call (ssl.h)


def apply_policy(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)  # TLS 1.3's own suites are all AEAD already
    if not _set_groups(ctx, GROUPS):
        ctx.set_ecdh_curve(FALLBACK_GROUP)
    return ctx


def _set_groups(ctx: ssl.SSLContext, groups: bytes) -> bool:
    try:
        libssl = ctypes.CDLL(ssl._ssl.__file__)  # type: ignore[attr-defined]
        control = libssl.SSL_CTX_ctrl
    except (OSError, AttributeError):
        return False
    control.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    control.restype = ctypes.c_long
    # CPython's SSLContext object is PyObject_HEAD followed by its SSL_CTX pointer.
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    return bool(pointer) and control(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, groups) == 1
