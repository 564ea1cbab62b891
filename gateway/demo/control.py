"""The test-control API (``/__demo/*``): call counters, fault injection, runtime options,
token minting.

It is its own Starlette app sharing the backend's `DemoState`, served on its own listener
(tests/conftest.py's ``Backend`` starts both), never by the app a gateway proxies to: anyone
who can reach the gateway could otherwise mint an admin token with ``POST /__demo/token``.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from typing import Any

import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.demo.endpoint import demo_state, json_object
from gateway.demo.state import ENDPOINT_KEYS, TOKEN_TYPES, DemoState, Fault, user_by_id

#: Options ``POST /__demo/config`` may change at run time (numbers; ``rotate_refresh`` a bool).
_CONFIG_NUMBER_FIELDS = ("access_ttl_s", "refresh_ttl_s", "guest_ttl_s", "clock_offset_s")

def _control_error(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_fault(spec: object) -> Fault:
    if not isinstance(spec, dict):
        raise ValueError("fault must be an object")
    status = spec.get("status", 503)
    count = spec.get("count", 1)
    delay_s = spec.get("delay_s", 0.0)
    if not isinstance(status, int) or isinstance(status, bool):
        raise ValueError("status must be an integer")
    if status != 0 and not 200 <= status <= 599:
        raise ValueError("status must be 0 or between 200 and 599")
    if not isinstance(count, int) or isinstance(count, bool) or count < -1:
        raise ValueError("count must be an integer >= -1")
    if not _is_number(delay_s) or delay_s < 0:
        raise ValueError("delay_s must be a number >= 0")
    return Fault(status=status, remaining=count, delay_s=float(delay_s))


async def demo_stats(request: Request) -> Response:
    return JSONResponse(demo_state(request).stats())


async def demo_reset(request: Request) -> Response:
    state = demo_state(request)
    state.reset()
    return JSONResponse(state.stats())


async def demo_faults(request: Request) -> Response:
    state = demo_state(request)
    if request.method == "POST":
        body = await json_object(request)
        if body is None:
            return _control_error("body must be a JSON object")
        unknown = sorted(set(body) - set(ENDPOINT_KEYS))
        if unknown:
            return _control_error(f"unknown endpoint keys: {', '.join(unknown)}")
        try:
            parsed = {key: _parse_fault(spec) for key, spec in body.items()}
        except ValueError as exc:
            return _control_error(str(exc))
        for key, fault in parsed.items():
            if fault.remaining == 0:
                state.faults.pop(key, None)
            else:
                state.faults[key] = fault
    return JSONResponse({key: fault.describe() for key, fault in state.faults.items()})


async def demo_config(request: Request) -> Response:
    state = demo_state(request)
    if request.method == "POST":
        body = await json_object(request)
        if body is None:
            return _control_error("body must be a JSON object")
        changes: dict[str, Any] = {}
        for key, value in body.items():
            if key in _CONFIG_NUMBER_FIELDS and _is_number(value) and math.isfinite(value):
                changes[key] = float(value)
            elif key == "rotate_refresh" and isinstance(value, bool):
                changes[key] = value
            else:
                return _control_error(f"invalid config entry {key!r}")
        state.options = dataclasses.replace(state.options, **changes)
    return JSONResponse(state.config())


async def demo_token(request: Request) -> Response:
    state = demo_state(request)
    body = await json_object(request)
    if body is None:
        return _control_error("body must be a JSON object")
    typ = body.get("typ", "access")
    if typ not in TOKEN_TYPES:
        return _control_error(f"typ must be one of {', '.join(TOKEN_TYPES)}")
    ttl_s = body.get("ttl_s")
    age_s = body.get("age_s", 0.0)
    if (ttl_s is not None and not _is_number(ttl_s)) or not _is_number(age_s):
        return _control_error("ttl_s and age_s must be numbers")
    user_id = body.get("user_id")
    if typ == "guest":
        sub = str(user_id) if user_id is not None else f"guest:{uuid.uuid4()}"
    elif user_id is None or user_by_id(str(user_id)) is None:
        return _control_error("user_id must be a demo user id")
    else:
        sub = str(user_id)
    token = state.issue(sub, typ, None if ttl_s is None else float(ttl_s), float(age_s))
    claims = jwt.decode(token, options={"verify_signature": False})
    return JSONResponse({"token": token, "claims": claims})


def create_control(state: DemoState) -> Starlette:
    """The control API over `state` (``create_backend(...).state.demo``)."""
    app = Starlette(
        routes=[
            Route("/__demo/stats", demo_stats, methods=["GET"]),
            Route("/__demo/reset", demo_reset, methods=["POST"]),
            Route("/__demo/faults", demo_faults, methods=["GET", "POST"]),
            Route("/__demo/config", demo_config, methods=["GET", "POST"]),
            Route("/__demo/token", demo_token, methods=["POST"]),
        ]
    )
    app.state.demo = state
    return app
