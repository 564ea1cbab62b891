"""The demo app's activity log: the gateway's audit stream, filtered to one user.

``gateway demo`` points the gateway's ``[audit] sink`` at a file and the backend's
``BackendOptions.audit_log`` at the same file; the dashboard polls ``/api/demo/activity`` for
the events whose ``user_id`` is the one the gateway forwarded. The audit stream never holds a
token (only ``token_fp`` fingerprints), so showing it to page scripts gives nothing away.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: How much of the end of the file is read: enough for a few hundred events.
_TAIL_BYTES = 256 * 1024
#: Fields copied from an audit event to the page (everything else stays in the file).
_SHOWN = ("timestamp", "event", "outcome", "cache", "via", "reason", "method", "path",
          "token_fp", "new_token_fp", "proactive", "status")


def _tail_lines(path: Path) -> list[str]:
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        start = max(0, size - _TAIL_BYTES)
        file.seek(start)
        data = file.read()
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[1:] if start > 0 else lines  # the first one may be cut


def user_events(audit_log: str, user_id: str, limit: int = 40) -> list[dict[str, Any]]:
    """The last `limit` events of `user_id` in the audit file, oldest first; [] if none."""
    if not audit_log:
        return []
    try:
        lines = _tail_lines(Path(audit_log))
    except OSError:
        return []
    events: list[dict[str, Any]] = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and str(event.get("user_id")) == user_id:
            events.append({key: event[key] for key in _SHOWN if event.get(key) is not None})
    return events[-limit:]
