"""The documentation stays true: every settings key is in ``gateway.toml.example`` and in
``docs/configuration.md`` with its real default (and nothing else is), and every link to a
``docs/`` page and heading, from the docs, the README or a docstring of the code or the tests,
lands somewhere."""

from __future__ import annotations

import dataclasses
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import pytest

from gateway.settings import DefaultRouteSettings, RouteSettings, Settings

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXAMPLE = ROOT / "gateway.toml.example"
# Settings fields whose table is built from another dataclass than their type says.
_SPECIAL: dict[str, type[Any]] = {"routes": RouteSettings, "default_route": DefaultRouteSettings}
_REQUIRED = {("routes", "match")}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _dataclass_of(hint: Any) -> type[Any] | None:
    if dataclasses.is_dataclass(hint):
        return typing.cast(type[Any], hint)
    if isinstance(hint, types.UnionType):
        found = [arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg)]
        return typing.cast(type[Any], found[0]) if found else None
    return None


def settings_keys(cls: type[Any] = Settings, section: str = "") -> dict[str, dict[str, Any]]:
    """``{section: {key: default}}`` from the settings dataclasses."""
    out: dict[str, dict[str, Any]] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        name = f"{section}.{f.name}" if section else f.name
        table = _SPECIAL.get(name) or _dataclass_of(hints[f.name])
        if table is not None:
            out.update(settings_keys(table, name))
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        else:
            assert f.default_factory is not dataclasses.MISSING
            default = f.default_factory()
        out.setdefault(section, {})[f.name] = _plain(default)
    return out


def _flatten(table: dict[str, Any], section: str = "") -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in table.items():
        name = f"{section}.{key}" if section else key
        if isinstance(value, dict):
            for sub, keys in _flatten(value, name).items():
                out.setdefault(sub, {}).update(keys)
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            merged: dict[str, Any] = {}
            for item in value:
                for k, v in item.items():
                    merged.setdefault(k, v)
            out.setdefault(name, {}).update(merged)
        else:
            out.setdefault(section, {})[key] = value
    return out


def example_keys() -> dict[str, dict[str, Any]]:
    """Keys and values of ``gateway.toml.example``, with its commented-out ``[cors]`` table
    read as if it were switched on."""
    lines = EXAMPLE.read_text(encoding="utf-8").splitlines()
    active: list[str] = []
    in_cors = False
    for line in lines:
        if line.strip() == "# [cors]":
            in_cors = True
            active.append("[cors]")
            continue
        if in_cors and re.match(r"^# [a-z_]+ = ", line):
            active.append(line[2:])
            continue
        in_cors = False
        active.append(line)
    return _flatten(tomllib.loads("\n".join(active)))


_HEADING = re.compile(r"^## \[\[?([a-z_.]+)\]\]?\s*$")
_ROW = re.compile(r"^\| `([a-z_]+)` \| (.+?) \| ")


def docs_keys() -> dict[str, dict[str, str]]:
    """``{section: {key: default cell}}`` from the tables of docs/configuration.md."""
    out: dict[str, dict[str, str]] = {}
    section = None
    for line in (DOCS / "configuration.md").read_text(encoding="utf-8").splitlines():
        heading = _HEADING.match(line)
        if heading:
            section = heading.group(1)
            out.setdefault(section, {})
            continue
        if line.startswith("## "):
            section = None
        row = _ROW.match(line)
        if row and section is not None:
            key, default = row.groups()
            assert key not in out[section], f"[{section}] {key} documented twice"
            out[section][key] = default
    return out


def _key_set(sections: dict[str, dict[str, Any]]) -> set[str]:
    return {f"{section}.{key}" for section, keys in sections.items() for key in keys}


def test_every_settings_key_is_in_the_example_and_nothing_else() -> None:
    code, example = _key_set(settings_keys()), _key_set(example_keys())
    assert not code - example, f"keys missing from gateway.toml.example: {sorted(code - example)}"
    extra = sorted(example - code)
    assert not extra, f"keys in gateway.toml.example the code lacks: {extra}"


