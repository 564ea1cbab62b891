"""The demo app's HTML pages: plain HTML and CSS from ``templates/``, no build step.

Templates hold ``{{name}}`` placeholders; every value that comes from a request is
HTML-escaped before it is placed in a page. The pages learn who the user is from the
``x-auth-*`` headers the gateway sets, never from a token (page scripts cannot read one).

The admin page is a ``user`` route in ``gateway demo``'s config, and this backend renders the
friendly 403 page itself for a user without the ``admin`` role: the gateway answers a role
refusal with 403 JSON (right for scripts, unfriendly for a person), so the page shows that
JSON answer of the gateway for ``/api/admin/stats`` inside a page a person can read.
"""

from __future__ import annotations

import functools
import html
import re
from importlib import resources
from typing import Literal

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.demo.endpoint import demo_state, gateway_user_id, instrumented
from gateway.demo.state import DEMO_USERS, DemoUser, user_by_id

NavItem = Literal["dashboard", "three_tabs", "guest", "admin", ""]
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


@functools.cache
def _template(name: str) -> str:
    return resources.files("gateway.demo").joinpath("templates", name).read_text("utf-8")


def _fill(template: str, values: dict[str, str]) -> str:
    """Replace every ``{{name}}``; the values must already be escaped (KeyError if missing)."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def safe_next(value: str | None, default: str = "/dashboard") -> str:
    """Return `value` if it is a same-origin relative path, else `default`.

    Accepted: starts with exactly one "/" and holds no backslash, control character
    or whitespace (browsers strip tabs/newlines, which could turn "/\\t/x" into "//x").
    """
    if not value or not value.startswith("/") or value.startswith("//"):
        return default
    if any(
        char == "\\" or char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in value
    ):
        return default
    return value


def _account(user: DemoUser | None) -> str:
    if user is None:
        return '<a href="/login">Log in</a>'
    return (
        f'<span id="signed-in">{_esc(user.name)}</span>'
        '<form method="post" action="/auth/logout">'
        '<button class="ghost" id="logout" type="submit">Log out</button></form>'
    )


def _page(title: str, body: str, user: DemoUser | None, here: NavItem = "",
          status_code: int = 200) -> HTMLResponse:
    nav = {f"nav_{item}": ' class="here"' if item == here else ""
           for item in ("dashboard", "three_tabs", "guest", "admin")}
    page = _fill(_template("layout.html"), {
        "title": _esc(title), "css": _template("demo.css"), "body": body,
        "account": _account(user), **nav,
    })
    return HTMLResponse(page, status_code=status_code, headers={"cache-control": "no-store"})


def _user(request: Request) -> DemoUser | None:
    """The signed-in user the gateway forwarded (None for guests and anonymous requests)."""
    user_id = gateway_user_id(request)
    return user_by_id(user_id) if user_id is not None else None


def _roles(user: DemoUser) -> str:
    return "".join(f'<span class="pill">{_esc(role)}</span>' for role in user.roles)


async def home(request: Request) -> Response:
    user = _user(request)
    who = (f"Signed in as <strong>{_esc(user.name)}</strong> ({_esc(user.email)})."
           if user else 'Not signed in. <a href="/login">Log in</a> with a demo account.')
    return _page("Home", _fill(_template("home.html"), {"who": who}), user)


async def login_form(request: Request) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    accounts = "\n".join(
        '<div class="account"><div>'
        f'<strong>{_esc(user.email)}</strong> / <code>{_esc(user.password)}</code><br>'
        f'<span class="muted">{_esc(user.name)}</span> {_roles(user)}</div>'
        f'<button class="secondary" type="button" data-email="{_esc(user.email)}" '
        f'data-password="{_esc(user.password)}">Use</button></div>'
        for user in DEMO_USERS
    )
    body = _fill(_template("login.html"), {"next": _esc(next_path), "accounts": accounts})
    return _page("Log in", body, None)


@instrumented("dashboard")
async def dashboard(request: Request) -> Response:
    user = _user(request)
    shown_id = gateway_user_id(request)
    body = _fill(_template("dashboard.html"), {
        "name": _esc(user.name) if user else "(nobody)",
        "email": _esc(user.email) if user else "",
        "roles": _roles(user) if user else "",
        "user_id": _esc(shown_id) if shown_id is not None else "(none)",
        "session_js": _template("session.js"),
    })
    return _page("Dashboard", body, user, "dashboard")


async def three_tabs(request: Request) -> Response:
    user = _user(request)
    body = _fill(_template("three_tabs.html"), {
        "name": _esc(user.name) if user else "(nobody)",
        "refresh_ok": str(demo_state(request).refresh_ok),
        "session_js": _template("session.js"),
    })
    return _page("Three tabs", body, user, "three_tabs")


async def guest(request: Request) -> Response:
    user = _user(request)
    token_type = request.headers.get("x-auth-token-type") or "anonymous"
    if user is not None:
        who = f"{_esc(user.name)} (a user token satisfies a guest route too)"
    else:
        who = _esc(gateway_user_id(request) or "no token was forwarded")
    body = _fill(_template("guest.html"), {
        "token_type": _esc(token_type), "who": who,
        "pill": "ok" if token_type == "user" else "warn",
    })
    return _page("Guest", body, user, "guest")


async def admin(request: Request) -> Response:
    user = _user(request)
    if user is None or "admin" not in user.roles:
        body = _fill(_template("forbidden.html"), {
            "name": _esc(user.name) if user else "nobody",
            "roles": _roles(user) if user else "(none)",
        })
        return _page("Admins only", body, user, "admin", status_code=403)
    return _page("Admin", _template("admin.html"), user, "admin")


ROUTES: list[BaseRoute] = [
    Route("/", home, methods=["GET"]),
    Route("/login", login_form, methods=["GET"]),
    Route("/dashboard", dashboard, methods=["GET"]),
    Route("/three-tabs", three_tabs, methods=["GET"]),
    Route("/guest", guest, methods=["GET"]),
    Route("/admin", admin, methods=["GET"]),
]
