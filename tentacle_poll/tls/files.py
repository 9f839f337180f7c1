"""Reading and writing an identity (key + certificate) on disk, with safe permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tentacle_poll.exceptions import CertificateError
from tentacle_poll.tls.certs import Identity

KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"


def save_identity(folder: Path, identity: Identity) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    _write_private(folder / KEY_FILE, identity.key_pem)
    _write_whole(folder / CERT_FILE, identity.cert_pem, 0o644)


def load_identity(folder: Path) -> Identity:
    key_path, cert_path = folder / KEY_FILE, folder / CERT_FILE
    if not key_path.exists() or not cert_path.exists():
        raise CertificateError(f"no certificate in {folder}")
    _refuse_readable_by_others(key_path)
    try:
        return Identity(key_pem=key_path.read_bytes(), cert_pem=cert_path.read_bytes())
    except OSError as exc:
        raise CertificateError(f"cannot read {folder}: {exc.strerror}") from exc


def identity_paths(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) paths, in the order ``SSLContext.load_cert_chain`` takes them."""
    return folder / CERT_FILE, folder / KEY_FILE


def _write_private(path: Path, data: bytes) -> None:
    # 0600 from its creation so the key is never readable by others, not even for an instant.
    _write_whole(path, data, 0o600, private=True)


def _write_whole(path: Path, data: bytes, mode: int, private: bool = False) -> None:
    """Written to a temporary file, then renamed over ``path``: a reader (another process, a
    server reloading its certificate) or a crash never sees a half-written file."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        if private:  # O_CREAT's mode is ignored when a leftover temporary file exists
            os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _refuse_readable_by_others(path: Path) -> None:
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise CertificateError(
            f"private key {path} is accessible by group or others (mode {mode & 0o777:o}); "
            f"run `chmod 600 {path}`"
        )
