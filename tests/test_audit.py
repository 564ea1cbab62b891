"""Unit tests for gateway.audit: one JSON object per line, UTC timestamps, token
fingerprints, and the redaction that keeps secrets out of the stream (docs/audit.md)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.audit import REDACTED, AuditLog, token_fp
from tests.helpers.audit import emit_from_threads, read_events

JWT = jwt.encode({"sub": "1", "exp": 4102444800}, "s" * 32, algorithm="HS256")
OPAQUE = "opaque0123456789abcdefOPAQUE"  # long enough to count as a bearer secret


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[tuple[AuditLog, Path]]:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    yield log, path
    log.close()


def emit_one(sink: tuple[AuditLog, Path], event: str = "auth.test", **fields: Any
             ) -> dict[str, Any]:
    log, path = sink
    log.emit(event, **fields)
    return read_events(path)[-1]


# --------------------------------------------------------------------------
# Format
# --------------------------------------------------------------------------


def test_one_json_object_per_line(sink: tuple[AuditLog, Path]) -> None:
    log, path = sink
    log.emit("auth.validated", request_id="r1", client_ip="127.0.0.1", method="GET",
             path="/a", outcome="valid", cache="miss", user_id="1")
    log.emit("auth.denied", request_id="r2", outcome="unauthenticated", reason="no_token")
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    lines = text.splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert isinstance(first, dict) and isinstance(second, dict)
    assert first["event"] == "auth.validated"
    assert first["request_id"] == "r1" and first["cache"] == "miss" and first["user_id"] == "1"
    assert second["event"] == "auth.denied" and second["reason"] == "no_token"
    assert list(first)[:2] == ["event", "timestamp"]


def test_timestamp_is_iso8601_utc_and_now(sink: tuple[AuditLog, Path]) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    record = emit_one(sink)
    after = datetime.now(UTC) + timedelta(seconds=1)
    stamp = record["timestamp"]
    assert isinstance(stamp, str)
    assert stamp.endswith("Z") or stamp.endswith("+00:00")
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert parsed.utcoffset() == timedelta(0)
    assert before <= parsed <= after


def test_file_sink_appends(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"event": "earlier"}\n', encoding="utf-8")
    log = AuditLog(str(path))
    log.emit("later")
    log.close()
    assert [r["event"] for r in read_events(path)] == ["earlier", "later"]


def test_lines_never_interleave_across_threads(sink: tuple[AuditLog, Path]) -> None:
    log, path = sink

    emit_from_threads(log, threads=4, events=50, detail="x" * 500)
    records = read_events(path)
    assert len(records) == 200
    assert len({r["request_id"] for r in records}) == 200


def test_stdout_sink(capsys: pytest.CaptureFixture[str]) -> None:
    log = AuditLog("stdout")
    log.emit("auth.login", user_id="1", password="hunter2-secret")
    log.close()  # must not close the process's stdout
    out = capsys.readouterr().out
    record = json.loads(out.strip().splitlines()[-1])
    assert record["event"] == "auth.login"
    assert record["password"] == REDACTED
    assert "hunter2-secret" not in out


# --------------------------------------------------------------------------
# token_fp
# --------------------------------------------------------------------------


def test_token_fp_is_first_12_hex_of_sha256() -> None:
    expected = hashlib.sha256(JWT.encode()).hexdigest()[:12]
    assert token_fp(JWT) == expected
    assert token_fp(JWT.encode()) == expected
    assert len(expected) == 12 and all(c in "0123456789abcdef" for c in expected)
    assert token_fp("a") != token_fp("b")


def test_token_fp_survives_redaction(sink: tuple[AuditLog, Path]) -> None:
    record = emit_one(sink, token_fp=token_fp(JWT))
    assert record["token_fp"] == token_fp(JWT)


# --------------------------------------------------------------------------
# Redaction
# --------------------------------------------------------------------------

SECRET_FIELD_NAMES = [
    "token", "Token", "password", "cookie", "Cookie", "cookies", "set_cookie", "authorization",
    "Authorization", "access_token", "accessToken", "refresh_token", "refreshToken",
    "refresh", "access", "secret", "id_token", "guest_token",
]


@pytest.mark.parametrize("name", SECRET_FIELD_NAMES)
def test_secret_field_names_are_redacted(sink: tuple[AuditLog, Path], name: str) -> None:
    record = emit_one(sink, **{name: "plain-value-123"})
    assert record[name] == REDACTED


@pytest.mark.parametrize("name", ["Set-Cookie", "refresh-token", "Access-Token"])
def test_dashed_secret_names_are_redacted_when_nested(sink: tuple[AuditLog, Path], name: str
                                                      ) -> None:
    record = emit_one(sink, headers={name: "plain-value-123"})
    assert record["headers"][name] == REDACTED


def test_ordinary_fields_are_kept(sink: tuple[AuditLog, Path]) -> None:
    record = emit_one(sink, user_id="1", reason="rejected", path="/api/items", count=3,
                      ok=True, nothing=None, cache="hit")
    assert record["user_id"] == "1" and record["reason"] == "rejected"
    assert record["path"] == "/api/items" and record["count"] == 3
    assert record["ok"] is True and record["nothing"] is None and record["cache"] == "hit"


def test_jwt_inside_any_field_is_redacted(sink: tuple[AuditLog, Path]) -> None:
    record = emit_one(sink, detail=f"backend rejected {JWT} because", path=f"/x/{JWT}")
    assert JWT not in json.dumps(record)
    assert record["detail"].startswith("backend rejected ")
    assert REDACTED in record["detail"] and REDACTED in record["path"]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "JWT", "Token"])
def test_scheme_and_long_secret_is_redacted(sink: tuple[AuditLog, Path], scheme: str) -> None:
    record = emit_one(sink, detail=f"header was {scheme} {OPAQUE}")
    assert OPAQUE not in json.dumps(record)
    assert REDACTED in record["detail"]


def test_nested_dicts_and_lists_are_redacted(sink: tuple[AuditLog, Path]) -> None:
    record = emit_one(
        sink,
        request={
            "headers": {"Authorization": f"Bearer {OPAQUE}", "accept": "*/*"},
            "cookies": {"userToken": "abc"},
            "history": [
                {"password": "pw-1", "user": "demo"},
                ["deep", {"refreshToken": "r-1", "note": f"saw {JWT}"}],
                f"Bearer {OPAQUE}",
            ],
        },
        tuples=("ok", JWT),
    )
    text = json.dumps(record)
    for secret in (OPAQUE, JWT, "pw-1", "r-1", "userToken=abc", '"abc"'):
        assert secret not in text
    req = record["request"]
    assert req["headers"]["Authorization"] == REDACTED
    assert req["headers"]["accept"] == "*/*"
    assert req["cookies"] == REDACTED
    assert req["history"][0] == {"password": REDACTED, "user": "demo"}
    assert req["history"][1][0] == "deep"
    assert req["history"][1][1]["refreshToken"] == REDACTED
    assert REDACTED in req["history"][1][1]["note"]
    assert REDACTED in req["history"][2]
    assert record["tuples"][0] == "ok" and record["tuples"][1] == REDACTED


def test_secret_field_holding_a_structure_is_redacted_whole(sink: tuple[AuditLog, Path]
                                                            ) -> None:
    record = emit_one(sink, token={"value": "abc", "nested": [1, 2]})
    assert record["token"] == REDACTED


def test_no_secret_reaches_the_file(sink: tuple[AuditLog, Path]) -> None:
    log, path = sink
    log.emit("auth.login", password="demo-password", token=JWT, access_token=OPAQUE,
             refreshToken="refresh-xyz", cookie="userToken=cookie-val",
             authorization=f"Bearer {OPAQUE}", detail=f"got {JWT}")
    text = path.read_text(encoding="utf-8")
    for secret in ("demo-password", JWT, OPAQUE, "refresh-xyz", "cookie-val"):
        assert secret not in text
