"""``gateway doctor`` against the reference backend in each of its styles, and against
deliberately wrong configs: the verdict of each check, the exit code, and that no token or
password reaches the output (text and ``--json``)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any

import pytest

from gateway.demo import BackendOptions, create_backend
from tests.conftest import Backend
from tests.helpers.doctor import (
    PASSWORD,
    assert_no_secrets,
    diagnose_preset,
    doctor_args,
    preset_config,
    run_doctor,
    verdicts_of_json,
    verdicts_of_text,
    write_config,
)
from tests.servers import ServerThread, serving

STYLES = ("next-api-layer", "django-simplejwt", "express")
LIVE = ("reachable", "login", "validate", "lifetime", "cookie_lifetime", "clock_skew",
        "cookie_size", "refresh", "rotation", "blacklisting", "logout")


@pytest.fixture(autouse=True)
def clean_backend(backend: Backend) -> Iterator[None]:
    """Default lifetimes, rotation + blacklisting on, no faults, before and after."""
    backend.reset()
    yield
    backend.reset()


# -------------------------------------------------------------------- each style passes


@pytest.mark.parametrize("preset", STYLES)
def test_each_style_passes_text_and_json(preset: str, backend: Backend, tmp_path: Path) -> None:
    config = write_config(tmp_path, preset_config(preset, backend.url))
    text = run_doctor(*doctor_args(config))
    assert text.returncode == 0, text.stdout + text.stderr
    assert text.stderr == ""
    verdicts = verdicts_of_text(text.stdout)
    for check in LIVE:
        # the django preset keeps cookies 1 day while the backend's refresh token lives 7
        expected = "warn" if (preset, check) == ("django-simplejwt", "cookie_lifetime") \
            else "pass"
        assert verdicts[check] == expected, (check, text.stdout)
    assert_no_secrets(text.stdout)

    as_json = run_doctor(*doctor_args(config, "--json"))
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["exit_code"] == 0
    assert verdicts_of_json(as_json.stdout) == verdicts
    assert all(set(c) == {"id", "verdict", "detail", "fix"} for c in document["checks"])
    assert_no_secrets(as_json.stdout)


@pytest.mark.parametrize("preset", STYLES)
async def test_each_style_in_process_details(preset: str, backend: Backend) -> None:
    before = backend.stats()["blacklisted"]
    report = await diagnose_preset(preset, backend.url)
    checks = {c.id: c for c in report.checks}
    assert report.exit_code == 0, report.text()
    assert "rotation" in checks and checks["rotation"].detail.startswith("on:")
    assert checks["blacklisting"].detail.startswith("on:")
    assert "roles ['user']" in checks["validate"].detail
    assert "900 s" in checks["lifetime"].detail  # the backend's access_ttl_s
    # The doctor held real tokens (and the password) and printed none of them.
    assert len(report.secrets) >= 3 and PASSWORD in report.secrets
    assert_no_secrets(report.text(), report.secrets)
    assert_no_secrets(report.json(), report.secrets)
    # It logged its test session out: the backend revoked something.
    assert backend.stats()["blacklisted"] > before


# -------------------------------------------------------------------- wrong configs


@pytest.mark.parametrize(("key", "check"), [
    ("login", "login"),
    ("refresh", "refresh"),
])
def test_wrong_access_path_names_the_keys_not_the_values(
        key: str, check: str, backend: Backend, tmp_path: Path) -> None:
    config = write_config(tmp_path, preset_config(
        "next-api-layer", backend.url, {"auth": {key: {"access_path": "data.token"}}}))
    result = run_doctor(*doctor_args(config))
    assert result.returncode == 1, result.stdout
    assert verdicts_of_text(result.stdout)[check] == "fail"
    line = next(x for x in result.stdout.splitlines() if x.startswith(f"FAIL  {check} "))
    assert "data.token" in line and "data.accessToken" in line and "data.refreshToken" in line
    assert f'set auth.{key}.access_path = \'data.accessToken\'' in result.stdout
    assert_no_secrets(result.stdout)
    as_json = run_doctor(*doctor_args(config, "--json"))
    assert as_json.returncode == 1
    assert verdicts_of_json(as_json.stdout)[check] == "fail"
    assert_no_secrets(as_json.stdout)


def test_proactive_longer_than_the_token_fails(backend: Backend, tmp_path: Path) -> None:
    backend.configure(access_ttl_s=60)
    config = write_config(tmp_path, preset_config(
        "next-api-layer", backend.url, {"auth": {"refresh": {"proactive_s": 300}}}))
    result = run_doctor(*doctor_args(config, "--json"))
    assert result.returncode == 1, result.stdout
    document = json.loads(result.stdout)
    lifetime = next(c for c in document["checks"] if c["id"] == "lifetime")
    assert lifetime["verdict"] == "fail"
    assert "lives 60 s" in lifetime["detail"] and "every request refreshes" in lifetime["detail"]
    assert "proactive_s below 30" in lifetime["fix"]
    assert_no_secrets(result.stdout)


def test_secure_cookies_over_http_fail(backend: Backend, tmp_path: Path) -> None:
    config = write_config(tmp_path, preset_config(
        "express", backend.url, {"cookies": {"secure": True}}))
    result = run_doctor(*doctor_args(config, "--public-url", "http://app.example.test"))
    assert result.returncode == 1, result.stdout
    assert verdicts_of_text(result.stdout)["cookie_security"] == "fail"
    assert "over plain http, with cookies.secure = true" in result.stdout
    # The same config on https passes; on http://localhost browsers accept Secure cookies.
    for url in ("https://app.example.test", "http://localhost:8080"):
        ok = run_doctor(*doctor_args(config, "--public-url", url))
        assert ok.returncode == 0, ok.stdout
        assert verdicts_of_text(ok.stdout)["cookie_security"] == "pass"


@pytest.mark.parametrize("preset", STYLES)
def test_rotation_and_blacklisting_without_grace_fails(preset: str, backend: Backend,
                                                       tmp_path: Path) -> None:
    backend.configure(rotate_refresh=True)  # rotate, and blacklist the used credential
    config = write_config(tmp_path, preset_config(
        preset, backend.url, {"auth": {"refresh": {"grace_s": 0}}}))
    result = run_doctor(*doctor_args(config))
    assert result.returncode == 1, result.stdout
    verdicts = verdicts_of_text(result.stdout)
    assert verdicts["rotation"] == "pass" and verdicts["blacklisting"] == "fail"
    assert "set auth.refresh.grace_s = 30" in result.stdout
    assert_no_secrets(result.stdout)


async def test_no_rotation_no_blacklisting_needs_no_grace(backend: Backend) -> None:
    backend.configure(rotate_refresh=False)
    report = await diagnose_preset("django-simplejwt", backend.url,
                                   {"auth": {"refresh": {"grace_s": 0}}})
    checks = {c.id: c for c in report.checks}
    assert checks["rotation"].verdict == "pass"
    assert checks["rotation"].detail == "off: the same refresh token came back"
    assert checks["blacklisting"].verdict == "pass"
    assert checks["blacklisting"].detail.startswith("off:")
    assert report.exit_code == 0, report.text()


async def test_unread_rotated_refresh_token_warns(backend: Backend) -> None:
    """SimpleJWT rotates, but refresh_path = "": the gateway would keep the used token."""
    report = await diagnose_preset("django-simplejwt", backend.url,
                                   {"auth": {"refresh": {"refresh_path": ""}}})
    rotation = next(c for c in report.checks if c.id == "rotation")
    assert rotation.verdict == "warn"
    assert rotation.fix == "set auth.refresh.refresh_path = 'refresh'"


@pytest.mark.skipif(not hasattr(BackendOptions(), "clock_offset_s"),
                    reason="the reference backend cannot simulate a skewed clock yet "
                           "(BackendOptions.clock_offset_s)")
def test_skewed_backend_clock_fails(tmp_path: Path) -> None:
    options = BackendOptions(clock_offset_s=600)  # type: ignore[call-arg]
    with serving(create_backend(options)) as skewed:
        config = write_config(tmp_path, preset_config("next-api-layer", skewed.url))
        result = run_doctor(*doctor_args(config))
    assert result.returncode == 1, result.stdout
    assert verdicts_of_text(result.stdout)["clock_skew"] == "fail"
    assert re.search(r"\b(599|600) s ahead of this host's", result.stdout), result.stdout
    assert_no_secrets(result.stdout)


def _date_shifted(app: Any, shift_s: float) -> Any:
    """The app behind a "proxy" whose clock is ``shift_s`` ahead: it rewrites Date."""

    async def shifted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def send_shifted(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"date"]
                date = formatdate(timeval=_now() + shift_s, usegmt=True).encode("ascii")
                message = {**message, "headers": [*headers, (b"date", date)]}
            await send(message)

        await app(scope, receive, send_shifted)

    return shifted


def _now() -> float:
    import time

    return time.time()


async def test_date_header_from_another_clock_warns() -> None:
    """Tokens (iat) in step, but the Date header 10 minutes off: a proxy with another clock."""
    server = ServerThread(_date_shifted(create_backend(BackendOptions()), 600),
                          date_header=False).start()
    try:
        report = await diagnose_preset("next-api-layer", server.url)
    finally:
        server.stop()
    skew = next(c for c in report.checks if c.id == "clock_skew")
    assert skew.verdict == "warn", report.text()
    # 1 s resolution, less the round trip (long on a loaded machine): about +600 s
    assert re.search(r"Date header says \+(59\d|600) s", skew.detail), skew.detail


# -------------------------------------------------------------------- other failures


def test_wrong_password_fails_without_printing_it(backend: Backend, tmp_path: Path) -> None:
    config = write_config(tmp_path, preset_config("next-api-layer", backend.url))
    result = run_doctor(*doctor_args(config), password="not-the-password")
    assert result.returncode == 1
    verdicts = verdicts_of_text(result.stdout)
    assert verdicts["login"] == "fail" and verdicts["refresh"] == "skip"
    assert "answered 401: the test account was refused" in result.stdout
    assert "not-the-password" not in result.stdout + result.stderr


def test_unreachable_backend_fails_and_skips_the_rest(tmp_path: Path) -> None:
    with serving(create_backend()) as gone:
        url = gone.url
    config = write_config(tmp_path, preset_config(
        "next-api-layer", url, {"auth": {"retries": 0}}))
    result = run_doctor(*doctor_args(config))
    assert result.returncode == 1
    verdicts = verdicts_of_text(result.stdout)
    assert verdicts["reachable"] == "fail"
    assert all(verdicts[c] == "skip" for c in ("login", "validate", "refresh", "logout"))


async def test_no_login_path_says_how_to_set_it(backend: Backend) -> None:
    report = await diagnose_preset("next-api-layer", backend.url, {"auth": {"login": {"path": ""}}})
    login = next(c for c in report.checks if c.id == "login")
    assert login.verdict == "fail" and "auth.login.path is empty" in login.detail
    assert '"/auth/jwt/create/" (SimpleJWT)' in login.fix
    assert report.exit_code == 1


async def test_wrong_scheme_suggests_the_one_that_works(backend: Backend) -> None:
    report = await diagnose_preset("django-simplejwt", backend.url, {"auth": {"scheme": "Bearer"}})
    validate = next(c for c in report.checks if c.id == "validate")
    assert validate.verdict == "fail"
    assert validate.fix == "set auth.scheme = 'JWT'"


async def test_wrong_user_path_names_the_objects(backend: Backend) -> None:
    report = await diagnose_preset("next-api-layer", backend.url,
                                   {"auth": {"validate": {"user_path": "user"}}})
    validate = next(c for c in report.checks if c.id == "validate")
    assert validate.verdict == "fail"
    assert "the reply has keys: success, data, data.id" in validate.detail
    assert validate.fix == "set auth.validate.user_path = 'data'"


async def test_login_field_username_for_simplejwt(backend: Backend) -> None:
    report = await diagnose_preset("django-simplejwt", backend.url, username="demo",
                                   login_field="username")
    login = next(c for c in report.checks if c.id == "login")
    assert login.verdict == "pass" and "JSON keys password, username" in login.detail


async def test_short_access_cookie_fails(backend: Backend) -> None:
    """"Logged out after an hour": the browser drops a 1-hour access cookie."""
    backend.configure(access_ttl_s=7200)
    report = await diagnose_preset("next-api-layer", backend.url,
                                   {"cookies": {"access_max_age_s": 3600}})
    check = next(c for c in report.checks if c.id == "cookie_lifetime")
    assert check.verdict == "fail" and "access_max_age_s = 3600" in check.detail


async def test_refresh_cookie_under_another_name_is_named(backend: Backend) -> None:
    """Express sets "refreshToken"; a config that expects "rt" is told the real name, and the
    checks that need only the access token still run."""
    report = await diagnose_preset("express", backend.url, {"cookies": {"refresh": "rt"}})
    checks = {c.id: c for c in report.checks}
    assert checks["login"].verdict == "fail"
    assert "cookies set: refreshToken" in checks["login"].detail
    assert checks["login"].fix.startswith("set cookies.refresh = 'refreshToken'")
    assert checks["validate"].verdict == "pass" and checks["lifetime"].verdict == "pass"
    assert checks["refresh"].verdict == "skip" and checks["blacklisting"].verdict == "skip"
    assert_no_secrets(report.text(), report.secrets)


async def test_wrong_id_field_names_the_user_keys(backend: Backend) -> None:
    report = await diagnose_preset("next-api-layer", backend.url,
                                   {"auth": {"validate": {"id_field": "uid"}}})
    validate = next(c for c in report.checks if c.id == "validate")
    assert validate.verdict == "fail"
    assert "no id at id_field = 'uid'; its keys: id, email, username, roles, type" \
        in validate.detail


async def test_roles_not_found_while_routes_need_them_warns(backend: Backend) -> None:
    report = await diagnose_preset("next-api-layer", backend.url,
                                   {"auth": {"validate": {"roles_field": "groups"}}})
    validate = next(c for c in report.checks if c.id == "validate")
    assert validate.verdict == "warn" and "no roles at roles_field = 'groups'" in validate.detail
    assert report.exit_code == 0


async def test_upstream_down_while_auth_answers_fails(backend: Backend) -> None:
    with serving(create_backend()) as gone:
        dead = gone.url
    report = await diagnose_preset("next-api-layer", dead, {"auth": {"url": backend.url}})
    reachable = next(c for c in report.checks if c.id == "reachable")
    assert reachable.verdict == "fail" and f"upstream {dead} does not answer" in reachable.detail
    assert next(c for c in report.checks if c.id == "login").verdict == "pass"


async def test_logout_that_does_not_revoke_warns(backend: Backend) -> None:
    """An endpoint that answers 200 to anything is no revocation: the credential still works."""
    report = await diagnose_preset("next-api-layer", backend.url,
                                   {"auth": {"logout": {"backend_path": "/api/echo"}}})
    logout = next(c for c in report.checks if c.id == "logout")
    assert logout.verdict == "warn" and "still works afterwards" in logout.detail
    wrong = await diagnose_preset("next-api-layer", backend.url,
                                  {"auth": {"logout": {"backend_path": "/api/public/hello"}}})
    logout = next(c for c in wrong.checks if c.id == "logout")
    assert logout.verdict == "warn" and "answered 405" in logout.detail
    assert wrong.exit_code == 0
