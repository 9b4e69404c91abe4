"""The parent/child handshake of create and exec: small JSON messages over a
pair of packet-mode pipes (O_DIRECT: one message per read, EOF when every
writer has gone, i.e. when a side dies).

Pipes rather than a socketpair because importing ``socket`` (and ``enum``
with it) costs more than a millisecond of every container start.
"""

from __future__ import annotations

import os
import select

from pysandbox.oci import jsonio
from pysandbox.oci.log import RuntimeFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

_MAX_MESSAGE = 65536


class SyncClosed(RuntimeFailure):
    """The other side went away without a word (it died or was killed)."""


class Channel:
    """One side of the handshake: reads what the other side writes."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd

    def close(self) -> None:
        for fd in (self.rfd, self.wfd):
            if fd >= 0:
                os.close(fd)
        self.rfd = self.wfd = -1


def pair() -> tuple[Channel, Channel]:
    """(parent side, child side); all four fds are close-on-exec."""
    down_r, down_w = os.pipe2(os.O_DIRECT | os.O_CLOEXEC)
    up_r, up_w = os.pipe2(os.O_DIRECT | os.O_CLOEXEC)
    return Channel(up_r, down_w), Channel(down_r, up_w)


def send(ch: Channel, kind: str, **fields: Any) -> None:
    data = jsonio.dumps({"t": kind, **fields}).encode()
    if len(data) > select.PIPE_BUF:
        # Larger writes would be split into several packets.
        raise RuntimeFailure(f"internal message too large ({len(data)} bytes)")
    try:
        os.write(ch.wfd, data)
    except OSError as e:
        # The other side is gone. It may have said why before it went: that
        # message is still queued for us and is what the user must see.
        _raise_last_words(ch, e)


def recv(ch: Channel) -> dict[str, Any]:
    try:
        raw = os.read(ch.rfd, _MAX_MESSAGE)
    except OSError as e:
        _raise_last_words(ch, e)
    if not raw:
        raise SyncClosed("container init exited unexpectedly")
    return _decode(raw)


def _decode(raw: bytes) -> dict[str, Any]:
    try:
        msg = jsonio.loads(raw)
    except ValueError:
        raise RuntimeFailure("container init sent a malformed message") from None
    if not isinstance(msg, dict):
        raise RuntimeFailure("container init sent a malformed message")
    return msg


def _raise_last_words(ch: Channel, err: OSError) -> NoReturn:
    """Raise the peer's queued ``error`` message, or SyncClosed."""
    try:
        ready, _, _ = select.select([ch.rfd], [], [], 0)
        raw = os.read(ch.rfd, _MAX_MESSAGE) if ready else b""
        msg = _decode(raw) if raw else None
    except (OSError, RuntimeFailure):
        msg = None
    if msg is not None and msg.get("t") == "error":
        raise RuntimeFailure(str(msg.get("msg", "unknown error"))) from None
    reason = err.strerror or str(err)
    raise SyncClosed(f"container init exited unexpectedly ({reason.lower()})") from None


def expect(ch: Channel, kind: str) -> dict[str, Any]:
    """Wait for a message of one kind; an ``error`` message becomes the failure."""
    msg = recv(ch)
    if msg.get("t") == "error":
        raise RuntimeFailure(str(msg.get("msg", "unknown error")))
    if msg.get("t") != kind:
        raise RuntimeFailure(f"unexpected message from container init: {msg.get('t')!r}")
    return msg


def child_fail(ch: Channel, msg: str) -> None:
    """Report a failure from a child and exit it without running atexit hooks."""
    try:
        send(ch, "error", msg=msg[:2000])
    finally:
        os._exit(1)
