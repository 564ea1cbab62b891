"""The audit event names: the ``AuditEvent`` type (gateway/audit.py), which mypy holds every
``emit`` call to, and the events docs/audit.md documents are the same set."""

from __future__ import annotations

import re
import typing
from pathlib import Path

from gateway.audit import AuditEvent

DOCS = Path(__file__).resolve().parent.parent / "docs" / "audit.md"
SOURCES = Path(__file__).resolve().parent.parent / "gateway"


def _documented() -> set[str]:
    """Event names in the ``###`` headings under ``## Events``."""
    text = DOCS.read_text(encoding="utf-8")
    events = text.split("\n## Events\n", 1)[1].split("\n## ", 1)[0]
    names: set[str] = set()
    for heading in re.findall(r"^### (.+)$", events, flags=re.M):
        names.update(re.findall(r"\b(?:auth|state)\.[a-z_]+", heading))
    return names


def test_every_event_type_is_documented_and_every_documented_event_exists() -> None:
    assert _documented() == set(typing.get_args(AuditEvent))


def test_every_emitted_name_is_an_event_type() -> None:
    """mypy checks this for typed callers; this also catches a call it cannot see."""
    emitted: set[str] = set()
    for source in SOURCES.rglob("*.py"):
        text = source.read_text(encoding="utf-8")
        emitted.update(re.findall(r"\.emit\(\s*\"([a-z_.]+)\"", text))
    assert emitted
    assert emitted <= set(typing.get_args(AuditEvent))
