"""Unit tests for gateway.tokens: where a token is found (docs/behaviour.md#tokens), its shape, and
peeking at JWT claims without trusting them."""

from __future__ import annotations

import base64
import contextlib
import gc
import hashlib
import json
import time
from collections.abc import Iterator

import jwt
import pytest

from gateway.settings import CookieSettings
from gateway.tokens import (
    MAX_TOKEN_LENGTH,
    FoundToken,
    MalformedToken,
    claims_exp,
    find_token,
    has_token_header,
    jwt_claims,
    jwt_exp,
    parse_cookies,
    request_cookies,
    token_key,
    token_schemes,
)

COOKIES = CookieSettings()
KEY = "k" * 32  # HS256 test key (long enough not to warn)
HeaderList = list[tuple[bytes, bytes]]


def auth(value: bytes | str) -> tuple[bytes, bytes]:
    return (b"authorization", value.encode("latin-1") if isinstance(value, str) else value)


def cookie(value: bytes | str) -> tuple[bytes, bytes]:
    return (b"cookie", value.encode("latin-1") if isinstance(value, str) else value)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------
# find_token: order and sources
# --------------------------------------------------------------------------


def test_no_credentials_is_none() -> None:
    assert find_token([], COOKIES) is None
    assert find_token([(b"accept", b"*/*"), cookie("other=1; theme=dark")], COOKIES) is None


def test_header_beats_access_cookie_beats_guest_cookie() -> None:
    both_cookies = cookie("guestToken=guest-tok; userToken=user-tok; refreshToken=ref-tok")
    found = find_token([both_cookies, auth("Bearer header-tok")], COOKIES)
    assert found == FoundToken("header-tok", "header")
    assert found.refresh is None  # the refresh cookie goes with the access cookie only

    found = find_token([both_cookies], COOKIES)
    assert found == FoundToken("user-tok", "cookie", "ref-tok")

    found = find_token([cookie("guestToken=guest-tok")], COOKIES)
    assert found == FoundToken("guest-tok", "guest_cookie")


def test_access_cookie_without_refresh_cookie() -> None:
    found = find_token([cookie("userToken=user-tok")], COOKIES)
    assert found == FoundToken("user-tok", "cookie", None)


def test_empty_access_cookie_falls_through_to_guest_cookie() -> None:
    found = find_token([cookie("userToken=; guestToken=guest-tok")], COOKIES)
    assert found == FoundToken("guest-tok", "guest_cookie")


def test_cookies_spread_over_several_headers() -> None:
    found = find_token([cookie("a=1"), cookie("userToken=user-tok"), cookie("refreshToken=r")],
                       COOKIES)
    assert found == FoundToken("user-tok", "cookie", "r")


def test_custom_cookie_names() -> None:
    names = CookieSettings(access="at", refresh="rt", guest="gt")
    headers = [cookie("userToken=ignored; gt=g; at=a; rt=r")]
    assert find_token(headers, names) == FoundToken("a", "cookie", "r")
    assert find_token([cookie("userToken=ignored; gt=g")], names) == FoundToken(
        "g", "guest_cookie")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_is_a_token_scheme(scheme: str) -> None:
    assert find_token([auth(f"{scheme} abc.def-ghi")], COOKIES) == FoundToken(
        "abc.def-ghi", "header")


@pytest.mark.parametrize("scheme", ["JWT", "jwt", "Bearer"])
def test_the_configured_scheme_is_a_token_scheme(scheme: str) -> None:
    found = find_token([auth(f"{scheme} abc.def-ghi")], COOKIES, None, token_schemes("JWT"))
    assert found == FoundToken("abc.def-ghi", "header")


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", "Digest username=x", "Negotiate abc",
                                   "Token abc", "X-Custom abc", "Basic", "!!!", " abc"])
def test_other_schemes_are_not_tokens(value: str) -> None:
    """Not a credential of the gateway's: skipped, and the cookies are looked at instead."""
    assert find_token([auth(value)], COOKIES) is None
    assert find_token([auth(value), cookie("userToken=u")], COOKIES) == FoundToken(
        "u", "cookie")
    assert not has_token_header([auth(value)[1]], token_schemes("Bearer"))


def test_surrounding_whitespace_is_tolerated() -> None:
    assert find_token([auth("  Bearer   tok123  ")], COOKIES) == FoundToken("tok123", "header")


def test_first_authorization_header_wins() -> None:
    found = find_token([auth("Bearer first"), auth("Bearer second")], COOKIES)
    assert found is not None and found.value == "first"


def test_typical_token_shapes_are_accepted() -> None:
    token = jwt.encode({"sub": "1"}, KEY, algorithm="HS256")
    for value in (token, "opaque_Session-id~1", "a+b/c==", "urn:token:1", "x" * MAX_TOKEN_LENGTH):
        found = find_token([auth(f"Bearer {value}")], COOKIES)
        assert found is not None and found.value == value


def test_key_is_sha256_of_the_token() -> None:
    found = FoundToken("tok", "header")
    assert found.key == hashlib.sha256(b"tok").digest() == token_key("tok")
    assert b"tok" not in found.key


