"""Resolve a request's session: find its token, validate it, and say who it is.

The result, :class:`Session`, is what the handler needs to decide and to forward: the
identity (or why there is none), the token to send upstream, and the headers to add to the
response (cookies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.audit import AuditLog, token_fp
from gateway.settings import Settings
from gateway.tokens import FoundToken, MalformedToken, find_token
from gateway.types import Headers
from gateway.validation import Identity, Validator


@dataclass(slots=True)
class RequestInfo:
    """The audit stream's common fields for one request."""

    request_id: str
    client_ip: str
    method: str
    path: str

    def fields(self) -> dict[str, str]:
        return {"request_id": self.request_id, "client_ip": self.client_ip,
                "method": self.method, "path": self.path}


@dataclass(slots=True)
class Session:
    identity: Identity | None = None
    token: str | None = None  # the valid token to forward as Authorization
    token_fp: str | None = None
    reason: str = "no_token"  # why there is no identity: no_token, malformed_token, invalid_token
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    upstream_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


class Sessions:
    def __init__(self, settings: Settings, validator: Validator, audit: AuditLog) -> None:
        self._cookies = settings.cookies
        self._validator = validator
        self._audit = audit

    async def resolve(self, headers: Headers, info: RequestInfo) -> Session:
        """Raises :class:`gateway.authclient.BackendUnavailable` when there is no verdict."""
        try:
            found = find_token(headers, self._cookies)
        except MalformedToken:
            return Session(reason="malformed_token")
        if found is None:
            return Session()
        return await self._validate(found, info)

    async def _validate(self, found: FoundToken, info: RequestInfo) -> Session:
        fp = token_fp(found.value)
        result = await self._validator.validate(found)
        identity = result.identity
        self._audit.emit(
            "auth.validated", **info.fields(),
            outcome="valid" if identity else "invalid",
            cache=result.cache, token_fp=fp,
            user_id=identity.user_id if identity else None,
            token_type=identity.token_type if identity else None,
            source=found.source, check="local" if result.local else "backend",
        )
        if identity is None:
            return Session(token_fp=fp, reason="invalid_token")
        return Session(identity=identity, token=found.value, token_fp=fp, reason="")
