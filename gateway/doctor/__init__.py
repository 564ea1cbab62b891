"""``gateway doctor``: find a backend's token-setup mistakes before users are logged out.

:func:`diagnose` runs every check against the configured backend with a test account and
returns a :class:`Report` (one verdict and fix per check). The live part is
``gateway/doctor/probe.py``, the judgements that need no backend ``gateway/doctor/rules.py``;
``docs/doctor.md`` lists every check with its verdicts and fixes.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from dataclasses import dataclass

from gateway.app import environment_problems
from gateway.audit import AuditLog
from gateway.authclient import AuthClient
from gateway.cookies import CookiePolicy, Kind
from gateway.doctor import rules
from gateway.doctor.probe import AUTO, Probe
from gateway.doctor.report import (
    Check,
    CheckId,
    Report,
    Verdict,
    failed,
    passed,
    skipped,
)
from gateway.settings import Settings, SettingsError
from gateway.tokens import jwt_claims

__all__ = ["Check", "CheckId", "DoctorOptions", "Report", "Verdict", "diagnose"]

ORDER: tuple[CheckId, ...] = (
    "environment", "reachable", "login", "validate", "lifetime", "cookie_lifetime",
    "clock_skew", "cookie_size", "refresh", "rotation", "blacklisting", "logout",
    "cookie_security", "cors", "state", "forward_auth",
)

_LIVE: tuple[CheckId, ...] = ("login", "validate", "refresh", "rotation", "blacklisting", "logout")
_FROM_TOKENS: tuple[CheckId, ...] = ("lifetime", "cookie_lifetime", "clock_skew", "cookie_size")


@dataclass(frozen=True)
class DoctorOptions:
    username: str
    password: str
    login_field: str = AUTO
    public_url: str | None = None
    config_label: str = "gateway.toml"


async def diagnose(settings: Settings, options: DoctorOptions) -> Report:
    client = AuthClient(settings)
    upstream = None
    if settings.upstream.url.rstrip("/") != settings.auth_url:
        upstream = AuthClient(dataclasses.replace(
            settings, auth=dataclasses.replace(settings.auth, url=settings.upstream.url)))
    probe = Probe(settings, client, options.username, options.password, options.login_field)
    await client.start()
    if upstream is not None:
        await upstream.start()
    try:
        if await probe.reachable(upstream):
            await probe.login()
            await probe.validate()
            await probe.refresh()
            await probe.logout()
        else:
            probe.checks.extend(skipped(check_id, "the auth backend is not reachable")
                                for check_id in _LIVE)
    finally:
        await client.close()
        if upstream is not None:
            await upstream.close()
    checks = [*probe.checks, _environment(settings), *_token_checks(settings, probe),
              await _state(settings), rules.forward_auth(settings)]
    url, source = rules.public_url(settings, options.public_url)
    checks += [rules.cookie_security(settings, url, source), rules.cors(settings, url)]
    checks.sort(key=lambda c: ORDER.index(c.id))
    return Report(options.config_label, settings.auth_url, tuple(checks),
                  frozenset(probe.secrets))


def _token_checks(settings: Settings, probe: Probe) -> list[Check]:
    """Lifetimes, clocks and cookie sizes, read from the tokens the test login got."""
    session = probe.session
    if session is None:
        return [skipped(c, "needs a login") for c in _FROM_TOKENS]
    received = session.clock.received_at
    access_life = rules.lifetime_s(jwt_claims(session.access), received)
    refresh_life = (rules.lifetime_s(jwt_claims(session.refresh), received)
                    if session.refresh else None)
    tokens: list[tuple[Kind, str]] = [("access", session.access)]
    if session.refresh:
        tokens.append(("refresh", session.refresh))
    return [
        rules.lifetime(settings, access_life),
        rules.cookie_lifetime(settings, access_life, refresh_life),
        rules.clock_skew(settings, session.clock, access_life),
        rules.cookie_size(CookiePolicy(settings.cookies), tokens),
    ]


def _environment(settings: Settings) -> Check:
    """What ``gateway serve`` would refuse to start without (the state key: see ``state``)."""
    problems = [p for p in environment_problems(settings) if not p.startswith("state.")]
    if problems:
        return failed("environment", "; ".join(problems),
                      "set the variables named (and make the audit sink writable) in the "
                      "environment the gateway runs in")
    return passed("environment", "every variable and file the config names is there")


async def _state(settings: Settings) -> Check:
    crowded = rules.workers(settings)
    if settings.state.backend != "redis":
        return crowded or passed("state", "memory: per-process state, right for one worker")
    try:
        from gateway.state.redis import RedisStore
    except ImportError:
        return failed("state", 'state.backend = "redis" but the redis client is not installed',
                      "pip install 'gateway[redis]'")
    audit = AuditLog(os.devnull)
    try:
        store = RedisStore(settings, audit)
    except SettingsError as exc:
        audit.close()
        return failed("state", "; ".join(exc.problems),
                      f"export {settings.state.key_env}=<at least 32 random bytes>, the same "
                      "value on every replica (e.g. from: openssl rand -base64 48)")
    url = settings.state.redis_url.split("@")[-1]  # never print a password in the URL
    try:
        if not await store.check():
            return failed("state", f"Redis at {url} does not answer PING",
                          "start Redis or fix state.redis_url; the gateway would run on "
                          "per-process state and report /__gateway/ready 503")
        key = b"doctor:" + uuid.uuid4().bytes
        await store.set(key, b"ok", 5.0)
        echoed = await store.get(key)
        await store.delete(key)
    finally:
        await store.close()
        audit.close()
    if echoed != b"ok":
        return failed("state", f"Redis at {url} answers PING but did not keep a value",
                      "check the Redis user's permissions (SET, GET, DEL, EVALSHA)")
    return passed("state", f"Redis at {url} answers and keeps encrypted values with the key "
                  f"from {settings.state.key_env}")
