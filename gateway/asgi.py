"""``gateway.asgi:app``: the gateway built from ``$GATEWAY_CONFIG`` for any ASGI server.

    GATEWAY_CONFIG=gateway.toml uvicorn gateway.asgi:app --no-proxy-headers
"""

from __future__ import annotations

import os

from gateway.app import create_app
from gateway.settings import load_settings

app = create_app(load_settings(os.environ.get("GATEWAY_CONFIG", "gateway.toml")))
