"""Unit tests for the audit stream's cost savings (gateway.audit): buffered writes that lose
nothing, cache hits counted but not written by default, and the cheap redaction safety net
that still catches every secret the full scan caught."""

from __future__ import annotations

import threading
from pathlib import Path

import jwt

from gateway.audit import REDACTED, AuditLog
from tests.helpers.audit import emit_from_threads, read_events

JWT = jwt.encode({"sub": "1", "exp": 4102444800}, "s" * 32, algorithm="HS256")
OPAQUE = "opaque0123456789abcdefOPAQUE"


def test_buffered_lines_are_written_by_flush_and_close(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path), flush_interval_s=60)  # the timer never fires in this test
    log.emit("auth.denied", request_id="r1", outcome="unauthenticated")
    assert read_events(path) == []  # held in memory: no write per event
    log.flush()
    assert [e["request_id"] for e in read_events(path)] == ["r1"]
    log.emit("auth.denied", request_id="r2", outcome="unauthenticated")
    log.close()
    assert [e["request_id"] for e in read_events(path)] == ["r1", "r2"]


def test_the_timer_writes_buffered_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path), flush_interval_s=0.05)
    try:
        log.emit("auth.login", request_id="r1", outcome="ok")
        finished = threading.Event()
        for _ in range(200):  # up to 10 s on a loaded machine
            if read_events(path):
                finished.set()
                break
            finished.wait(0.05)
        assert [e["request_id"] for e in read_events(path)] == ["r1"]
    finally:
        log.close()


def test_a_full_buffer_is_written_without_waiting_for_the_timer(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path), flush_interval_s=60)
    for i in range(200):
        log.emit("auth.validated", request_id=f"r{i}", detail="x" * 500)
    written = read_events(path)
    assert written  # 200 lines of ~560 bytes passed the 64 KiB bound
    assert [e["request_id"] for e in written] == [f"r{i}" for i in range(len(written))]
    log.close()
    assert len(read_events(path)) == 200


def test_no_line_is_lost_or_split_while_threads_emit_during_flushes(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path), flush_interval_s=0.001)

    emit_from_threads(log, threads=4, events=500, detail="y" * 200)
    log.close()
    records = read_events(path)
    assert len(records) == 2000
    assert len({r["request_id"] for r in records}) == 2000


def test_cache_hits_are_counted_but_not_written_unless_asked(tmp_path: Path) -> None:
    counted: list[tuple[str, str]] = []
    quiet = AuditLog(str(tmp_path / "quiet.jsonl"), on_event=lambda e, o: counted.append((e, o)),
                     log_cache_hits=False)
    loud = AuditLog(str(tmp_path / "loud.jsonl"), log_cache_hits=True)
    for log in (quiet, loud):
        log.emit("auth.validated", request_id="r1", outcome="valid", cache="miss")
        log.emit("auth.validated", request_id="r2", outcome="valid", cache="hit")
        log.emit("auth.validated", request_id="r3", outcome="valid", cache="merged")
        log.emit("auth.denied", request_id="r4", outcome="forbidden", cache="hit")
        log.close()
    assert [e["request_id"] for e in read_events(tmp_path / "quiet.jsonl")] == ["r1", "r3", "r4"]
    assert [e["request_id"] for e in read_events(tmp_path / "loud.jsonl")] == [
        "r1", "r2", "r3", "r4"]
    assert counted == [("auth.validated", "valid")] * 3 + [("auth.denied", "forbidden")]


def test_secrets_in_free_text_are_caught_whatever_the_spacing(tmp_path: Path) -> None:
    """The regular expressions run only on text that could hold a secret: text with
    ``eyJ``, or with whitespace (any Unicode space) and long enough for ``Bearer <secret>``."""
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.emit("auth.test", request_id=JWT, a=f"Bearer\u00a0{OPAQUE}", b=f"token\t{OPAQUE}",
             c=f"x{JWT}y", d=[f"jwt  {OPAQUE}"], e="short id", f="/api/items/42")
    log.close()
    text = path.read_text(encoding="utf-8")
    assert JWT not in text and OPAQUE not in text
    record = read_events(path)[0]
    assert record["request_id"] == REDACTED
    assert record["e"] == "short id" and record["f"] == "/api/items/42"


def test_values_of_other_types_are_rendered_and_scrubbed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path))
    log.emit("auth.test", n=3, x=1.5, ok=False, none=None, obj=Path(f"/tmp/{JWT}"))
    log.close()
    record = read_events(path)[0]
    assert (record["n"], record["x"], record["ok"], record["none"]) == (3, 1.5, False, None)
    assert JWT not in record["obj"] and REDACTED in record["obj"]
