"""What the configuration tests share (gateway/settings.py, docs/configuration.md): the shipped
files, a minimal valid document to build on, the problems a document is refused with, and a
setting read by its dotted key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.settings import Settings, SettingsError, settings_from_mapping

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "gateway.toml.example"
PRESETS = sorted((ROOT / "config").glob("*.toml"))

UPSTREAM = "http://127.0.0.1:9000"


def minimal(**sections: Any) -> dict[str, Any]:
    """A valid document (upstream.url set) plus the given sections."""
    data: dict[str, Any] = {"upstream": {"url": UPSTREAM}}
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(name), dict):
            data[name] = {**data[name], **value}
        else:
            data[name] = value
    return data


def problems_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(SettingsError) as info:
        settings_from_mapping(data)
    assert info.value.problems, "SettingsError without problems"
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def get(settings: Settings, dotted: str) -> Any:
    value: Any = settings
    for part in dotted.split("."):
        value = getattr(value, part)
    return value
