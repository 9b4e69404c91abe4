"""One seccomp user-notification listener: receive, answer, install fds.

A :class:`Listener` owns the fd that ``seccomp(SECCOMP_SET_MODE_FILTER,
SECCOMP_FILTER_FLAG_NEW_LISTENER)`` returned in the workload (handed over a
unix socket with :func:`send_listener` / :func:`recv_listener`). Its methods
are thin: each is one ioctl with a preformatted argument, because every served
syscall pays for them (reference/SECCOMP-NOTIFY-FINDINGS.md).

Pitfalls handled here, once:

* the RECV buffer is all zeros on every call (a dirty one is EINVAL);
* SEND's ``error`` is negative (a positive one would be a success value);
* SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP is set when the kernel has it (6.6+):
  the workload and the sentry then hand the CPU to each other instead of
  waking a thread on another CPU (5-7x slower on this kind of VM).
"""

from __future__ import annotations

import _socket  # the C core: the socket module's enums cost ~3 ms at import
import array
import errno as _errno
import os

from pysandbox.oci import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["Listener", "Notification", "recv_listener", "send_listener"]

_CONTINUE: Final = kernel.SECCOMP_USER_NOTIF_FLAG_CONTINUE


class Notification:
    """One intercepted syscall: what the kernel reported in struct seccomp_notif.

    A slotted class with a plain __init__ rather than a ``record``: one is
    made per served call, and the generic record __init__ costs several times
    more. ``pid`` is the calling thread's id in the sentry's pid namespace.
    """

    __slots__ = ("arch", "args", "id", "ip", "nr", "pid")

    def __init__(
        self, id: int, pid: int, nr: int, arch: int, ip: int, args: tuple[int, ...]
    ) -> None:
        self.id = id
        self.pid = pid
        self.nr = nr
        self.arch = arch
        self.ip = ip
        self.args = args

    def __repr__(self) -> str:
        args = ", ".join(hex(a) for a in self.args)
        return f"Notification(id={self.id:#x}, pid={self.pid}, nr={self.nr}, args=({args}))"


class Listener:
    """A listener fd and the operations on it. The Listener owns (closes) the fd.

    Not thread-safe: its ioctl buffers are its own, so one thread serves it.
    ``ioctls`` is that buffer set: a serving loop may call ``ioctls.recv(fd)``
    and ``ioctls.send(fd, ...)`` directly, one Python call fewer per call.
    """

    __slots__ = ("_id_valid", "_recv", "_send", "fd", "ioctls", "sync_wakeup")

    def __init__(self, fd: int, sync_wakeup: bool = True) -> None:
        self.fd = fd
        self.ioctls = ioctls = kernel.NotifIoctls()  # buffers owned by this listener
        self._recv = ioctls.recv
        self._send = ioctls.send
        self._id_valid = ioctls.id_valid
        self.sync_wakeup = False
        if sync_wakeup:
            try:
                kernel.notif_set_flags(fd, kernel.SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
                self.sync_wakeup = True
            except OSError as e:
                if e.errno not in (_errno.EINVAL, _errno.ENOTTY):  # older kernel: no such ioctl
                    raise

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def recv(self) -> Notification:
        """Block until a notification arrives (OSError ENOENT: it vanished or no task is left)."""
        id, pid, _flags, nr, arch, ip, a0, a1, a2, a3, a4, a5 = self._recv(self.fd)
        return Notification(id, pid, nr, arch, ip, (a0, a1, a2, a3, a4, a5))

    def recv_raw(self) -> tuple[int, ...]:
        """RECV without building a Notification: (id, pid, flags, nr, arch, ip, arg0..arg5)."""
        return self._recv(self.fd)

    def send_value(self, id: int, value: int) -> None:
        """Answer: the syscall returns ``value``."""
        self._send(self.fd, id, value, 0)

    def send_error(self, id: int, errno: int) -> None:
        """Answer: the syscall fails with ``errno`` (a positive errno number)."""
        if errno <= 0:
            raise ValueError(f"errno must be positive, got {errno}")
        self._send(self.fd, id, 0, -errno)

    def send_continue(self, id: int) -> None:
        """Let the kernel run the syscall as the workload issued it.

        Allowed ONLY where DESIGN.md's rule 1 names it (execve, chdir), and
        never after a decision based on memory the workload can still change:
        the kernel re-reads every pointer argument after this answer, so a
        racing thread can swap what was checked. Those two are safe only
        because the workload's kernel view of the root is the same read-only
        rootfs the sentry resolves in: the kernel finds no file the sentry
        would not have let it find.
        """
        self._send(self.fd, id, 0, 0, _CONTINUE)

    def addfd_send(self, id: int, srcfd: int, cloexec: bool = False) -> int:
        """Install ``srcfd`` in the caller and answer with its number there (ADDFD_FLAG_SEND).

        Atomic: the fd exists in the workload only if the syscall returns it.
        Any later SEND/ADDFD on the same id fails with ENOENT.
        """
        return kernel.notif_addfd(
            self.fd, id, srcfd, kernel.SECCOMP_ADDFD_FLAG_SEND, 0, os.O_CLOEXEC if cloexec else 0
        )

    def addfd(self, id: int, srcfd: int, cloexec: bool = False, newfd: int | None = None) -> int:
        """Install ``srcfd`` in the caller without answering (at ``newfd`` if given)."""
        flags = 0 if newfd is None else kernel.SECCOMP_ADDFD_FLAG_SETFD
        return kernel.notif_addfd(
            self.fd, id, srcfd, flags, newfd or 0, os.O_CLOEXEC if cloexec else 0
        )

    def id_valid(self, id: int) -> bool:
        """Is the caller still blocked in notification ``id`` (so its pid is still its own)?"""
        return self._id_valid(self.fd, id)


def send_listener(sock: _socket.socket, fd: int) -> None:
    """Hand a listener fd over a unix socket (SCM_RIGHTS). sendmsg must not be notified."""
    sock.sendmsg([b"L"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, array.array("i", [fd]))])


def recv_fds(sock: _socket.socket, bufsize: int, maxfds: int) -> tuple[bytes, list[int]]:
    """One message and the fds passed with it (SCM_RIGHTS); socket.recv_fds
    without the socket module, which the sentry does not import."""
    fds = array.array("i")
    msg, ancdata, _flags, _addr = sock.recvmsg(bufsize, _socket.CMSG_LEN(maxfds * fds.itemsize))
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return msg, list(fds)


def recv_listener(sock: _socket.socket) -> int:
    """Receive a listener fd sent with :func:`send_listener`."""
    _msg, fds = recv_fds(sock, 1, 1)
    if len(fds) != 1:
        for fd in fds:
            os.close(fd)
        raise OSError(_errno.EPROTO, "expected exactly one listener fd")
    return fds[0]
