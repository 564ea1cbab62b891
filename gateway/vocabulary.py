"""The words several modules share, as ``Literal`` types, so mypy checks every spelling.

A word lives here when more than one module speaks it and none of them owns it alone: the
settings loader accepts it from the config (gateway/settings.py turns each alias into the
"must be one of ..." check of its key), and the runtime acts on it. Words with one owner stay
with their owner: audit event names in gateway/audit.py, metric labels in gateway/metrics.py.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["RouteAccess", "SendStyle", "SessionReason", "UnauthenticatedAnswer",
           "UnauthenticatedForm"]

# What a route asks of the caller (``[[routes]] access``; docs/configuration.md#routes).
RouteAccess = Literal["public", "guest", "user"]

# How a route answers a request without a usable session (``[[routes]] unauthenticated``):
# ``auto`` redirects browser navigations to the login page and answers 401 to the rest.
UnauthenticatedForm = Literal["auto", "redirect", "401"]

# The answer actually given (gateway/redirects.py decides it for ``auto``).
UnauthenticatedAnswer = Literal["redirect", "401"]

# How a session credential is sent to the backend's refresh and logout endpoints
# (``auth.refresh.send``, ``auth.logout.send``; gateway/authclient.py sends it).
SendStyle = Literal["access_header", "refresh_body", "refresh_cookie"]

# Why a request has no identity (gateway/session.py); "" when it has one. The 401 detail
# and the ``auth.denied`` event's ``reason`` say it (docs/audit.md#authdenied).
SessionReason = Literal["", "no_token", "malformed_token", "invalid_token", "session_expired"]
