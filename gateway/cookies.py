"""The cookie policy of ``[cookies]``: the Set-Cookie headers the gateway writes."""

from __future__ import annotations

from typing import Literal

from gateway.settings import CookieSettings

Kind = Literal["access", "refresh", "guest"]


class CookiePolicy:
    def __init__(self, settings: CookieSettings) -> None:
        self.names: dict[Kind, str] = {
            "access": settings.access, "refresh": settings.refresh, "guest": settings.guest}
        self._max_age: dict[Kind, int] = {
            "access": settings.access_max_age_s,
            "refresh": settings.refresh_max_age_s,
            "guest": settings.guest_max_age_s,
        }
        attributes = [f"Path={settings.path}"]
        if settings.domain:
            attributes.append(f"Domain={settings.domain}")
        if settings.secure:
            attributes.append("Secure")
        if settings.http_only:
            attributes.append("HttpOnly")
        attributes.append(f"SameSite={settings.same_site.capitalize()}")
        self._attributes = "; ".join(attributes)

    def set(self, kind: Kind, value: str) -> tuple[bytes, bytes]:
        """``Set-Cookie`` for a token (values are token-shaped: no ``;``, ``,`` or spaces)."""
        header = f"{self.names[kind]}={value}; {self._attributes}; Max-Age={self._max_age[kind]}"
        return (b"set-cookie", header.encode("ascii"))

    def clear(self, kind: Kind) -> tuple[bytes, bytes]:
        """``Set-Cookie`` that removes the cookie: same name, path and domain, ``Max-Age=0``."""
        header = f"{self.names[kind]}=; {self._attributes}; Max-Age=0"
        return (b"set-cookie", header.encode("ascii"))

    def clear_session(self) -> list[tuple[bytes, bytes]]:
        return [self.clear("access"), self.clear("refresh")]

    def clear_all(self) -> list[tuple[bytes, bytes]]:
        return [self.clear("access"), self.clear("refresh"), self.clear("guest")]
