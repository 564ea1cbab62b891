"""Local guest tokens are verified once and then remembered until their ``exp``: a guest's
every request does not re-check the signature, and nothing that failed is remembered."""

from __future__ import annotations

import time

import jwt
import pytest

from gateway import guest as guest_module
from gateway.guest import GuestIssuer
from tests.helpers.guest import SECRET, SECRET_ENV, WRONG_SECRET, make_issuer, make_settings


@pytest.fixture
def issuer(monkeypatch: pytest.MonkeyPatch) -> GuestIssuer:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    return make_issuer(make_settings(mode="local", ttl_s=600))


def _token(secret: str, *, sub: str = "guest:abc", exp_in: float = 600) -> str:
    now = int(time.time())
    return jwt.encode({"sub": sub, "typ": "guest", "iat": now, "exp": now + int(exp_in)},
                      secret, algorithm="HS256")


def test_a_valid_token_is_verified_once(issuer: GuestIssuer,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    token = _token(SECRET)
    first = issuer.validate_local(token)
    assert first is not None and first.user_id == "guest:abc"
    decodes: list[str] = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: decodes.append("x") or real(*a, **k))
    assert issuer.validate_local(token) == first
    assert decodes == []  # remembered: no second signature check


def test_forged_and_expired_tokens_are_never_remembered(issuer: GuestIssuer) -> None:
    assert issuer.validate_local(_token(SECRET)) is not None
    forged = _token(WRONG_SECRET)
    expired = _token(SECRET, sub="guest:old", exp_in=-10)
    for _ in range(2):
        assert issuer.validate_local(forged) is None
        assert issuer.validate_local(expired) is None


def test_a_remembered_token_is_checked_again_after_its_exp(
        issuer: GuestIssuer, monkeypatch: pytest.MonkeyPatch) -> None:
    token = _token(SECRET, exp_in=60)
    assert issuer.validate_local(token) is not None
    decodes: list[str] = []
    real = jwt.decode
    monkeypatch.setattr(jwt, "decode", lambda *a, **k: decodes.append("x") or real(*a, **k))
    later = time.time() + 120  # the gateway's clock past exp (PyJWT keeps its own clock)
    monkeypatch.setattr(guest_module.time, "time", lambda: later)
    issuer.validate_local(token)
    assert decodes == ["x"]  # no longer taken from memory: the signature and exp are checked
