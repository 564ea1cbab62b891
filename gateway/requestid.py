"""Request ids the gateway makes up: unique without a ``uuid4`` per request.

A random 64-bit prefix per process (drawn again in a forked child) followed by a 64-bit
counter: 32 hex digits, like ``uuid4().hex``, at the cost of an increment and a format instead
of 16 bytes from ``os.urandom`` (a system call) and a UUID object. Not guessable across
processes, not meant to be secret within one: an id names a request in logs, it grants nothing.
"""

from __future__ import annotations

import itertools
import os
import secrets

_prefix = ""
_counter: itertools.count[int] = itertools.count()


def _reseed() -> None:
    global _prefix, _counter
    _prefix = secrets.token_hex(8)
    _counter = itertools.count()


_reseed()
os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    return f"{_prefix}{next(_counter):016x}"
