"""Terminals: the pty of a ``terminal: true`` container and the console socket.

Console-socket protocol (what containerd's shim, podman's conmon and our own
``run`` expect): the caller listens on a unix stream socket; the runtime
connects and sends a single message whose data is the pty name (non-empty,
shorter than 4096 bytes; runc sends the path it opened the master from,
``/dev/ptmx``) and whose only control message is SCM_RIGHTS carrying exactly
one fd, the pty master opened from the container's devpts. The slave becomes
/dev/console and fds 0-2 of the container process.

Attached ``run`` with a terminal and no console socket proxies the caller's
stdin/stdout to the master with :func:`proxy_terminal`.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import select
import signal
import socket
import stat
import struct
import termios
import threading
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from pysandbox.oci import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = [
    "ConsoleError",
    "connect_console_socket",
    "get_winsize",
    "listen_console_socket",
    "make_controlling_terminal",
    "open_pty",
    "open_pty_slave",
    "proxy_terminal",
    "recv_pty_master",
    "send_pty_master",
    "set_winsize",
]

MAX_NAME: Final = 4096  # the pty name must be shorter than this (in bytes)
_SUN_PATH_MAX: Final = 107  # sockaddr_un.sun_path holds 108 bytes with the NUL
_CHUNK: Final = 65536
_INPUT_CAP: Final = 1 << 20  # stop reading stdin while this much waits for the pty


class ConsoleError(OSError):
    """A console/pty failure; ``str()`` is the message for the caller."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(err, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


# --- the pty -------------------------------------------------------------------


def _slave_dir(ptmx: str) -> str:
    """The devpts directory holding the slaves of masters opened from ptmx."""
    parent = os.path.dirname(ptmx) or "."
    # /dev/pts/ptmx (the devpts instance's own node) vs /dev/ptmx.
    return parent if os.path.basename(parent) == "pts" else os.path.join(parent, "pts")


def open_pty(ptmx: str = "/dev/ptmx") -> tuple[int, str]:
    """Open a new pty master from ``ptmx``; return (master fd, slave path).

    The slave is unlocked; its path is ``<devpts>/<N>`` next to ptmx, e.g.
    ``/dev/pts/0`` for ``/dev/ptmx`` or ``<rootfs>/dev/pts/3`` for
    ``<rootfs>/dev/pts/ptmx``. The master is close-on-exec and not a
    controlling terminal of ours.
    """
    fd = os.open(ptmx, os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, kernel.TIOCSPTLCK, struct.pack("i", 0))
        (number,) = struct.unpack("I", fcntl.ioctl(fd, kernel.TIOCGPTN, bytes(4)))
    except OSError:
        os.close(fd)
        raise
    return fd, os.path.join(_slave_dir(ptmx), str(number))


def open_pty_slave(master_fd: int, slave_path: str | None = None) -> int:
    """Open the slave of ``master_fd`` (O_RDWR | O_NOCTTY | O_CLOEXEC).

    Uses TIOCGPTPEER, which cannot be fooled by whatever sits at the slave's
    path; falls back to opening ``slave_path`` on kernels older than 4.13.
    """
    flags = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC
    try:
        return fcntl.ioctl(master_fd, kernel.TIOCGPTPEER, flags)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTTY) or slave_path is None:
            raise
    return os.open(slave_path, flags)


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """Set a terminal's window size (rows, columns); pixels are zeroed."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def get_winsize(fd: int) -> tuple[int, int]:
    """A terminal's window size as (rows, columns)."""
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return rows, cols


def make_controlling_terminal(slave_fd: int) -> None:
    """Make the pty slave our controlling terminal and our fds 0, 1 and 2.

    Starts a new session unless we already lead one. ``slave_fd`` is closed if
    it is above 2. Meant for the container's init right before exec.
    """
    if os.getsid(0) != os.getpid():
        os.setsid()
    fcntl.ioctl(slave_fd, termios.TIOCSCTTY, 0)
    for target in (0, 1, 2):
        if slave_fd != target:
            os.dup2(slave_fd, target, inheritable=True)
        else:
            os.set_inheritable(target, True)
    if slave_fd > 2:
        os.close(slave_fd)


