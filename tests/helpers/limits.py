"""Gateways served like ``gateway serve`` does, for the limits and framing tests
(docs/limits.md); their raw-socket client is tests/helpers/raw_http.py."""

from __future__ import annotations

import copy
import tomllib
from typing import Any

from gateway.server import HttpKind, uvicorn_options
from gateway.settings import settings_from_mapping
from tests.conftest import MakeGateway, RunningGateway

HTTP_KINDS: tuple[HttpKind, ...] = ("httptools", "h11")


def serve(make_gateway: MakeGateway, toml: str = "", *, http: HttpKind = "httptools",
          upstream: str | None = None) -> RunningGateway:
    """A gateway under uvicorn with the server options ``gateway serve`` derives from the
    same config (the protocol class with its limits, the keep-alive timeout)."""
    data: dict[str, Any] = copy.deepcopy(tomllib.loads(toml))
    data.setdefault("upstream", {}).setdefault("url", upstream or "http://127.0.0.1:1")
    server = settings_from_mapping(data).server
    return make_gateway(toml, upstream=upstream, **uvicorn_options(server, http))
