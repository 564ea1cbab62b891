"""``gateway demo`` and the demo app's API over real sockets: the control API is out of the
gateway's reach, the banner, a taken port, the activity log, the session API, the backend's
clock offset."""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import Backend
from tests.helpers.demo import DemoStack, demo_stack
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEMO = {"email": "demo@example.com", "password": "demo-password"}
ADMIN = {"email": "admin@example.com", "password": "admin-password"}
CONTROL_CALLS = [
    ("POST", "/__demo/token", {"user_id": 2}),
    ("POST", "/__demo/config", {"access_ttl_s": 1}),
    ("POST", "/__demo/faults", {"me": {"status": 503}}),
    ("POST", "/__demo/reset", None),
    ("GET", "/__demo/stats", None),
    ("GET", "/__demo/config", None),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoStack]:
    with demo_stack(tmp_path_factory.mktemp("demo")) as running:
        yield running


@contextlib.contextmanager
def _logged_in(url: str, creds: dict[str, str] = DEMO) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10) as client:
        reply = client.post("/auth/login", json=creds)
        assert reply.status_code == 200, reply.text
        yield client


@contextlib.contextmanager
def _gateway_demo(port: int) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``python -m gateway demo --port P`` until it answers; Ctrl-C at the end. Yields the
    process and, once stopped, its output lines."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "demo", "--port", str(port)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[0]
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/__gateway/health",
                             timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "gateway demo did not start"
            time.sleep(0.05)
        yield proc, output
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            text, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
        output.extend(text.splitlines())


