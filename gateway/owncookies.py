"""The gateway's own cookies (access, refresh, guest) stay between the browser and the gateway.

Toward the upstream they are removed from the ``Cookie`` header: the app gets the session as
``Authorization`` and the ``x-auth-*`` headers, never the refresh token, which an endpoint
that echoes request headers would otherwise hand to page scripts. Exceptions:

* a request to the backend's own refresh, login or logout path keeps the refresh cookie (an
  SPA that still calls its refresh endpoint itself must keep working);
* with ``cookies.forward_access = true`` the access cookie is kept for apps that read it,
  but only when it holds the token being forwarded (an invalid or replaced one is not).

From the upstream, a ``Set-Cookie`` for one of those names is removed from the response: only
the gateway sets its session cookies, or any page of the app could fix a session of its
choosing in the browser. Responses of the backend's own refresh, login and logout paths are
the exception: there the backend is the session's authority (a cookie-mode backend rotates
its refresh cookie there).
"""

from __future__ import annotations

from gateway.settings import Settings
from gateway.types import Headers


def _name(piece: bytes) -> bytes:
    return piece.partition(b"=")[0].strip()


class OwnCookies:
    def __init__(self, settings: Settings) -> None:
        c, auth = settings.cookies, settings.auth
        self._access = c.access.encode("latin-1")
        self._refresh = c.refresh.encode("latin-1")
        self.names = frozenset({self._access, self._refresh, c.guest.encode("latin-1")})
        self._keep_access = c.forward_access
        self._auth_paths = frozenset(p for p in (auth.refresh.path, auth.login.path,
                                                 auth.logout.path, auth.logout.backend_path)
                                     if p)

    def present(self, headers: Headers) -> bool:
        """Whether the request carries any of the gateway's cookies."""
        return any(name == b"cookie" and any(_name(p) in self.names for p in value.split(b";"))
                   for name, value in headers)

    def is_auth_path(self, path: str) -> bool:
        """The backend's own refresh, login or logout path (normalized)."""
        return path in self._auth_paths

    def forwarded_cookie(self, value: bytes, *, path: str, token: str | None,
                         keep_none: bool = False) -> bytes | None:
        """One ``Cookie`` header as the upstream may see it: the gateway's cookies taken out
        (None when nothing is left); ``keep_none`` removes all three whatever the path."""
        if not any(n in value for n in self.names):
            return value
        keep: set[bytes] = set()
        if not keep_none:
            if self.is_auth_path(path):
                keep.add(self._refresh)
            if self._keep_access and token is not None:
                keep.add(self._access)
        token_bytes = token.encode("ascii") if token is not None else b""
        pieces = [p for p in value.split(b";") if not self._dropped(p, keep, token_bytes)]
        if not pieces:
            return None
        return b";".join(pieces).lstrip(b" ")

    def _dropped(self, piece: bytes, keep: set[bytes], token: bytes) -> bool:
        name = _name(piece)
        if name not in self.names:
            return False
        if name not in keep:
            return True
        # A kept access cookie must hold the forwarded token itself.
        return name == self._access and piece.partition(b"=")[2].strip() != token

    def response_filter(self, path: str) -> frozenset[bytes]:
        """The cookie names whose ``Set-Cookie`` is removed from the upstream's response to a
        request for ``path`` (none for the backend's own auth paths)."""
        return frozenset() if self.is_auth_path(path) else self.names


def without_set_cookies(headers: list[tuple[bytes, bytes]], names: frozenset[bytes]
                        ) -> list[tuple[bytes, bytes]]:
    """Drop every ``Set-Cookie`` (names lower-cased already) that sets one of ``names``."""
    if not names:
        return headers
    return [(k, v) for k, v in headers
            if k != b"set-cookie" or _name(v.partition(b";")[0]) not in names]