# --------------------------------------------------------------------------
# find_token: malformed credentials
# --------------------------------------------------------------------------

MALFORMED_HEADERS: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("blank", b"   "),
    ("scheme only", b"Bearer"),
    ("scheme and spaces", b"Bearer    "),
    ("non-ascii utf-8", "Bearer t\u00f6ken".encode()),
    ("non-ascii latin-1", b"Bearer t\xf6ken"),
    ("too long", b"Bearer " + b"a" * (MAX_TOKEN_LENGTH + 1)),
    ("inner space", b"Bearer abc def"),
    ("tab", b"Bearer abc\tdef"),
    ("nul", b"Bearer abc\x00def"),
    ("newline", b"Bearer abc\ndef"),
    ("del", b"Bearer abc\x7fdef"),
    ("comma", b"Bearer a,b"),
    ("quotes", b'Bearer "abc"'),
    ("semicolon", b"Bearer abc;def"),
]


@pytest.mark.parametrize(("value"), [v for _, v in MALFORMED_HEADERS],
                         ids=[name for name, _ in MALFORMED_HEADERS])
def test_malformed_authorization_raises(value: bytes) -> None:
    with pytest.raises(MalformedToken):
        find_token([auth(value)], COOKIES)


def test_malformed_header_is_not_saved_by_a_good_cookie() -> None:
    # The header is the credential found first; a broken one is reported, not skipped.
    with pytest.raises(MalformedToken):
        find_token([auth("Bearer a b"), cookie("userToken=good")], COOKIES)


@pytest.mark.parametrize("value", ["a b", "a\tb", "x" * (MAX_TOKEN_LENGTH + 1), "a,b", "a\\b"])
def test_malformed_access_cookie_raises(value: str) -> None:
    with pytest.raises(MalformedToken):
        find_token([cookie(f"userToken={value}")], COOKIES)


def test_malformed_guest_cookie_raises() -> None:
    with pytest.raises(MalformedToken):
        find_token([cookie('guestToken="a b"')], COOKIES)


def test_malformed_token_is_a_value_error() -> None:
    assert issubclass(MalformedToken, ValueError)


# --------------------------------------------------------------------------
# Cookie parsing: broken pieces are skipped, not fatal
# --------------------------------------------------------------------------


def test_broken_cookie_pieces_are_skipped() -> None:
    header = b"garbage; =; ; novalue; caf\xc3\xa9=x; k=v\xff; userToken=tok; other=1"
    assert find_token([cookie(header)], COOKIES) == FoundToken("tok", "cookie")
    parsed = parse_cookies(header)
    assert parsed["userToken"] == "tok"
    assert parsed["other"] == "1"
    assert "k" not in parsed and "novalue" not in parsed and "garbage" not in parsed


def test_cookie_values_are_stripped_and_unquoted() -> None:
    assert parse_cookies(b'  userToken = "tok" ;refreshToken=r  ') == {
        "userToken": "tok", "refreshToken": "r"}


def test_first_cookie_occurrence_wins_in_one_header() -> None:
    assert parse_cookies(b"userToken=first; userToken=second")["userToken"] == "first"


def test_a_name_sent_twice_with_different_values_is_a_conflict() -> None:
    """Neither copy is believed: a sibling subdomain can add a second cookie of the same
    name that the browser sends first."""
    for headers in ([cookie("userToken=first"), cookie("userToken=second")],
                    [cookie("userToken=first; a=1; userToken=second")]):
        jar = request_cookies(headers)
        assert "userToken" not in jar
        assert jar.conflicts == frozenset({"userToken"})
        with pytest.raises(MalformedToken):
            find_token(headers, COOKIES)
    with pytest.raises(MalformedToken):
        find_token([cookie("guestToken=g1; guestToken=g2")], COOKIES)
    # A refresh cookie in conflict is simply absent.
    found = find_token([cookie("userToken=u; refreshToken=r1; refreshToken=r2")], COOKIES)
    assert found == FoundToken("u", "cookie", None)


def test_the_same_value_twice_is_no_conflict() -> None:
    jar = request_cookies([cookie("userToken=same; userToken=same")])
    assert jar == {"userToken": "same"} and jar.conflicts == frozenset()
    assert find_token([cookie("userToken=same"), cookie("userToken=same")], COOKIES) == \
        FoundToken("same", "cookie")


def test_value_with_equals_sign() -> None:
    assert parse_cookies(b"userToken=abc==; x=a=b") == {"userToken": "abc==", "x": "a=b"}


def test_empty_refresh_cookie_is_none() -> None:
    found = find_token([cookie("refreshToken=; userToken=u")], COOKIES)
    assert found == FoundToken("u", "cookie", None)


def test_parsed_jar_from_the_caller_is_used() -> None:
    jar = {"userToken": "from-jar", "refreshToken": "r"}
    assert find_token([], COOKIES, jar) == FoundToken("from-jar", "cookie", "r")
    # The Authorization header still comes first.
    assert find_token([auth("Bearer h")], COOKIES, jar) == FoundToken("h", "header")
    with pytest.raises(MalformedToken):
        find_token([], COOKIES, {"guestToken": "a b"})


