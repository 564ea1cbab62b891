"""gateway: an ASGI reverse proxy that owns the login session of the app behind it."""

from __future__ import annotations

__version__ = "0.1.0"
