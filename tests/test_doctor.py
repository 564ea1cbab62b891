"""``gateway doctor``: its judgements on the exact numbers that log users out, its report
(redaction, exit codes) and its command line (exit 2 on a bad config or missing password)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.cookies import CookiePolicy
from gateway.doctor import _state, rules
from gateway.doctor.report import Check, Report, redact
from gateway.doctor.rules import ClockReading
from gateway.doctor.shape import key_paths, set_cookie_names, set_cookie_value, token_paths
from gateway.settings import Settings, settings_from_mapping
from tests.helpers.doctor import doctor_args, run_doctor, write_config
from tests.redis_server import RedisServer, redis_or_skip

JWT = ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIiwiZXhwIjoxNzAwMDAwMDAwfQ."
       "c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWduYXR1cmU")


def settings(**sections: Any) -> Settings:
    return settings_from_mapping({"upstream": {"url": "http://127.0.0.1:8000"}, **sections})


# ---------------------------------------------------------------------- lifetime


def test_a_60s_token_with_proactive_300_fails() -> None:
    check = rules.lifetime(settings(auth={"refresh": {"proactive_s": 300}}), 60.0)
    assert check.verdict == "fail"
    assert "lives 60 s" in check.detail and "every request refreshes" in check.detail


def test_proactive_window_at_exactly_the_lifetime_fails() -> None:
    s = settings(auth={"refresh": {"proactive_s": 270, "clock_skew_s": 30}})
    assert rules.lifetime(s, 300.0).verdict == "fail"
    assert rules.lifetime(s, 301.0).verdict == "warn"  # refreshes after 1 s of 301


def test_proactive_over_half_the_life_warns_and_suggests_a_fifth() -> None:
    check = rules.lifetime(settings(auth={"refresh": {"proactive_s": 60}}), 120.0)
    assert check.verdict == "warn"
    assert check.fix == "set auth.refresh.proactive_s = 18"  # (120 - 30) / 5


def test_cache_outliving_the_token_warns() -> None:
    check = rules.lifetime(settings(auth={"cache_ttl_s": 60}), 30.0)
    assert check.verdict == "warn" and "cache_ttl_s" in check.fix


def test_sane_lifetime_passes() -> None:
    check = rules.lifetime(settings(auth={"refresh": {"proactive_s": 60}}), 900.0)
    assert check.verdict == "pass"
    assert "refreshed 90 s before exp" in check.detail


def test_opaque_token_with_proactive_warns_without_skips() -> None:
    assert rules.lifetime(settings(auth={"refresh": {"proactive_s": 60}}), None).verdict \
        == "warn"
    assert rules.lifetime(settings(), None).verdict == "skip"


def test_lifetime_is_exp_minus_iat_whatever_the_clock() -> None:
    assert rules.lifetime_s({"iat": 1000, "exp": 1900}, received_at=5000.0) == 900.0
    assert rules.lifetime_s({"exp": 1900}, received_at=1000.0) == 900.0
    assert rules.lifetime_s({"exp": "soon"}, received_at=1000.0) is None
    assert rules.lifetime_s(None, received_at=1000.0) is None


def test_access_cookie_shorter_than_the_token_fails() -> None:
    s = settings(cookies={"access_max_age_s": 3600})
    check = rules.cookie_lifetime(s, 7200.0, None)
    assert check.verdict == "fail" and "access_max_age_s = 3600" in check.detail


def test_cookies_shorter_than_the_refresh_token_warn() -> None:
    s = settings(auth={"refresh": {"send": "refresh_body"}},
                 cookies={"access_max_age_s": 86400, "refresh_max_age_s": 86400})
    check = rules.cookie_lifetime(s, 300.0, 604800.0)
    assert check.verdict == "warn"
    assert "604800" in check.fix
    assert rules.cookie_lifetime(s, 300.0, 86400.0).verdict == "pass"


# ---------------------------------------------------------------------- clocks


def reading(offset_s: float, *, iat: bool = True, date: bool = True) -> ClockReading:
    now = time.time()
    return ClockReading(sent_at=now - 0.01, received_at=now,
                        date_header=formatdate(now + offset_s, usegmt=True) if date else "",
                        iat=now - 0.005 + offset_s if iat else None)


@pytest.mark.parametrize(("offset", "verdict"), [
    (0.0, "pass"), (2.0, "pass"), (-3.0, "pass"), (12.0, "warn"), (-12.0, "warn"),
    (600.0, "fail"), (-600.0, "fail"),
])
def test_clock_skew_verdicts(offset: float, verdict: str) -> None:
    check = rules.clock_skew(settings(), reading(offset), 900.0)
    assert check.verdict == verdict, check


def test_clock_skew_from_the_date_header_alone() -> None:
    check = rules.clock_skew(settings(), reading(600.0, iat=False), None)
    assert check.verdict == "fail" and "from its Date header" in check.detail
    assert rules.clock_skew(settings(), reading(0.0, iat=False), None).verdict == "pass"


def test_a_date_header_from_another_clock_warns() -> None:
    now = time.time()
    r = ClockReading(now - 0.01, now, formatdate(now + 600, usegmt=True), iat=now - 0.005)
    check = rules.clock_skew(settings(), r, 900.0)
    assert check.verdict == "warn" and "a proxy in front of it" in check.detail


def test_a_backend_behind_whose_tokens_look_due_at_birth_fails() -> None:
    """20 s behind is within clock_skew_s, but a 100 s token then looks 80 s long: with
    proactive_s + clock_skew_s = 90 it refreshes on every request."""
    s = settings(auth={"refresh": {"proactive_s": 60}})
    check = rules.clock_skew(s, reading(-20.0), 100.0)
    assert check.verdict == "fail" and "every request refreshes" in check.detail


def test_clocks_in_step_do_not_take_the_blame_for_a_short_token() -> None:
    s = settings(auth={"refresh": {"proactive_s": 300}})
    assert rules.lifetime(s, 60.0).verdict == "fail"
    assert rules.clock_skew(s, reading(0.0), 60.0).verdict == "pass"


def test_no_clock_to_read_skips() -> None:
    assert rules.clock_skew(settings(), None, None).verdict == "skip"
    assert rules.clock_skew(settings(), reading(0, iat=False, date=False), None).verdict \
        == "skip"
    garbage = ClockReading(1.0, 2.0, "not a date")
    assert rules.clock_skew(settings(), garbage, None).verdict == "skip"


# ---------------------------------------------------------------------- cookies


def test_cookie_over_4096_bytes_fails_near_it_warns() -> None:
    policy = CookiePolicy(settings().cookies)
    assert rules.cookie_size(policy, [("access", "a" * 5000)]).verdict == "fail"
    assert rules.cookie_size(policy, [("access", "a" * 3800)]).verdict == "warn"
    ok = rules.cookie_size(policy, [("access", "a" * 1000), ("refresh", "b" * 10)])
    assert ok.verdict == "pass"
    assert "userToken 1010 bytes, refreshToken 23 bytes" in ok.detail  # name=value


@pytest.mark.parametrize(("secure", "url", "verdict"), [
    (True, "http://app.example.test", "fail"),
    (True, "https://app.example.test", "pass"),
    (True, "http://localhost:8080", "pass"),
    (True, "http://127.0.0.1:8080", "pass"),
    (False, "https://app.example.test", "warn"),
    (False, "http://app.example.test", "warn"),
    (False, "http://127.0.0.1:8080", "pass"),
])
def test_secure_against_the_public_url(secure: bool, url: str, verdict: str) -> None:
    s = settings(cookies={"secure": secure})
    assert rules.cookie_security(s, url, "--public-url").verdict == verdict


def test_domain_not_covering_the_host_fails() -> None:
    s = settings(cookies={"domain": "example.com"})
    assert rules.cookie_security(s, "https://app.example.com", "--public-url").verdict == "pass"
    assert rules.cookie_security(s, "https://app.other.test", "--public-url").verdict == "fail"


def test_strict_same_site_warns() -> None:
    s = settings(cookies={"same_site": "strict"})
    check = rules.cookie_security(s, "https://app.example.com", "--public-url")
    assert check.verdict == "warn" and check.fix == 'set cookies.same_site = "lax"'


def test_public_url_sources() -> None:
    assert rules.public_url(settings(), "https://x.test") == ("https://x.test", "--public-url")
    assert rules.public_url(settings(login={"url": "https://sso.test/login"}), None) == (
        "https://sso.test", "login.url")
    assert rules.public_url(settings(server={"port": 9000}), None) == (
        "http://127.0.0.1:9000", "server.host/port")
    assert rules.public_url(settings(server={"host": "0.0.0.0"}), None)[0] is None
    check = rules.cookie_security(settings(), None, "server.host/port")
    assert check.verdict == "skip" and "--public-url" in check.fix


# ---------------------------------------------------------------------- cors, forward auth


def test_cors_verdicts() -> None:
    assert rules.cors(settings(), None).verdict == "skip"
    no_credentials = settings(cors={"allow_origins": ["https://app.example.com"],
                                    "allow_credentials": False})
    assert rules.cors(no_credentials, None).verdict == "fail"
    nobody = settings(cors={"allow_origins": []})
    assert rules.cors(nobody, None).verdict == "warn"
    no_post = settings(cors={"allow_origins": ["https://app.example.com"],
                             "allow_methods": ["GET"]})
    assert rules.cors(no_post, None).verdict == "fail"
    good = settings(cors={"allow_origins": ["https://app.example.com"]})
    assert rules.cors(good, "https://api.example.com").verdict == "pass"
    cross = rules.cors(good, "https://api.other.test")
    assert cross.verdict == "fail" and 'same_site = "none"' in cross.fix
    unexposed = settings(cors={"allow_origins": ["https://app.example.com"],
                               "expose_headers": []})
    assert rules.cors(unexposed, None).verdict == "warn"


def _with_forward_auth(**section: Any) -> Any:
    """Settings with a ``forward_auth`` attribute, whether or not this version has one."""
    return SimpleNamespace(forward_auth=SimpleNamespace(**section))


def test_forward_auth_verdicts() -> None:
    if not hasattr(settings(), "forward_auth"):
        assert rules.forward_auth(settings()).verdict == "skip"
    assert rules.forward_auth(_with_forward_auth(enabled=False)).verdict == "skip"
    assert rules.forward_auth(_with_forward_auth(enabled=True, trusted=())).verdict == "fail"
    assert rules.forward_auth(_with_forward_auth(enabled=True, trusted=("0.0.0.0/0",))
                              ).verdict == "warn"
    assert rules.forward_auth(_with_forward_auth(enabled=True, trusted=("8.8.8.0/24",))
                              ).verdict == "warn"
    assert rules.forward_auth(_with_forward_auth(enabled=True, trusted=("nonsense",))
                              ).verdict == "fail"
    ok = rules.forward_auth(_with_forward_auth(enabled=True, trusted=("127.0.0.1/32", "::1")))
    assert ok.verdict == "pass"


@pytest.mark.skipif(not hasattr(Settings(), "forward_auth"),
                    reason="this version has no [forward_auth] section yet")
def test_forward_auth_from_a_real_config() -> None:
    s = settings(forward_auth={"enabled": True, "trusted": ["10.0.0.0/8"]})
    assert rules.forward_auth(s).verdict == "pass"


def test_memory_state_with_workers_warns() -> None:
    check = rules.workers(settings(server={"workers": 4}))
    assert check is not None and check.verdict == "warn"
    assert rules.workers(settings()) is None


# ---------------------------------------------------------------------- redis state


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = redis_or_skip()
    yield server
    server.close()


async def test_redis_state_answers(redis_server: RedisServer,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCTOR_STATE_KEY", "k" * 40)
    s = settings(state={"backend": "redis", "redis_url": redis_server.url,
                        "key_env": "DOCTOR_STATE_KEY"})
    check = await _state(s)
    assert check.verdict == "pass", check


async def test_redis_state_key_missing_or_redis_down(redis_server: RedisServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCTOR_STATE_KEY", raising=False)
    s = settings(state={"backend": "redis", "redis_url": redis_server.url,
                        "key_env": "DOCTOR_STATE_KEY"})
    missing = await _state(s)
    assert missing.verdict == "fail" and "DOCTOR_STATE_KEY is not set" in missing.detail
    monkeypatch.setenv("DOCTOR_STATE_KEY", "k" * 40)
    down = dataclasses.replace(s, state=dataclasses.replace(
        s.state, redis_url="redis://:secretpw@127.0.0.1:1/0"))
    check = await _state(down)
    assert check.verdict == "fail" and "does not answer PING" in check.detail
    assert "secretpw" not in check.detail


# ---------------------------------------------------------------------- report, shapes


def test_report_redacts_every_secret_and_counts() -> None:
    checks = (Check("login", "pass", f"got {JWT}"), Check("refresh", "fail", "x", "fix it"),
              Check("cors", "skip", "no [cors]"))
    report = Report("g.toml", "http://a", checks, frozenset({JWT, 'pass"word1'}))
    assert report.exit_code == 1
    assert JWT not in report.text() and "[redacted]" in report.text()
    assert JWT not in report.json()
    assert json.loads(report.json())["summary"] == {"pass": 1, "warn": 0, "fail": 1, "skip": 1}
    assert redact('{"p": "pass\\"word1"}', {'pass"word1'}) == '{"p": "[redacted]"}'
    assert redact("13 pass, 0 fail", {"pass"}) == "13 pass, 0 fail"  # too short to be a secret
    assert Report("g", "u", checks[:1] + checks[2:]).exit_code == 0


def test_shapes_name_keys_never_values() -> None:
    body = {"data": {"token": JWT, "user": {"id": 1}}, "ok": True}
    assert key_paths(body) == ["data", "data.token", "data.user", "data.user.id", "ok"]
    assert token_paths(body) == ["data.token"]
    cookies = (f"refreshToken={JWT}; HttpOnly; Path=/", "other=1; Path=/",
               "refreshToken=; Max-Age=0")
    assert set_cookie_names(cookies) == ["refreshToken", "other"]
    assert set_cookie_value(cookies, "refreshToken") == JWT
    assert set_cookie_value(cookies[2:], "refreshToken") is None


# ---------------------------------------------------------------------- command line


def test_bad_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[upstream]\nurl = "http://127.0.0.1:8000"\n[auth.refresh]\nsend = "x"\n')
    result = run_doctor(*doctor_args(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "auth.refresh.send: must be one of access_header, refresh_body, refresh_cookie")


def test_missing_password_variable_exits_2(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"upstream": {"url": "http://127.0.0.1:8000"}})
    result = run_doctor(*doctor_args(path), password=None)
    assert result.returncode == 2
    assert result.stderr.strip() == ("--password-env: environment variable DOCTOR_TEST_PASSWORD "
                                     "is not set (it must hold the test account's password)")
    assert "Traceback" not in result.stderr


def test_unreadable_config_and_bad_flags_exit_2(tmp_path: Path) -> None:
    result = run_doctor(*doctor_args(tmp_path / "absent.toml"))
    assert result.returncode == 2 and "cannot read config file" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    path = write_config(tmp_path, {"upstream": {"url": "http://127.0.0.1:8000"}})
    bad_url = run_doctor(*doctor_args(path, "--public-url", "ftp://x"))
    assert bad_url.returncode == 2 and "--public-url" in bad_url.stderr
    no_user = run_doctor("--config", str(path), "--password-env", "X")
    assert no_user.returncode == 2 and "--username" in no_user.stderr
    assert "Traceback" not in bad_url.stderr + no_user.stderr


def test_password_is_never_a_flag(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"upstream": {"url": "http://127.0.0.1:8000"}})
    result = run_doctor(*doctor_args(path), "--password", "hunter22")
    assert result.returncode == 2
    assert "unrecognized arguments: --password" in result.stderr
