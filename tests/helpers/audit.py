"""Reading an audit stream file (JSON lines, docs/audit.md) and writing to one from several
threads, the same way in every test."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from gateway.audit import AuditLog


def read_events(path: Path, name: str | None = None) -> list[dict[str, Any]]:
    """Every event in the file at ``path`` (none while it does not exist), in order; only
    those called ``name`` if given. Every line must be one whole JSON object."""
    if not path.exists():
        return []
    events = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [e for e in events if name is None or e["event"] == name]


def emit_from_threads(log: AuditLog, *, threads: int, events: int, detail: str) -> None:
    """``threads`` threads each emitting ``events`` ``auth.validated`` events at once, with
    request ids ``<thread>-<i>``; returns when all are done."""

    def writer(n: int) -> None:
        for i in range(events):
            log.emit("auth.validated", request_id=f"{n}-{i}", detail=detail)

    running = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
