"""The one exception tree of tentacle_poll.

    TentaclePollError
    ├── ConfigurationError          bad or missing settings; says which command fixes it
    │   └── AgentUnregistered       a server has refused this agent's certificate for long
    ├── CertificateError            key/certificate missing, unreadable or unsafe on disk
    ├── ProtocolError               a body or envelope that does not match the wire models
    │   └── UnsupportedTaskError    a well-formed envelope of a kind this agent cannot run
    ├── CommunicationError          the other side could not be reached or answered badly
    │   ├── ServerUnavailable       connection refused/reset, timeout, 5xx: retry with backoff
    │   │   ├── CertificateRejected the server's TLS alert refused our client certificate
    │   │   ├── ConnectionCut       reset or closed before the answer (server, proxy, firewall)
    │   │   └── ProxyRefused        the HTTP proxy is unreachable or refused the tunnel
    │   ├── ServerIdentityMismatch  the server's thumbprint is not the pinned one: no byte sent
    │   └── RequestRejected         a 4xx with a problem body: retrying will not help
    │       └── LeaseLost           409 on accept: the task went to someone else
    ├── TaskExecutionError          a worker could not start or supervise a task
    ├── StoreError                  persistence failed or was asked something impossible
    ├── StorageFull                 the disk under the store is full: retry once space is freed
    └── StoreUnavailable            the database cannot be reached now: retry shortly

Foreign exceptions (aiohttp, pydantic, OSError, ssl) are translated at one boundary per part
with ``raise ... from exc``: ``agent/connections/causes.py`` for the agent's HTTP client,
``protocol/codec.py`` for decoding, ``tls/files.py`` for certificate files.
Library code raises; only ``cli.py`` prints and exits.
"""

from __future__ import annotations


class TentaclePollError(Exception):
    """Base of every error tentacle_poll raises on purpose."""


class ConfigurationError(TentaclePollError):
    """Settings are missing or invalid; the message says what to run or change."""


class AgentUnregistered(ConfigurationError):
    """A server has refused this agent's certificate for ``unregistered_give_up_seconds``: its
    target was deleted there (or the server lost it). Retrying cannot help; registering can."""


class CertificateError(TentaclePollError):
    """A key or certificate is missing, unreadable or unsafely stored."""


class ProtocolError(TentaclePollError):
    """A message does not match the v1 wire models."""


class UnsupportedTaskError(ProtocolError):
    """The envelope is well-formed but names a task kind or syntax this agent cannot run."""


class CommunicationError(TentaclePollError):
    """The other side could not be reached or gave an unusable answer."""


class ServerUnavailable(CommunicationError):
    """A transient failure: connection refused or dropped, timeout, or a 5xx answer.

    ``refused``: nothing listened on the server's port (it is restarting, or stopped).
    """

    def __init__(
        self, message: str, retry_after: float | None = None, *, refused: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.refused = refused


class CertificateRejected(ServerUnavailable):
    """The server's TLS alert said it does not take our certificate."""


class ConnectionCut(ServerUnavailable):
    """The connection was reset or closed before the answer: by the server (restarting), a
    proxy or a firewall; nothing says which, so nothing is blamed."""


class ProxyRefused(ServerUnavailable):
    """The HTTP proxy could not be reached or answered the CONNECT with an error status."""


class ServerIdentityMismatch(CommunicationError):
    """The server presented a certificate whose thumbprint is not the pinned one."""

    def __init__(self, message: str, actual_thumbprint: str = "") -> None:
        super().__init__(message)
        self.actual_thumbprint = actual_thumbprint


class RequestRejected(CommunicationError):
    """The server answered 4xx with a problem body; the request itself is wrong."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(f"{title} (HTTP {status}): {detail}")
        self.status = status
        self.title = title
        self.detail = detail


class LeaseLost(RequestRejected):
    """The server no longer holds this task's lease for us; it must not run."""


class TaskExecutionError(TentaclePollError):
    """A worker could not start or supervise a task."""


class StoreError(TentaclePollError):
    """The store failed or was asked something impossible."""


class StorageFull(TentaclePollError):
    """A write failed for want of disk space (the database's or the output files'). Not a
    StoreError: callers that turn a StoreError into a 409 must not see a full disk as one."""


class StoreUnavailable(TentaclePollError):
    """The database server cannot be reached or is shutting down; answered like StorageFull
    (503 + Retry-After, reported in health) since a retry will succeed once it is back."""
