"""Sensitive variable values at rest: sealed with AES-256-GCM under the server's master key.

A task's spec is stored with each sensitive value replaced by ``tp-sealed:v1:<key id>:<base64
of nonce + ciphertext>``, bound to the variable's name; it is opened only to build the envelope
that goes to the agent, and the store erases it once the task has ended (``store/redaction``).

The keys live in ``master.key`` in the server home (0600, one ``<id> <base64 key>`` per line, the
last one current). Rotation adds a key and re-seals the values of tasks not yet ended; older
keys stay to open what a server still running on them seals. Without the file, the sealed
values of queued tasks cannot be opened: those tasks fail with that reason; nothing else is lost.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from tentacle_poll.exceptions import ConfigurationError, StoreError

PREFIX = "tp-sealed:v1:"
KEY_FILE = "master.key"
NONCE_BYTES = 12
RESTORE = (
    "restore it from a backup: without it the sensitive values of queued tasks cannot be "
    "opened (docs/security.md, 'The master key')"
)


class SealedValueError(StoreError):
    """A sealed value cannot be opened (its key is gone, or it was altered)."""


class Vault:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, AESGCM] = {}
        self._current = ""
        self._reload_if_changed()

    @classmethod
    def open(cls, folder: Path) -> Vault:
        """The vault of a server home; the first call makes its first key."""
        path = folder / KEY_FILE
        if not path.exists():
            add_key(path)
        return cls(path)

    def _reload_if_changed(self) -> None:
        """Keys rotated by `server master-key rotate` are used without a restart."""
        status = self._path.stat()
        stamp = (status.st_ino, status.st_mtime_ns)
        if stamp != self._stamp:
            keys, self._current = read_keys(self._path)
            self._keys = {key_id: AESGCM(key) for key_id, key in keys.items()}
            self._stamp = stamp

    def seal_spec(self, spec: dict[str, Any]) -> str:
        """The spec as JSON, sensitive values sealed."""
        self._reload_if_changed()
        return json.dumps(_map_sensitive(spec, self._seal), separators=(",", ":"))

    def open_spec(self, spec_json: str) -> dict[str, Any]:
        """The spec with its sensitive values readable (SealedValueError when one is not)."""
        self._reload_if_changed()
        return _map_sensitive(json.loads(spec_json), self._open)

    def seal_value(self, name: str, value: str) -> str:
        self._reload_if_changed()
        return self._seal(name, value)

    def open_value(self, name: str, sealed: str) -> str:
        self._reload_if_changed()
        return self._open(name, sealed)

    def reseal_spec(self, spec_json: str) -> str:
        return self.seal_spec(self.open_spec(spec_json))

    def _seal(self, name: str, value: str) -> str:
        if value.startswith(PREFIX):
            return value
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = self._keys[self._current].encrypt(nonce, value.encode(), name.encode())
        return f"{PREFIX}{self._current}:{base64.b64encode(nonce + sealed).decode()}"

    def _open(self, name: str, value: str) -> str:
        if not value.startswith(PREFIX):
            return value  # stored by an earlier version, before values were sealed
        key_id, _, data = value.removeprefix(PREFIX).partition(":")
        key = self._keys.get(key_id)
        if key is None:
            raise SealedValueError(
                f"the sensitive value {name} was sealed with master key {key_id}, which this "
                "server does not have (was master.key replaced or lost?)"
            )
        raw = base64.b64decode(data)
        try:
            return key.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], name.encode()).decode()
        except InvalidTag as exc:
            raise SealedValueError(f"the sensitive value {name} was altered") from exc


def _map_sensitive(spec: dict[str, Any], change: Any) -> dict[str, Any]:
    variables = spec.get("variables") or []
    changed = [
        {**v, "value": change(v["name"], v["value"])} if v.get("sensitive") else v
        for v in variables
    ]
    return {**spec, "variables": changed} if variables else spec


def read_keys(path: Path) -> tuple[dict[str, bytes], str]:
    keys: dict[str, bytes] = {}
    try:
        lines = path.read_text().split()
        for key_id, encoded in zip(lines[::2], lines[1::2], strict=True):
            keys[key_id] = base64.b64decode(encoded)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"{path} cannot be read ({exc}); {RESTORE}") from exc
    if not keys or any(len(key) != 32 for key in keys.values()):
        raise ConfigurationError(f"{path} holds no valid master key; {RESTORE}")
    return keys, list(keys)[-1]


def add_key(path: Path) -> str:
    """Adds a new current key (made now) to the key file, written atomically at 0600."""
    keys = dict(read_keys(path)[0]) if path.exists() else {}
    key_id = secrets.token_hex(4)
    keys[key_id] = AESGCM.generate_key(bit_length=256)
    text = "".join(f"{k} {base64.b64encode(v).decode()}\n" for k, v in keys.items())
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    return key_id
