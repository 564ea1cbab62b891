"""Tiny HTML pages served by the demo backend.

Every value that comes from a request is HTML-escaped before it is placed in a page.
"""

from __future__ import annotations

import html

_LAYOUT = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{title} - demo backend</title></head>
<body>
{body}
</body>
</html>
"""

_LOGIN_SCRIPT = """<script>
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const response = await fetch("/auth/login", {
    method: "POST",
    headers: {"content-type": "application/json"},
    credentials: "same-origin",
    body: JSON.stringify({email: form.email.value, password: form.password.value}),
  });
  if (response.ok) {
    window.location.assign(form.dataset.next);
  } else {
    document.getElementById("error").textContent = "Login failed";
  }
});
</script>"""


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


def _page(title: str, body: str) -> str:
    return _LAYOUT.format(title=html.escape(title), body=body)


def home_page() -> str:
    return _page(
        "Home",
        "<h1>Demo backend</h1>\n"
        "<ul>\n"
        '<li><a href="/login">Log in</a></li>\n'
        '<li><a href="/dashboard">Dashboard</a></li>\n'
        '<li><a href="/api/public/hello">Public API</a></li>\n'
        '<li><a href="/api/items">Items</a></li>\n'
        "</ul>",
    )


def login_page(next_path: str) -> str:
    """The login form; `next_path` must already have been checked with `safe_next`."""
    return _page(
        "Log in",
        "<h1>Log in</h1>\n"
        f'<form id="login" method="post" action="/auth/login" '
        f'data-next="{html.escape(next_path, quote=True)}">\n'
        '<label>Email <input name="email" type="email" autocomplete="username"></label>\n'
        '<label>Password <input name="password" type="password" '
        'autocomplete="current-password"></label>\n'
        '<button type="submit">Log in</button>\n'
        "</form>\n"
        '<p id="error" role="alert"></p>\n' + _LOGIN_SCRIPT,
    )


def dashboard_page(user_id: str | None) -> str:
    shown = html.escape(user_id) if user_id is not None else "(none)"
    return _page(
        "Dashboard",
        f'<h1>Dashboard</h1>\n<p>User id: <span id="user-id">{shown}</span></p>',
    )