def test_non_cookie_headers_are_ignored() -> None:
    assert request_cookies([(b"set-cookie", b"userToken=x"), (b"x-cookie", b"a=b")]) == {}


# --------------------------------------------------------------------------
# JWT peeking
# --------------------------------------------------------------------------


def test_jwt_claims_of_a_jwt() -> None:
    exp = int(time.time()) + 60
    token = jwt.encode({"sub": "1", "exp": exp, "typ": "access"}, KEY, algorithm="HS256")
    assert jwt_claims(token) == {"sub": "1", "exp": exp, "typ": "access"}
    assert jwt_exp(token) == float(exp)


def test_jwt_claims_do_not_verify_the_signature() -> None:
    token = jwt.encode({"exp": 123.5}, KEY, algorithm="HS256")
    forged = token.rsplit(".", 1)[0] + ".not-the-signature"
    assert jwt_claims(forged) == {"exp": 123.5}
    assert jwt_exp(forged) == 123.5


def test_unpadded_and_padded_payloads() -> None:
    for claims in ({"a": 1}, {"ab": 1}, {"abc": 1}):  # each padding length
        payload = b64url(json.dumps(claims).encode())
        assert jwt_claims(f"h.{payload}.s") == claims


@pytest.mark.parametrize("token", [
    "opaque-token",
    "a.b",
    "a.b.c.d",
    "h..s",
    "h.!!!!.s",
    f"h.{b64url(b'not json')}.s",
    f"h.{b64url(b'[1, 2]')}.s",
    f"h.{b64url(b'123')}.s",
    f"h.{b64url(b'null')}.s",
    f"h.{b64url(bytes([0xff, 0xfe, 0x00]))}.s",
    "h.%%%.s",
])
def test_jwt_claims_of_non_jwts_is_none(token: str) -> None:
    assert jwt_claims(token) is None
    assert jwt_exp(token) is None


@pytest.mark.parametrize("exp", ["123", None, True, False, [1], {"t": 1}])
def test_jwt_exp_ignores_non_numeric_exp(exp: object) -> None:
    payload = b64url(json.dumps({"exp": exp}).encode())
    assert jwt_exp(f"h.{payload}.s") is None


def test_jwt_exp_missing() -> None:
    payload = b64url(json.dumps({"sub": "x"}).encode())
    assert jwt_claims(f"h.{payload}.s") == {"sub": "x"}
    assert jwt_exp(f"h.{payload}.s") is None


def test_jwt_exp_float() -> None:
    payload = b64url(json.dumps({"exp": 1700000000.25}).encode())
    assert jwt_exp(f"h.{payload}.s") == 1700000000.25


# -- crafted payloads: exp peeking must never raise (it runs before any login) -----------------

@contextlib.contextmanager
def _no_collection_inside() -> Iterator[None]:
    """Deep nesting runs the parser to the recursion limit: a garbage collection that starts
    there would run other objects' finalizers with no stack left, and pytest reports what
    they raise against this test. Collect first, and not during."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("payload", [
    b'{"exp": 1' + b"0" * 400 + b"}",  # int too large for float(): OverflowError
    b'{"exp": -1' + b"0" * 400 + b"}",
    b'{"exp": 1e400}',  # json reads this as inf
    b'{"exp": NaN}',
    b'{"exp": Infinity}',
    b'{"exp": -Infinity}',
    b'{"exp": ' + b"[" * 2500 + b"]" * 2500 + b"}",  # RecursionError inside exp
])
def test_jwt_exp_of_an_unusable_number_is_none(payload: bytes) -> None:
    token = f"h.{b64url(payload)}.s"
    assert len(token) <= MAX_TOKEN_LENGTH  # a client can send every one of these
    with _no_collection_inside():
        assert jwt_exp(token) is None


def test_jwt_claims_of_a_too_deep_payload_is_none() -> None:
    for payload in (b"[" * 3000 + b"]" * 3000, b'{"a":' * 3000 + b"1" + b"}" * 3000):
        with _no_collection_inside():
            assert jwt_claims(f"h.{b64url(payload)}.s") is None


def test_jwt_claims_of_an_integer_too_long_to_parse_is_none() -> None:
    # Python refuses to parse ints of more than 4300 digits (ValueError); still token-sized.
    payload = b'{"exp": 1' + b"0" * 4400 + b"}"
    token = f"h.{b64url(payload)}.s"
    assert len(token) < MAX_TOKEN_LENGTH
    assert jwt_claims(token) is None
    assert jwt_exp(token) is None


@pytest.mark.parametrize(("claims", "expected"), [
    (None, None),
    ({}, None),
    ({"exp": 10**400}, None),
    ({"exp": float("nan")}, None),
    ({"exp": float("inf")}, None),
    ({"exp": True}, None),
    ({"exp": 1700000000}, 1700000000.0),
    ({"exp": -5}, -5.0),
    ({"exp": 1.5}, 1.5),
])
def test_claims_exp(claims: dict[str, object] | None, expected: float | None) -> None:
    assert claims_exp(claims) == expected