# --- the console socket ----------------------------------------------------------


@contextmanager
def _short_path(path: str) -> Iterator[str]:
    """A path to ``path`` that fits in sun_path (via /proc/self/fd if needed)."""
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        yield path
        return
    parent, base = os.path.split(os.path.abspath(path))
    dirfd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{dirfd}/{base}"
    finally:
        os.close(dirfd)


def connect_console_socket(path: str) -> socket.socket:
    """Connect to the caller's console socket."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _short_path(path) as addr:
            sock.connect(addr)
    except OSError as exc:
        sock.close()
        raise ConsoleError(
            exc.errno or errno.EINVAL, f"console socket {path}: {exc.strerror or exc}"
        ) from None
    return sock


def listen_console_socket(path: str) -> socket.socket:
    """Listen on a unix stream socket at ``path`` (a stale socket is replaced)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _short_path(path) as addr:
            sock.bind(addr)
        sock.listen(1)
    except OSError as exc:
        sock.close()
        raise ConsoleError(
            exc.errno or errno.EINVAL, f"console socket {path}: {exc.strerror or exc}"
        ) from None
    return sock


def send_pty_master(sock: socket.socket, master_fd: int, name: str) -> None:
    """Send the pty master and its name in one message (runtime side)."""
    data = name.encode()
    if not data or len(data) >= MAX_NAME:
        raise ConsoleError(errno.EINVAL, f"pty name must be 1..{MAX_NAME - 1} bytes")
    fds = array.array("i", [master_fd])
    try:
        sent = sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    except OSError as exc:
        raise ConsoleError(
            exc.errno or errno.EIO, f"console socket: send pty master: {exc.strerror or exc}"
        ) from None
    if sent != len(data):
        raise ConsoleError(errno.EIO, "console socket: short write of the pty name")


def recv_pty_master(conn: socket.socket) -> tuple[int, str]:
    """Receive (master fd, name) from a runtime (caller side)."""
    # Room for a few fds, so that a peer sending too many is caught, not truncated.
    msg, ancdata, flags, _ = conn.recvmsg(MAX_NAME, socket.CMSG_SPACE(16 * 4))
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(array.array("i", payload[:usable]))
    problem = None
    if flags & socket.MSG_CTRUNC:
        problem = "control message truncated"
    elif len(fds) != 1:
        problem = f"expected exactly one fd, got {len(fds)}"
    elif not msg:
        problem = "empty pty name"
    if problem is not None:
        for fd in fds:
            os.close(fd)
        raise ConsoleError(errno.EPROTO, f"console socket: {problem}")
    os.set_inheritable(fds[0], False)
    return fds[0], msg.decode("utf-8", "replace")


# --- proxying an attached terminal -------------------------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


def _veof(master_fd: int) -> bytes:
    try:
        cc: list[Any] = termios.tcgetattr(master_fd)[6]
        ch = cc[termios.VEOF]
        if isinstance(ch, bytes) and ch and ch != b"\0":
            return ch
    except (termios.error, OSError):
        pass
    return b"\x04"


def _read_master(master_fd: int) -> tuple[bytes, bool]:
    """(data, closed): what the master has now; closed once the slave side is gone."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(master_fd, _CHUNK)
        except BlockingIOError:
            return b"".join(chunks), False
        except OSError as exc:
            if exc.errno == errno.EIO:  # every slave fd is closed
                return b"".join(chunks), True
            raise
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        if len(chunks) >= 16:
            return b"".join(chunks), False


class _Output:
    """Where container output goes; after a write error it is discarded so the
    container never blocks on a terminal nobody reads any more."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.broken = False

    def write(self, data: bytes) -> None:
        if not data or self.broken:
            return
        try:
            _write_all(self.fd, data)
        except OSError:
            self.broken = True


