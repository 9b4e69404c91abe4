"""The parent/child handshake of create and exec: small JSON messages over a
SOCK_SEQPACKET socketpair (one message per datagram, EOF when a side dies)."""

from __future__ import annotations

import contextlib
import os
import socket

from pysandbox.oci import jsonio
from pysandbox.oci.log import RuntimeFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn


class SyncClosed(RuntimeFailure):
    """The other side went away without a word (it died or was killed)."""


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return a, b


def send(sock: socket.socket, kind: str, **fields: Any) -> None:
    try:
        sock.send(jsonio.dumps({"t": kind, **fields}).encode())
    except OSError as e:
        # The other side is gone. It may have said why before it went: that
        # message is still queued for us and is what the user must see.
        _raise_last_words(sock, e)


def recv(sock: socket.socket) -> dict[str, Any]:
    try:
        raw = sock.recv(65536)
    except OSError as e:
        _raise_last_words(sock, e)
    if not raw:
        raise SyncClosed("container init exited unexpectedly")
    try:
        msg: dict[str, Any] = jsonio.loads(raw)
    except ValueError:
        raise RuntimeFailure("container init sent a malformed message") from None
    if not isinstance(msg, dict):
        raise RuntimeFailure("container init sent a malformed message")
    return msg


def _raise_last_words(sock: socket.socket, err: OSError) -> NoReturn:
    """Raise the peer's queued ``error`` message, or SyncClosed."""
    with contextlib.suppress(OSError, ValueError):
        raw = sock.recv(65536, socket.MSG_DONTWAIT)
        msg = jsonio.loads(raw) if raw else None
        if isinstance(msg, dict) and msg.get("t") == "error":
            raise RuntimeFailure(str(msg.get("msg", "unknown error"))) from None
    reason = err.strerror or str(err)
    raise SyncClosed(f"container init exited unexpectedly ({reason.lower()})") from None


def expect(sock: socket.socket, kind: str) -> dict[str, Any]:
    """Wait for a message of one kind; an ``error`` message becomes the failure."""
    msg = recv(sock)
    if msg.get("t") == "error":
        raise RuntimeFailure(str(msg.get("msg", "unknown error")))
    if msg.get("t") != kind:
        raise RuntimeFailure(f"unexpected message from container init: {msg.get('t')!r}")
    return msg


def child_fail(sock: socket.socket, msg: str) -> None:
    """Report a failure from a child and exit it without running atexit hooks."""
    try:
        send(sock, "error", msg=msg)
    finally:
        os._exit(1)