def test_every_settings_key_is_in_the_configuration_docs_and_nothing_else() -> None:
    code, docs = _key_set(settings_keys()), _key_set(docs_keys())
    assert not code - docs, f"keys missing from docs/configuration.md: {sorted(code - docs)}"
    extra = sorted(docs - code)
    assert not extra, f"keys in docs/configuration.md the code lacks: {extra}"


def test_the_documented_defaults_are_the_real_ones() -> None:
    code = settings_keys()
    for section, keys in docs_keys().items():
        for key, cell in keys.items():
            if (section, key) in _REQUIRED:
                assert cell == "required", (section, key, cell)
                continue
            literal = re.fullmatch(r"`(.+)`", cell)
            assert literal, f"[{section}] {key}: default {cell!r} is not a `value`"
            value = tomllib.loads(f"v = {literal.group(1)}")["v"]
            assert value == code[section][key], f"[{section}] {key}: docs say {value!r}"


def test_the_example_holds_the_defaults() -> None:
    """Outside ``[[routes]]`` (whose entries are examples), the example's values are the
    defaults, as its first line says."""
    code = settings_keys()
    for section, keys in example_keys().items():
        if section == "routes":
            continue
        for key, value in keys.items():
            assert value == code[section][key], f"[{section}] {key} = {value!r} in the example"


# -- links ----------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    fenced = False
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"^#{1,6} (.+)$", line)):
            found.add(slug(m.group(1)))
    return found


_DOC_REF = re.compile(r"docs/([a-z0-9_-]+\.md)(?:#([a-z0-9_-]+))?")
_MD_LINK = re.compile(r"\]\(([a-z0-9_-]+\.md)?(?:#([a-z0-9_-]+))?\)")


def _references() -> list[tuple[str, Path, str | None]]:
    refs: list[tuple[str, Path, str | None]] = []
    sources = [ROOT / "README.md", *sorted((ROOT / "gateway").rglob("*.py")),
               *sorted((ROOT / "tests").rglob("*.py")), *sorted(DOCS.glob("*.md"))]
    for source in sources:
        text = source.read_text(encoding="utf-8")
        where = str(source.relative_to(ROOT))
        for page, anchor in _DOC_REF.findall(text):
            refs.append((where, DOCS / page, anchor or None))
        if source.parent == DOCS:
            for page, anchor in _MD_LINK.findall(text):
                if page or anchor:
                    refs.append((where, DOCS / (page or source.name), anchor or None))
    return refs


def test_docs_pages_exist() -> None:
    for page in ("configuration.md", "behaviour.md", "audit.md", "deployment.md"):
        assert (DOCS / page).is_file(), page


@pytest.mark.parametrize(("where", "page", "anchor"), _references(),
                         ids=lambda value: str(value))
def test_every_docs_link_lands(where: str, page: Path, anchor: str | None) -> None:
    assert page.is_file(), f"{where} links to missing {page.name}"
    if anchor:
        assert anchor in anchors(page), f"{where} links to {page.name}#{anchor}: no such heading"


def test_the_vector_snippet_is_a_wired_vector_config() -> None:
    """Vector is not installed here: the snippet must at least be TOML whose parts feed each
    other, read the audit file and parse each line as JSON."""
    text = (DOCS / "audit.md").read_text(encoding="utf-8")
    [snippet] = re.findall(r"```toml\n(# vector\.toml\n.*?)```", text, re.S)
    config = tomllib.loads(snippet)
    [(source_name, source)] = config["sources"].items()
    [(transform_name, transform)] = config["transforms"].items()
    [sink] = config["sinks"].values()
    assert source["type"] == "file" and source["include"][0].endswith(".jsonl")
    assert transform["type"] == "remap" and transform["inputs"] == [source_name]
    assert "parse_json!" in transform["source"]
    assert sink["inputs"] == [transform_name]
    assert set(sink["labels"]) == {"app", "event"}  # bounded label values only
