"""gateway/server.py's coalescing transport: what one turn of the event loop writes leaves in
one ``send()``, in order, and nothing is held past a close, an end of input or a large write.
(That responses still arrive whole over real sockets is every e2e test's business.)"""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.server import _CoalescingTransport


class _Recording(asyncio.Transport):
    """A transport that records what reaches it, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def write_eof(self) -> None:
        self.calls.append(("eof", b""))

    def close(self) -> None:
        self.closing = True
        self.calls.append(("close", b""))

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


async def _turn() -> None:
    """Let the loop run the callbacks scheduled so far."""
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_a_head_and_a_small_body_leave_in_one_write() -> None:
    raw = _Recording()
    transport = _CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n")
    transport.write(b"{}")
    assert raw.calls == []  # not before the loop's next turn
    await _turn()
    assert raw.calls == [("write", b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")]


async def test_a_large_write_goes_at_once_after_what_is_pending() -> None:
    raw = _Recording()
    transport = _CoalescingTransport(raw, asyncio.get_running_loop())
    chunk = b"x" * (64 * 1024)
    transport.write(b"head")
    transport.write(chunk)
    assert raw.calls == [("write", b"head"), ("write", chunk)]
    await _turn()
    assert raw.calls == [("write", b"head"), ("write", chunk)]  # nothing written twice


async def test_close_and_end_of_input_send_what_is_pending_first() -> None:
    raw = _Recording()
    transport = _CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"431 answer")
    transport.write_eof()
    transport.write(b"late")
    transport.close()
    assert raw.calls == [("write", b"431 answer"), ("eof", b""), ("write", b"late"),
                         ("close", b"")]
    await _turn()
    assert len(raw.calls) == 4


async def test_writes_of_separate_turns_stay_separate_and_in_order() -> None:
    raw = _Recording()
    transport = _CoalescingTransport(raw, asyncio.get_running_loop())
    transport.write(b"one")
    await _turn()
    transport.write(b"two")
    transport.write(b"three")
    await _turn()
    assert raw.calls == [("write", b"one"), ("write", b"twothree")]
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)  # the rest is delegated
