"""The parent/child handshake of create and exec: small JSON messages over a
SOCK_SEQPACKET socketpair (one message per datagram, EOF when a side dies)."""

from __future__ import annotations

import json
import os
import socket

from pysandbox.oci.log import RuntimeFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class SyncClosed(RuntimeFailure):
    """The other side went away without a word (it died or was killed)."""


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    return a, b


def send(sock: socket.socket, kind: str, **fields: Any) -> None:
    sock.send(json.dumps({"t": kind, **fields}).encode())


def recv(sock: socket.socket) -> dict[str, Any]:
    raw = sock.recv(65536)
    if not raw:
        raise SyncClosed("container init exited unexpectedly")
    msg: dict[str, Any] = json.loads(raw)
    return msg


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
