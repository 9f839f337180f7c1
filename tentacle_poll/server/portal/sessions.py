"""Portal sessions: an API key is checked once, at sign-in, and exchanged for a random session
id in an HttpOnly, SameSite=Strict cookie (Secure behind TLS). Sessions live in the node's
memory and end after ``portal_session_minutes``, at sign-out, or when the key is revoked.

CSRF: every form carries the session's token; the sign-in form, before there is a session, a
token also set as a cookie (double submit). A form whose token does not match is refused.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

from aiohttp import web

from tentacle_poll.server.portal.security import over_https
from tentacle_poll.store import ApiKeyRecord

SESSION_COOKIE = "tp_session"
SIGN_IN_COOKIE = "tp_sign_in"
PATH = "/portal"


@dataclass
class Session:
    key: ApiKeyRecord
    secret: str  # the API key itself, kept to re-check it is still valid (never sent out)
    csrf: str
    expires_at: float


@dataclass
class Sessions:
    lifetime_seconds: float
    _by_id: dict[str, Session] = field(default_factory=dict)

    def open(self, key: ApiKeyRecord, secret: str) -> tuple[str, Session]:
        self._forget_expired()  # sign-ins are rare: a sweep each keeps memory bounded
        session_id = secrets.token_urlsafe(32)
        session = Session(
            key, secret, secrets.token_urlsafe(32), time.time() + self.lifetime_seconds
        )
        self._by_id[session_id] = session
        return session_id, session

    def find(self, session_id: str | None) -> Session | None:
        session = self._by_id.get(session_id or "")
        if session is not None and session.expires_at <= time.time():
            self.close(session_id)
            return None
        return session

    def close(self, session_id: str | None) -> None:
        self._by_id.pop(session_id or "", None)

    def _forget_expired(self) -> None:
        moment = time.time()
        for session_id in [i for i, s in self._by_id.items() if s.expires_at <= moment]:
            del self._by_id[session_id]

    def __len__(self) -> int:
        return len(self._by_id)

    def expire_all(self) -> None:
        """For tests: every session is past its end now."""
        for session in self._by_id.values():
            session.expires_at = 0.0


def same_token(given: str, expected: str) -> bool:
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())


def set_cookie(response: web.StreamResponse, request: web.Request, name: str, value: str) -> None:
    response.set_cookie(
        name, value, path=PATH, httponly=True, samesite="Strict", secure=over_https(request)
    )
