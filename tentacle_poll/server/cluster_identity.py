"""One server certificate for every node of a cluster: agents pin one thumbprint.

The current certificate and, during a rotation, the prepared next one are kept in the store,
key and certificate sealed with the master key (every node has the same). A node starting takes
the cluster's (the first node to start stores its own); a rotation step made through any node
(prepare, activate, cancel) is stored, and the other nodes take it when told (a NOTIFY), so all
present and announce the same certificates.
"""

from __future__ import annotations

import json
from pathlib import Path

from loguru import logger

from tentacle_poll.exceptions import ConfigurationError
from tentacle_poll.server.identity import ServerHome
from tentacle_poll.server.vault import SealedValueError, Vault
from tentacle_poll.store.base import ClusterStore
from tentacle_poll.tls import Identity, load_identity, save_identity
from tentacle_poll.tls.files import CERT_FILE

CURRENT = "server identity"
NEXT = "server identity next"


async def join_identity(home: ServerHome, vault: Vault, store: ClusterStore) -> None:
    """At start: the cluster's certificates become this node's (its own, if it is the first)."""
    await store.cluster_secret(CURRENT, _sealed(vault, CURRENT, home.identity_folder))
    await adopt_identity(home, vault, store)


async def publish_identity(home: ServerHome, vault: Vault, store: ClusterStore) -> None:
    """After a rotation step on this node: the cluster's certificates become this node's."""
    await store.set_cluster_secret(CURRENT, _sealed(vault, CURRENT, home.identity_folder))
    if (home.next_folder / CERT_FILE).exists():
        await store.set_cluster_secret(NEXT, _sealed(vault, NEXT, home.next_folder))
    else:
        await store.delete_cluster_secret(NEXT)


async def adopt_identity(home: ServerHome, vault: Vault, store: ClusterStore) -> bool:
    """Makes this node's certificates the cluster's; True when anything changed."""
    current = _opened(vault, CURRENT, await store.get_cluster_secret(CURRENT), home)
    assert current is not None  # stored by join_identity at the latest
    upcoming = _opened(vault, NEXT, await store.get_cluster_secret(NEXT), home)
    changed = _keep(home.identity_folder, current)
    if upcoming is None:
        changed |= (home.next_folder / CERT_FILE).exists()
        home.cancel_rotation()
    else:
        changed |= _keep(home.next_folder, upcoming)
    if changed:
        logger.info("this node presents the cluster's server certificate {}", current.thumbprint)
    return changed


def _keep(folder: Path, identity: Identity) -> bool:
    if (folder / CERT_FILE).exists() and load_identity(folder).thumbprint == identity.thumbprint:
        return False
    save_identity(folder, identity)
    return True


def _sealed(vault: Vault, name: str, folder: Path) -> str:
    own = load_identity(folder)
    text = json.dumps({"key": own.key_pem.decode(), "certificate": own.cert_pem.decode()})
    return vault.seal_value(name, text)


def _opened(vault: Vault, name: str, sealed: str | None, home: ServerHome) -> Identity | None:
    if sealed is None:
        return None
    try:
        shared = json.loads(vault.open_value(name, sealed))
    except SealedValueError as exc:
        raise ConfigurationError(
            f"this node cannot open the cluster's server certificate ({exc}): every node needs "
            f"the same master key. Copy master.key from a running node into {home.folder} "
            "(docs/high-availability.md, 'Adding a node')"
        ) from None
    return Identity(key_pem=shared["key"].encode(), cert_pem=shared["certificate"].encode())
