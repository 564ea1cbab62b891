"""Guest tokens without sockets (docs/behaviour.md#guests): local signing and validation, the
backend-mode issuance bounds (``guest.max_concurrent``, ``guest.per_client_per_minute``) and
``environment_problems`` / ``create_app`` refusing a missing or short local signing key.

The forging helpers here are shared with ``tests/e2e/test_guest.py``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from typing import Any

import jwt
import pytest

from gateway.app import create_app, environment_problems
from gateway.authclient import AuthReply, BackendUnavailable
from gateway.guest import MIN_SECRET_BYTES, GuestIssuer, GuestLimited, guest_identity
from gateway.settings import SettingsError, settings_from_mapping
from tests.helpers.guest import (
    FORGERS,
    SECRET,
    SECRET_ENV,
    WRONG_SECRET,
    FakeAuthClient,
    guest_claims,
    make_issuer,
    make_settings,
    sign,
)


def backend_issuer(fake: FakeAuthClient, **guest: Any) -> GuestIssuer:
    return make_issuer(make_settings(mode="backend", **guest), fake)


@pytest.fixture
def local_issuer(monkeypatch: pytest.MonkeyPatch) -> GuestIssuer:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return make_issuer(make_settings(mode="local", ttl_s=600))


# --------------------------------------------------------------------------
# local mode: signing
# --------------------------------------------------------------------------


async def test_local_token_is_hs256_guest_jwt(local_issuer: GuestIssuer) -> None:
    guest = await local_issuer.issue("127.0.0.1")
    assert guest.forward_token is False
    assert jwt.get_unverified_header(guest.token)["alg"] == "HS256"
    claims = jwt.decode(guest.token, SECRET, algorithms=["HS256"])
    assert set(claims) == {"sub", "typ", "iat", "exp"}
    assert claims["typ"] == "guest"
    assert claims["sub"].startswith("guest:")
    assert uuid.UUID(claims["sub"].removeprefix("guest:")).version == 4
    assert claims["exp"] - claims["iat"] == 600
    assert abs(claims["iat"] - time.time()) < 5
    identity = guest.identity
    assert identity.user_id == claims["sub"]
    assert identity.token_type == "guest"
    assert identity.roles == ()
    user = json.loads(base64.urlsafe_b64decode(identity.user_b64 + b"=" * 4))
    assert user == {"id": claims["sub"], "type": "guest"}


async def test_local_tokens_are_unique_and_validate(local_issuer: GuestIssuer) -> None:
    guests = [await local_issuer.issue("127.0.0.1") for _ in range(20)]
    assert len({g.token for g in guests}) == 20
    assert len({g.identity.user_id for g in guests}) == 20
    for guest in guests:
        assert local_issuer.validate_local(guest.token) == guest.identity


async def test_local_mode_never_calls_backend_nor_limits(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    fake = FakeAuthClient()
    issuer = make_issuer(make_settings(mode="local", max_concurrent=1, per_client_per_minute=1),
                         fake)
    for _ in range(50):
        await issuer.issue("127.0.0.1")
    assert fake.calls == []


async def test_custom_secret_env_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    monkeypatch.setenv("MY_GUEST_KEY", WRONG_SECRET)
    issuer = make_issuer(make_settings(mode="local", secret_env="MY_GUEST_KEY"))
    guest = await issuer.issue("127.0.0.1")
    assert jwt.decode(guest.token, WRONG_SECRET, algorithms=["HS256"])["typ"] == "guest"


@pytest.mark.parametrize("ttl_s", [0.5, 1.5])
async def test_fractional_ttl_token_is_valid_when_issued(monkeypatch: pytest.MonkeyPatch,
                                                         ttl_s: float) -> None:
    """``guest.ttl_s`` accepts any number > 0, so a token must not be born expired (or cut
    short): exp = iat + ttl_s, not iat + int(ttl_s)."""
    monkeypatch.setenv(SECRET_ENV, SECRET)
    try:
        settings = make_settings(mode="local", ttl_s=ttl_s)
    except SettingsError as exc:  # also a fix: whole seconds only, refused at startup
        assert any(p.startswith("guest.ttl_s") for p in exc.problems)
        return
    issuer = make_issuer(settings)
    guest = await issuer.issue("127.0.0.1")
    claims = jwt.decode(guest.token, SECRET, algorithms=["HS256"],
                        options={"verify_exp": False})
    assert claims["exp"] - claims["iat"] >= ttl_s
    assert issuer.validate_local(guest.token) is not None


# --------------------------------------------------------------------------
# local mode: validation of forged tokens
# --------------------------------------------------------------------------


def test_right_key_guest_token_is_accepted(local_issuer: GuestIssuer) -> None:
    sub = f"guest:{uuid.uuid4()}"
    identity = local_issuer.validate_local(sign(guest_claims(sub)))
    assert identity == guest_identity(sub)


@pytest.mark.parametrize("kind", sorted(FORGERS))
def test_forged_local_token_is_rejected(local_issuer: GuestIssuer, kind: str) -> None:
    assert local_issuer.validate_local(FORGERS[kind](SECRET)) is None


def test_expired_by_one_second_is_rejected(local_issuer: GuestIssuer) -> None:
    now = int(time.time())
    token = sign({"sub": "guest:x", "typ": "guest", "iat": now - 10, "exp": now - 1})
    assert local_issuer.validate_local(token) is None


# --------------------------------------------------------------------------
# environment_problems and create_app
# --------------------------------------------------------------------------


def test_environment_problems_ignores_disabled_and_backend_mode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    disabled = settings_from_mapping({"upstream": {"url": "http://127.0.0.1:9"},
                                      "guest": {"enabled": False, "mode": "local"}})
    assert environment_problems(disabled) == []
    assert environment_problems(make_settings(mode="backend")) == []
    create_app(disabled)  # no key needed
    create_app(make_settings(mode="backend"))


@pytest.mark.parametrize(("value", "state"), [
    (None, "is not set"),
    ("", "is not set"),
    ("x" * (MIN_SECRET_BYTES - 1), f"is shorter than {MIN_SECRET_BYTES} bytes"),
    ("tiny-key-zz", f"is shorter than {MIN_SECRET_BYTES} bytes"),
])
def test_missing_or_short_secret_is_a_startup_error(monkeypatch: pytest.MonkeyPatch,
                                                    value: str | None, state: str) -> None:
    if value is None:
        monkeypatch.delenv(SECRET_ENV, raising=False)
    else:
        monkeypatch.setenv(SECRET_ENV, value)
    settings = make_settings(mode="local")
    problems = environment_problems(settings)
    assert len(problems) == 1
    assert problems[0].startswith("guest.secret_env: ")
    assert SECRET_ENV in problems[0] and state in problems[0]
    with pytest.raises(SettingsError) as caught:
        create_app(settings)
    assert any(p.startswith("guest.secret_env: ") for p in caught.value.problems)
    if value:
        assert value not in str(caught.value)  # the key itself is never echoed


def test_secret_names_the_configured_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTHER_GUEST_KEY", raising=False)
    monkeypatch.setenv(SECRET_ENV, SECRET)  # set, but not the one configured
    problems = environment_problems(make_settings(mode="local", secret_env="OTHER_GUEST_KEY"))
    assert len(problems) == 1
    assert problems[0].startswith("guest.secret_env: ") and "OTHER_GUEST_KEY" in problems[0]


@pytest.mark.parametrize("value", ["k" * MIN_SECRET_BYTES, "é" * (MIN_SECRET_BYTES // 2)])
def test_secret_of_32_bytes_is_enough(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(SECRET_ENV, value)
    settings = make_settings(mode="local")
    assert environment_problems(settings) == []
    create_app(settings)


@pytest.mark.parametrize(("key", "value"), [
    ("max_concurrent", 0), ("per_client_per_minute", 0), ("per_minute", 0), ("ttl_s", 0),
    ("mode", "remote"),
])
def test_guest_settings_are_checked(key: str, value: Any) -> None:
    with pytest.raises(SettingsError) as caught:
        make_settings(**{key: value})
    assert any(p.startswith(f"guest.{key}") for p in caught.value.problems)


def test_username_requires_password_env() -> None:
    with pytest.raises(SettingsError) as caught:
        make_settings(username="svc")
    assert any(p.startswith("guest.password_env") for p in caught.value.problems)


# --------------------------------------------------------------------------
# backend mode: what is asked and what comes back
# --------------------------------------------------------------------------


async def test_backend_issue_posts_to_guest_path() -> None:
    fake = FakeAuthClient()
    guest = await backend_issuer(fake, path="/auth/anon").issue("127.0.0.1")
    assert fake.calls == [{"method": "POST", "path": "/auth/anon", "json_body": None}]
    assert guest.forward_token is True
    assert guest.identity.token_type == "guest"
    assert guest.identity.user_id == jwt.decode(
        guest.token, options={"verify_signature": False})["sub"]


async def test_backend_issue_sends_service_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUEST_PW", "s3cret-pw")
    fake = FakeAuthClient()
    await backend_issuer(fake, username="svc", password_env="GUEST_PW").issue("127.0.0.1")
    assert fake.calls[0]["json_body"] == {"username": "svc", "password": "s3cret-pw"}


@pytest.mark.parametrize(("token", "expected"), [
    (sign({"sub": "guest:abc", "typ": "guest"}, WRONG_SECRET), "guest:abc"),
    (sign({"sub": "42", "typ": "guest"}, WRONG_SECRET), "guest:42"),
])
async def test_backend_token_sub_becomes_guest_id(token: str, expected: str) -> None:
    fake = FakeAuthClient(AuthReply(200, {"data": {"accessToken": token}}))
    guest = await backend_issuer(fake).issue("127.0.0.1")
    assert guest.token == token
    assert guest.identity.user_id == expected


async def test_backend_opaque_token_gets_a_guest_uuid() -> None:
    fake = FakeAuthClient(AuthReply(200, {"data": {"accessToken": "opaque-guest-session"}}))
    guest = await backend_issuer(fake).issue("127.0.0.1")
    assert guest.identity.user_id.startswith("guest:")
    uuid.UUID(guest.identity.user_id.removeprefix("guest:"))


async def test_backend_custom_token_path() -> None:
    fake = FakeAuthClient(AuthReply(200, {"token": "opaque-guest"}))
    guest = await backend_issuer(fake, token_path="token").issue("127.0.0.1")
    assert guest.token == "opaque-guest"


@pytest.mark.parametrize("reply", [
    AuthReply(401, {"success": False, "error": "invalid guest credentials"}),
    AuthReply(200, {"success": True, "data": {}}),
    AuthReply(200, {"success": True, "data": {"accessToken": ""}}),
    AuthReply(200, {"success": True, "data": {"accessToken": 12}}),
    AuthReply(200, None),
])
async def test_backend_without_a_token_is_unavailable(reply: AuthReply) -> None:
    fake = FakeAuthClient(reply)
    issuer = backend_issuer(fake, max_concurrent=1)
    with pytest.raises(BackendUnavailable) as caught:
        await issuer.issue("127.0.0.1")
    assert caught.value.reason == "backend_error"
    # The failed call does not keep its concurrency slot.
    fake.reply = None
    await issuer.issue("127.0.0.1")


# --------------------------------------------------------------------------
# backend mode: the flood bounds
# --------------------------------------------------------------------------


async def test_per_client_limit() -> None:
    fake = FakeAuthClient()
    issuer = backend_issuer(fake, per_client_per_minute=3)
    for _ in range(3):
        await issuer.issue("10.0.0.1")
    for _ in range(5):
        with pytest.raises(GuestLimited) as caught:
            await issuer.issue("10.0.0.1")
        assert 1 <= caught.value.retry_after <= 61
    assert len(fake.calls) == 3
    # Another client has its own budget.
    await issuer.issue("10.0.0.2")
    assert len(fake.calls) == 4


async def test_overall_limit_holds_across_many_clients() -> None:
    fake = FakeAuthClient()
    issuer = backend_issuer(fake, per_client_per_minute=100, per_minute=5)
    for i in range(5):
        await issuer.issue(f"10.0.1.{i}")
    for i in range(5, 20):
        with pytest.raises(GuestLimited) as caught:
            await issuer.issue(f"10.0.1.{i}")
        assert 59 <= caught.value.retry_after <= 61
    assert len(fake.calls) == 5
    issuer._everyone = (time.monotonic() - 61, 5)  # the window started 61 s ago
    await issuer.issue("10.0.1.99")
    assert len(fake.calls) == 6


async def test_per_client_window_resets_after_a_minute() -> None:
    fake = FakeAuthClient()
    issuer = backend_issuer(fake, per_client_per_minute=2)
    await issuer.issue("10.0.0.1")
    await issuer.issue("10.0.0.1")
    with pytest.raises(GuestLimited) as caught:
        await issuer.issue("10.0.0.1")
    assert 59 <= caught.value.retry_after <= 61
    # Pretend the window started 61 s ago.
    issuer._per_client.set("10.0.0.1", (time.monotonic() - 61, 2), 60)
    await issuer.issue("10.0.0.1")
    assert len(fake.calls) == 3


async def test_concurrency_limit_refuses_at_once_without_using_client_budget() -> None:
    fake = FakeAuthClient()
    fake.gate = asyncio.Event()
    issuer = backend_issuer(fake, max_concurrent=2, per_client_per_minute=3)
    held = [asyncio.create_task(issuer.issue(f"10.0.0.{i}")) for i in (1, 2)]
    while fake.in_flight < 2:
        await asyncio.sleep(0)
    for _ in range(10):
        with pytest.raises(GuestLimited) as caught:
            await issuer.issue("10.0.0.9")
        assert caught.value.retry_after == 1
    assert len(fake.calls) == 2
    fake.gate.set()
    await asyncio.gather(*held)
    assert fake.peak == 2
    # The ten refusals did not spend 10.0.0.9's per-minute budget of 3.
    for _ in range(3):
        await issuer.issue("10.0.0.9")
    with pytest.raises(GuestLimited):
        await issuer.issue("10.0.0.9")
    assert len(fake.calls) == 5


async def test_concurrency_slot_released_after_backend_unavailable() -> None:
    fake = FakeAuthClient(error=BackendUnavailable("network", "ConnectionRefusedError"))
    issuer = backend_issuer(fake, max_concurrent=1, per_client_per_minute=100)
    for _ in range(3):
        with pytest.raises(BackendUnavailable):
            await issuer.issue("10.0.0.1")
    fake.error = None
    await issuer.issue("10.0.0.1")
    assert len(fake.calls) == 4


async def test_many_concurrent_issues_respect_both_bounds() -> None:
    fake = FakeAuthClient()
    fake.gate = asyncio.Event()
    issuer = backend_issuer(fake, max_concurrent=4, per_client_per_minute=20)

    async def one() -> str:
        try:
            await issuer.issue("127.0.0.1")
        except GuestLimited:
            return "limited"
        return "issued"

    first = [asyncio.create_task(one()) for _ in range(100)]
    while fake.in_flight < 4:
        await asyncio.sleep(0)
    await asyncio.sleep(0.01)
    assert fake.peak == 4
    fake.gate.set()
    results = await asyncio.gather(*first)
    assert results.count("issued") == 4
    # Without the gate, the per-client budget caps the rest of the minute.
    fake.gate = None
    results += await asyncio.gather(*(one() for _ in range(100)))
    assert results.count("issued") == len(fake.calls) == 20
