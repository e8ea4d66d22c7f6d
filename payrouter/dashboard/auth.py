"""Who may see the dashboard: the operator's bearer token, or a session cookie it was exchanged for.

A browser cannot send an ``Authorization`` header when it navigates, so the page offers a login
form: the token is posted once (never put in a URL, where access logs, history and ``Referer``
headers would keep it) and answered with a session cookie (``HttpOnly``, ``SameSite=Strict``,
``Secure`` over HTTPS, path ``/dashboard``). The cookie is stateless, so it works on every
instance behind a load balancer: ``<expiry>.<HMAC of the expiry under a key derived from the
token>``. It expires after `SESSION_SECONDS`; changing the token ends every session at once.
"""

from __future__ import annotations

import hashlib
import hmac
import time

__all__ = ["COOKIE", "SESSION_SECONDS", "DashboardAuth"]

COOKIE = "payrouter_dashboard"
SESSION_SECONDS = 12 * 3600
_SESSION_KEY_LABEL = b"payrouter dashboard session v1\x00"


def _digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


class DashboardAuth:
    """Checks tokens and issues and checks session cookies for one operator token.

    The token itself is kept only as its SHA-256 digest, so neither ``repr`` nor a traceback of
    this object can show it.
    """

    __slots__ = ("_key", "_token_digest", "session_seconds")

    def __init__(self, token: str, session_seconds: int = SESSION_SECONDS) -> None:
        self._token_digest = _digest(token.encode())
        self._key = _digest(_SESSION_KEY_LABEL + token.encode())
        self.session_seconds = session_seconds

    def __repr__(self) -> str:
        return "DashboardAuth(token=<hidden>)"

    def token_ok(self, presented: str) -> bool:
        """True when ``presented`` is the token (compared in constant time: digests of equal length)."""
        return hmac.compare_digest(_digest(presented.encode()), self._token_digest)

    def bearer_ok(self, authorization: str | None) -> bool:
        """True for an ``Authorization: Bearer <token>`` header value carrying the token."""
        if not authorization:
            return False
        kind, _, value = authorization.partition(" ")
        return kind.lower() == "bearer" and self.token_ok(value.strip())

    def new_session(self, now: float | None = None) -> str:
        """A session cookie value valid for `session_seconds` from ``now``."""
        expires = int(time.time() if now is None else now) + self.session_seconds
        return f"{expires}.{self._sign(expires)}"

    def session_ok(self, value: str | None, now: float | None = None) -> bool:
        """True for a cookie value `new_session` made with this token that has not expired."""
        if not value:
            return False
        expiry, _, signature = value.partition(".")
        if not expiry.isdigit() or len(expiry) > 12:
            return False
        if not hmac.compare_digest(signature.encode(), self._sign(int(expiry)).encode()):
            return False
        return int(expiry) > (time.time() if now is None else now)

    def _sign(self, expires: int) -> str:
        return hmac.new(self._key, str(expires).encode(), hashlib.sha256).hexdigest()
