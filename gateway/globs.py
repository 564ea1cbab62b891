"""Route globs: the pattern language of ``[[routes]] match``, compiled to regular expressions.

Its own module because two parts use it that must not depend on each other: the settings
loader checks every pattern when the config is read (gateway/settings.py), and the router
compiles them once, when it is built (gateway/routes.py).

Globs (:func:`compile_glob`)
----------------------------
Patterns are matched against the normalized path.  ``*`` matches one or more
characters within a single segment (``/api/*``, ``/api/*.json``), ``**`` (a
whole segment) matches any number of segments, including none (``/api/**``
matches ``/api``, ``/api/``, ``/api/x`` and ``/api/x/y``).  Everything else is
literal; the literal parts are normalized like a path, so ``/%7euser``
matches ``/~user``.  A trailing slash is not significant on either side:
``/a/*`` matches ``/a/x`` and ``/a/x/``, and pattern ``/docs/`` is the same
as ``/docs``.  (This is deliberate: apps tend to treat ``/x`` and ``/x/`` as
the same resource, and a rule that silently failed to cover one of them would
be a bypass.)  ``?``, ``[``, ``]``, ``{`` and ``}`` are reserved, and empty or
dot segments in a pattern are errors.  There is no escape for a literal
``*``.  The regular expressions use atomic groups so that patterns with
several stars can't make matching a hostile path take super-linear time.
"""

from __future__ import annotations

import re

from gateway.paths import InvalidPath, normalize_path

__all__ = ["InvalidGlob", "compile_glob"]


class InvalidGlob(ValueError):
    """A route pattern can't be parsed.  The message is meant for humans."""


_GLOB_RESERVED = "?[]{}"

# One whole segment, possessively, so failed attempts never re-scan it.
_ANY_SEGMENTS = r"(?:/[^/]++)*"
# What must follow a segment: its end.
_SEGMENT_END = r"(?![^/])"


def _segment_regex(segment: str) -> str:
    """Regex for one pattern segment (no "**"), not including its "/"."""
    literals = segment.split("*")
    if len(literals) == 1:
        return re.escape(segment)
    out = [re.escape(literals[0])]
    # Every star but the last, with the literal after it, takes the leftmost
    # match and commits (atomic group): a later star can absorb whatever is
    # skipped, so this never loses a match, and it keeps matching linear.
    for literal in literals[1:-1]:
        out.append(f"(?>[^/]+?{re.escape(literal)})")
    out.append(f"[^/]+{re.escape(literals[-1])}")
    return "".join(out)


def _segments_regex(segments: list[str]) -> str:
    return "".join(f"/{_segment_regex(s)}{_SEGMENT_END}" for s in segments)


def compile_glob(pattern: str) -> re.Pattern[str]:
    """Compile a route glob into an anchored regex over normalized paths.

    The result is anchored at both ends (``\\A...\\Z``), so ``.match``,
    ``.fullmatch`` and ``.search`` all agree.  Raises InvalidGlob.
    """
    if not pattern:
        raise InvalidGlob("pattern is empty")
    if not pattern.startswith("/"):
        raise InvalidGlob(f"pattern must start with '/' (got {pattern!r})")
    for char in _GLOB_RESERVED:
        if char in pattern:
            raise InvalidGlob(
                f"{char!r} is not supported in patterns (only '*' and '**' are special)"
            )
    raw_segments = pattern.split("/")[1:]
    if raw_segments and raw_segments[-1] == "":
        raw_segments.pop()  # a trailing slash is not significant
    for raw in raw_segments:
        if raw == "":
            raise InvalidGlob("pattern has an empty segment ('//')")
        if raw.lower().replace("%2e", ".") in (".", ".."):
            raise InvalidGlob("pattern has a '.' or '..' segment")
        if "***" in raw:
            raise InvalidGlob("'***' is not valid; use '*' (one segment) or '**' (any depth)")
        if "**" in raw and raw != "**":
            raise InvalidGlob(f"'**' must be a whole segment (got {raw!r})")
    try:
        normalized = normalize_path(pattern)
    except InvalidPath as exc:
        raise InvalidGlob(f"pattern is not a valid path: {exc}") from None
    if normalized == "/":
        return re.compile(r"\A/\Z")
    segments = normalized.strip("/").split("/")

    # Split into runs of plain segments separated by "**".
    runs: list[list[str]] = [[]]
    for segment in segments:
        if segment == "**":
            runs.append([])
        else:
            runs[-1].append(segment)
    body = [r"\A", _segments_regex(runs[0])]
    if len(runs) > 1:
        # Runs between two "**" take their leftmost occurrence and commit:
        # the next "**" absorbs anything skipped, so this loses no match.
        for run in runs[1:-1]:
            if run:
                body.append(f"(?>{_ANY_SEGMENTS}?{_segments_regex(run)})")
        body.append(_ANY_SEGMENTS)
        body.append(_segments_regex(runs[-1]))
    body.append(r"/?\Z")
    return re.compile("".join(body), re.DOTALL)