def test_gateway_demo_never_reaches_the_control_api() -> None:
    """Issue 11: a logged-in user asking ``POST /__demo/token {"user_id": 2}`` through
    ``gateway demo`` gets no admin token; no control call gets through."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _gateway_demo(port) as (proc, output), _logged_in(url) as client:
        for method, path, body in CONTROL_CALLS:
            reply = client.request(method, path, json=body)
            assert reply.status_code in (403, 404), (path, reply.status_code, reply.text)
            assert "token" not in reply.json(), reply.text
        # The config change above did not happen: tokens still live the demo's 60 s.
        session = client.get("/api/demo/session").json()
        assert round(session["exp"] - session["iat"]) == 60
        # Nor do the probes that would echo the Authorization header to a page script.
        assert client.get("/api/echo").status_code == 404
        assert client.get("/test/headers-out").status_code == 404
    assert proc.returncode == 0, output


def test_gateway_demo_prints_url_accounts_lifetime_and_audit_log() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with _gateway_demo(port) as (proc, output), _logged_in(url) as client:
        client.get("/dashboard", headers={"accept": "text/html"})
    text = "\n".join(output)
    assert proc.returncode == 0, text
    assert f"{url}/" in text
    assert "demo@example.com / demo-password" in text
    assert "admin@example.com / admin-password" in text
    assert "access tokens live 60 s" in text
    found = re.search(r"audit log\s+(\S+audit\.jsonl)", text)
    assert found, text
    # The audit log was where the banner said while it ran, and is removed at the end.
    assert not Path(found.group(1)).exists()
    assert "Traceback" not in text
    assert "eyJ" not in text  # no token in the output


def test_gateway_demo_on_a_taken_port_exits_2_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "gateway", "demo", "--port", str(port)],
                                cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"gateway demo: port {port} is already in use; pick another with --port"]


def test_control_calls_through_the_gateway_do_not_reach_the_control_api(
        stack: DemoStack) -> None:
    """The same over the test stack: the counters, options and faults the control API sees
    are untouched by control calls sent through the gateway."""
    with _logged_in(stack.url) as client:
        client.get("/api/items")
        before = stack.backend.stats()
        for method, path, body in CONTROL_CALLS:
            reply = client.request(method, path, json=body)
            assert reply.status_code in (403, 404), (path, reply.text)
        after = stack.backend.stats()
    assert after["calls"]["items"] == before["calls"]["items"] >= 1  # no reset happened
    assert after["faults"] == {}
    assert httpx.get(stack.backend.control_url + "/__demo/config").json()["access_ttl_s"] == 60


def test_session_api_answers_from_the_forwarded_token(stack: DemoStack) -> None:
    with _logged_in(stack.url) as client:
        token = client.cookies["userToken"]
        reply = client.get("/api/demo/session")
    assert reply.status_code == 200
    claims = jwt.decode(token, options={"verify_signature": False})
    body = reply.json()
    assert body["exp"] == claims["exp"] and body["token_type"] == "access"
    assert body["user"] == {"id": 1, "name": "Dana Demo", "email": "demo@example.com",
                            "roles": ["user"]}
    assert 0 < body["expires_in_s"] <= 60
    assert token not in reply.text
    anonymous = httpx.get(stack.url + "/api/demo/session", headers={"accept": "application/json"})
    assert anonymous.status_code == 401  # the gateway's answer: a user route


def test_activity_log_shows_only_the_users_own_events(stack: DemoStack) -> None:
    with _logged_in(stack.url) as demo, _logged_in(stack.url, ADMIN) as admin:
        demo.get("/api/items")
        admin.get("/api/admin/stats")
        demo_fp = demo.get("/api/demo/session").json()["token_fp"]
        admin_fp = admin.get("/api/demo/session").json()["token_fp"]
        # The gateway writes its audit stream in batches (flush_interval_s): the dashboard
        # polls the log, and so does this test, until both users' requests are in it.
        deadline = time.monotonic() + 15
        while True:
            mine = demo.get("/api/demo/activity").json()
            theirs = admin.get("/api/demo/activity").json()
            # This session's own events (earlier tests' sessions of the same users are in
            # the same log): the ones carrying its token's fingerprint.
            mine_now = {(e["method"], e["path"]) for e in mine["events"]
                        if e.get("token_fp") == demo_fp}
            theirs_now = {(e["method"], e["path"]) for e in theirs["events"]
                          if e.get("token_fp") == admin_fp}
            if ((("GET", "/api/items") in mine_now and ("GET", "/api/admin/stats") in theirs_now)
                    or time.monotonic() > deadline):
                break
            time.sleep(0.1)
    assert mine["audit_log"] is True
    mine_fps = {e.get("token_fp") for e in mine["events"]}
    their_fps = {e.get("token_fp") for e in theirs["events"]}
    assert demo_fp in mine_fps and admin_fp not in mine_fps
    assert admin_fp in their_fps and demo_fp not in their_fps
    assert ("GET", "/api/items") in {(e["method"], e["path"]) for e in mine["events"]}
    assert all(e["path"] != "/api/admin/stats" for e in mine["events"])
    # What the gateway logged, never a token.
    assert "eyJ" not in str(mine) + str(theirs)


def test_admin_page_is_rendered_403_for_a_non_admin(stack: DemoStack) -> None:
    html = {"accept": "text/html"}
    with _logged_in(stack.url) as client:
        page = client.get("/admin", headers=html)
        assert page.status_code == 403
        assert "This page is for admins" in page.text
        api = client.get("/api/admin/stats", headers={"x-requested-with": "fetch"})
        assert api.status_code == 403 and api.json()["error"] == "forbidden"
        assert client.get("/dashboard", headers=html).status_code == 200  # still logged in
    with _logged_in(stack.url, ADMIN) as client:
        assert client.get("/admin", headers=html).status_code == 200


def test_clock_offset_moves_the_backends_clock(backend: Backend) -> None:
    """``clock_offset_s`` (``POST /__demo/config``): tokens and the ``Date`` header follow the
    backend's skewed clock, and its own checks use it too; ``reset`` puts it back."""
    offset = 3600.0
    backend.configure(clock_offset_s=offset)
    try:
        access = backend.login()["accessToken"]
        claims = jwt.decode(access, options={"verify_signature": False})
        assert claims["iat"] == pytest.approx(time.time() + offset, abs=60)
        me = httpx.get(backend.url + "/auth/me", headers={"authorization": f"Bearer {access}"})
        assert me.status_code == 200  # valid by the backend's own clock
        dates = me.headers.get_list("date")
        assert len(dates) == 1
        assert parsedate_to_datetime(dates[0]).timestamp() == pytest.approx(
            time.time() + offset, abs=60)
        # A token that is still valid by the machine's clock is expired by the backend's.
        backend.configure(clock_offset_s=0)
        short = backend.token(ttl_s=600)
        backend.configure(clock_offset_s=offset)
        refused = httpx.get(backend.url + "/auth/me",
                            headers={"authorization": f"Bearer {short}"})
        assert refused.status_code == 401
    finally:
        backend.reset()
    config = httpx.get(backend.control_url + "/__demo/config").json()
    assert config["clock_offset_s"] == 0


def test_control_api_refuses_a_bad_clock_offset(backend: Backend) -> None:
    for bad in ("soon", True, None):
        reply = httpx.post(backend.control_url + "/__demo/config",
                           json={"clock_offset_s": bad})
        assert reply.status_code == 400, bad
        assert "clock_offset_s" in reply.json()["error"]