def _pump(
    master_fd: int, stdin_fd: int, out: _Output, child_alive: Callable[[], bool] | None
) -> None:
    to_master = bytearray()
    stdin_open = True
    poller = select.poll()
    stdin_registered = False
    tick_ms = 100 if child_alive is not None else None
    while True:
        master_events = select.POLLIN | (select.POLLOUT if to_master else 0)
        poller.register(master_fd, master_events)
        want_stdin = stdin_open and len(to_master) < _INPUT_CAP
        if want_stdin and not stdin_registered:
            poller.register(stdin_fd, select.POLLIN)
            stdin_registered = True
        elif not want_stdin and stdin_registered:
            poller.unregister(stdin_fd)
            stdin_registered = False
        events = poller.poll(tick_ms)
        if not events and child_alive is not None and not child_alive():
            data, _ = _read_master(master_fd)
            out.write(data)
            return
        for fd, ev in events:
            if fd == master_fd:
                if ev & select.POLLOUT and to_master:
                    try:
                        n = os.write(master_fd, to_master)
                        del to_master[:n]
                    except BlockingIOError:
                        pass
                    except OSError as exc:
                        if exc.errno != errno.EIO:
                            raise
                        to_master.clear()
                if ev & (select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL):
                    data, closed = _read_master(master_fd)
                    out.write(data)
                    if closed or ev & select.POLLNVAL:
                        return
            elif fd == stdin_fd:
                try:
                    data = os.read(stdin_fd, _CHUNK)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if data:
                    to_master += data
                else:
                    # EOF: what a person at a terminal would type, not a hang-up.
                    to_master += _veof(master_fd)
                    stdin_open = False
                    poller.unregister(stdin_fd)
                    stdin_registered = False


def proxy_terminal(
    master_fd: int,
    *,
    stdin_fd: int = 0,
    stdout_fd: int = 1,
    child_alive: Callable[[], bool] | None = None,
) -> None:
    """Connect our stdin/stdout to a container's pty until the container is gone.

    If stdin is a terminal it is put in raw mode (restored on return, also on
    exceptions) and its window size is copied to the pty, following SIGWINCH
    when we run in the main thread. Bytes are copied both ways until the
    master reports EIO/HUP (no slave fd left) or ``child_alive()`` turns false.
    EOF on stdin sends the pty's VEOF character (^D) instead of closing.
    Whoever calls this must not hold a slave fd itself, or it never ends
    without ``child_alive``.
    """
    stdin_tty = os.isatty(stdin_fd)
    size_src: int | None = None
    if stdin_tty:
        size_src = stdin_fd
    elif os.isatty(stdout_fd):
        size_src = stdout_fd
    saved_attrs: list[Any] | None = None
    old_handler: Any = None
    handler_installed = False
    master_blocking = os.get_blocking(master_fd)

    def copy_size() -> None:
        if size_src is None:
            return
        try:
            rows, cols = get_winsize(size_src)
            if rows and cols:
                set_winsize(master_fd, rows, cols)
        except OSError:
            pass

    def on_winch(_signum: int, _frame: FrameType | None) -> None:
        copy_size()

    try:
        if stdin_tty:
            saved_attrs = termios.tcgetattr(stdin_fd)
            tty.setraw(stdin_fd, termios.TCSANOW)
        copy_size()
        if size_src is not None and threading.current_thread() is threading.main_thread():
            old_handler = signal.signal(signal.SIGWINCH, on_winch)
            handler_installed = True
        # Only the master goes non-blocking: stdin's O_NONBLOCK would be shared
        # with every process using the same terminal; poll() says when it has data.
        os.set_blocking(master_fd, False)
        _pump(master_fd, stdin_fd, _Output(stdout_fd), child_alive)
    finally:
        if handler_installed:
            signal.signal(signal.SIGWINCH, old_handler)
        try:
            os.set_blocking(master_fd, master_blocking)
        except OSError:
            pass
        if saved_attrs is not None:
            try:
                termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved_attrs)
            except termios.error:
                pass
