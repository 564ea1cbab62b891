"""The doctor's vocabulary: one :class:`Check` per line, and how a report is printed.

Every check ends in a verdict and, unless it passed, a concrete fix. The text form is a
checklist for people; the JSON form (``--json``) is the same checks for scripts. Both go
through :func:`redact`, so a token, a refresh token or the password that the doctor held while
it worked can never reach the output, even if a detail string were built carelessly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

Verdict = Literal["pass", "warn", "fail", "skip"]
CheckId = Literal[
    "environment", "reachable", "login", "validate", "lifetime", "cookie_lifetime",
    "clock_skew", "cookie_size", "refresh", "rotation", "blacklisting", "logout",
    "cookie_security", "cors", "state", "forward_auth",
]
VERDICTS: tuple[Verdict, ...] = ("pass", "warn", "fail", "skip")
REDACTED = "[redacted]"
_MIN_SECRET = 8  # shorter strings ("pass", "true") would redact the report's own words


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the checklist."""

    id: CheckId
    verdict: Verdict
    detail: str  # what was found (key names, numbers; never a token or cookie value)
    fix: str = ""  # what to change; empty when there is nothing to do


def passed(check_id: CheckId, detail: str) -> Check:
    return Check(check_id, "pass", detail)


def warned(check_id: CheckId, detail: str, fix: str) -> Check:
    return Check(check_id, "warn", detail, fix)


def failed(check_id: CheckId, detail: str, fix: str) -> Check:
    return Check(check_id, "fail", detail, fix)


def skipped(check_id: CheckId, detail: str, fix: str = "") -> Check:
    return Check(check_id, "skip", detail, fix)


@dataclass(frozen=True, slots=True)
class Report:
    config: str
    auth_url: str
    checks: tuple[Check, ...]
    secrets: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed (warnings allowed), 1 when any check failed."""
        return 1 if any(c.verdict == "fail" for c in self.checks) else 0

    def counts(self) -> dict[Verdict, int]:
        return {v: sum(1 for c in self.checks if c.verdict == v) for v in VERDICTS}

    def text(self) -> str:
        width = max((len(c.id) for c in self.checks), default=0)
        lines = [f"gateway doctor: {self.config} -> {self.auth_url}"]
        for check in self.checks:
            lines.append(f"{check.verdict.upper():<4}  {check.id:<{width}}  {check.detail}")
            if check.fix:
                lines.append(f"{'':<4}  {'':<{width}}  fix: {check.fix}")
        counts = self.counts()
        lines.append(", ".join(f"{counts[v]} {v}" for v in VERDICTS))
        return redact("\n".join(lines), self.secrets)

    def json(self) -> str:
        document = {
            "config": self.config,
            "auth_url": self.auth_url,
            "checks": [asdict(c) for c in self.checks],
            "summary": self.counts(),
            "exit_code": self.exit_code,
        }
        return redact(json.dumps(document, indent=2), self.secrets)


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret (and its JSON-escaped form) replaced, longest first."""
    for secret in sorted((s for s in secrets if len(s) >= _MIN_SECRET), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
        escaped = json.dumps(secret)[1:-1]
        if escaped != secret:
            text = text.replace(escaped, REDACTED)
    return text


def names(items: Sequence[str], limit: int = 12) -> str:
    """``a, b, c`` (or ``(none)``), cut after ``limit`` with a count of the rest."""
    if not items:
        return "(none)"
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown} (+{len(items) - limit} more)"
