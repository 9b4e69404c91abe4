"""Ptys and the console socket: real ptys, sockets and processes, no mocks."""

from __future__ import annotations

import array
import errno
import os
import select
import signal
import socket
import subprocess
import sys
import termios
import textwrap
import time
from pathlib import Path

import pytest

from pysandbox.oci.console import (
    ConsoleError,
    connect_console_socket,
    get_winsize,
    listen_console_socket,
    open_pty,
    open_pty_slave,
    proxy_terminal,
    recv_pty_master,
    send_pty_master,
    set_winsize,
)

PY = sys.executable


def read_until_closed(fd: int, timeout: float = 10.0) -> bytes:
    """Read a pty master until every slave fd is closed (EIO)."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"pty not closed in time; got {bytes(out)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError as exc:
            if exc.errno == errno.EIO:
                return bytes(out)
            raise
        if not chunk:
            return bytes(out)
        out += chunk


def read_until(fd: int, token: bytes, buf: bytearray, timeout: float = 10.0) -> None:
    """Read fd into buf until token shows up."""
    deadline = time.monotonic() + timeout
    while token not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"{token!r} not seen; got {bytes(buf)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError as exc:
                if exc.errno == errno.EIO:
                    break
                raise
            if not chunk:
                break
            buf += chunk
    assert token in buf, f"{token!r} not seen; got {bytes(buf)!r}"


def run_py(code: str, **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([PY, "-c", textwrap.dedent(code)], **kwargs)  # type: ignore[call-overload, no-any-return]


# --- the pty ---------------------------------------------------------------------


def test_open_pty_gives_an_unlocked_pair() -> None:
    master, slave_path = open_pty()
    try:
        assert slave_path.startswith("/dev/pts/")
        assert slave_path.rsplit("/", 1)[1].isdigit()
        assert not os.get_inheritable(master)
        slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
        try:
            assert os.ttyname(slave) == slave_path
            os.write(slave, b"ping")
            assert os.read(master, 100) == b"ping"
            os.write(master, b"pong\n")
            assert os.read(slave, 100) == b"pong\n"
        finally:
            os.close(slave)
    finally:
        os.close(master)


def test_open_pty_from_devpts_ptmx() -> None:
    if not os.path.exists("/dev/pts/ptmx"):
        pytest.skip("no /dev/pts/ptmx")
    try:
        master, slave_path = open_pty("/dev/pts/ptmx")
    except PermissionError:
        pytest.skip("/dev/pts/ptmx is mode 000 here")
    try:
        assert slave_path.startswith("/dev/pts/") and slave_path.count("/") == 3
        assert os.path.exists(slave_path)
    finally:
        os.close(master)


def test_open_pty_slave_by_peer() -> None:
    master, slave_path = open_pty()
    try:
        slave = open_pty_slave(master, slave_path)
        try:
            assert os.ttyname(slave) == slave_path
            assert not os.get_inheritable(slave)
        finally:
            os.close(slave)
    finally:
        os.close(master)


def test_winsize_round_trip() -> None:
    master, slave_path = open_pty()
    try:
        set_winsize(master, 31, 97)
        assert get_winsize(master) == (31, 97)
        slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
        try:
            assert get_winsize(slave) == (31, 97)
            set_winsize(slave, 50, 200)
            assert get_winsize(master) == (50, 200)
        finally:
            os.close(slave)
    finally:
        os.close(master)


def test_controlling_terminal_in_child() -> None:
    master, slave_path = open_pty()
    try:
        child = run_py(
            f"""
            import os, sys
            from pysandbox.oci.console import make_controlling_terminal
            fd = os.open({slave_path!r}, os.O_RDWR | os.O_NOCTTY)
            make_controlling_terminal(fd)
            tty = os.open("/dev/tty", os.O_RDWR)  # only works with a controlling tty
            os.write(tty, b"via-dev-tty\\n")
            print("sid-leader", os.getsid(0) == os.getpid())
            print("tty", os.ttyname(0), os.ttyname(1), os.ttyname(2))
            print("fg", os.tcgetpgrp(0) == os.getpgrp())
            """,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        out = read_until_closed(master).replace(b"\r\n", b"\n")
        assert child.wait(10) == 0, out
    finally:
        os.close(master)
    text = out.decode()
    assert "via-dev-tty" in text
    assert "sid-leader True" in text
    assert f"tty {slave_path} {slave_path} {slave_path}" in text
    assert "fg True" in text


# --- the console socket ------------------------------------------------------------

RUNTIME_SIDE = """
import os, sys
from pysandbox.oci.console import (
    connect_console_socket, make_controlling_terminal, open_pty, send_pty_master,
)
master, slave_path = open_pty()
slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)
pid = os.fork()
if pid == 0:
    os.close(master)
    make_controlling_terminal(slave)
    os.execv("/bin/sh", ["sh", "-c", "read line; echo hello from container; tty; echo got:$line"])
os.close(slave)
sock = connect_console_socket(sys.argv[1])
send_pty_master(sock, master, "/dev/ptmx")
sock.close()
os.close(master)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_console_socket_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "console.sock")
    listener = listen_console_socket(path)
    runtime = subprocess.Popen([PY, "-c", RUNTIME_SIDE, path])
    try:
        listener.settimeout(10)
        conn, _ = listener.accept()
        with conn:
            master, name = recv_pty_master(conn)
        try:
            assert name == "/dev/ptmx"
            assert not os.get_inheritable(master)
            os.write(master, b"typed\n")
            out = read_until_closed(master).replace(b"\r\n", b"\n").decode()
        finally:
            os.close(master)
        assert runtime.wait(10) == 0
    finally:
        listener.close()
        if runtime.poll() is None:
            runtime.kill()
            runtime.wait()
    assert "hello from container" in out
    assert "\n/dev/pts/" in out
    assert "got:typed" in out


def test_connect_missing_socket_is_a_clear_error(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.sock")
    with pytest.raises(ConsoleError) as info:
        connect_console_socket(path)
    assert str(info.value) == f"console socket {path}: No such file or directory"
    assert info.value.errno == errno.ENOENT


def test_long_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "console.sock")
    assert len(path) > 108
    listener = listen_console_socket(path)
    try:
        assert os.path.exists(path)
        sock = connect_console_socket(path)
        conn, _ = listener.accept()
        master, _ = open_pty()
        try:
            send_pty_master(sock, master, "/dev/ptmx")
            got, name = recv_pty_master(conn)
            os.close(got)
            assert name == "/dev/ptmx"
        finally:
            os.close(master)
            sock.close()
            conn.close()
    finally:
        listener.close()


def test_listen_replaces_stale_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "c.sock")
    listen_console_socket(path).close()
    assert os.path.exists(path)
    listen_console_socket(path).close()
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(ConsoleError, match="Address already in use"):
        listen_console_socket(str(regular))


def test_send_rejects_bad_names() -> None:
    a, b = socket.socketpair()
    master, _ = open_pty()
    try:
        with pytest.raises(ConsoleError):
            send_pty_master(a, master, "")
        with pytest.raises(ConsoleError):
            send_pty_master(a, master, "x" * 4096)
        send_pty_master(a, master, "x" * 4095)
        fd, name = recv_pty_master(b)
        os.close(fd)
        assert name == "x" * 4095
    finally:
        os.close(master)
        a.close()
        b.close()


def test_recv_rejects_wrong_fd_counts() -> None:
    a, b = socket.socketpair()
    try:
        a.sendmsg([b"/dev/ptmx"])
        with pytest.raises(ConsoleError, match="expected exactly one fd, got 0"):
            recv_pty_master(b)
        r1, w1 = os.pipe()
        fds = array.array("i", [r1, w1])
        a.sendmsg([b"/dev/ptmx"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(ConsoleError, match="got 2"):
            recv_pty_master(b)
        # The received duplicates were closed, nothing leaks.
        assert set(os.listdir("/proc/self/fd")) <= before
        os.close(r1)
        os.close(w1)
    finally:
        a.close()
        b.close()


# --- proxy_terminal ----------------------------------------------------------------

PROXY_SIDE = """
import fcntl, os, sys, termios
from pysandbox.oci.console import make_controlling_terminal, open_pty, proxy_terminal
if os.isatty(0):
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # so SIGWINCH of our terminal reaches us
    before = termios.tcgetattr(0)
master, slave_path = open_pty()
pid = os.fork()
if pid == 0:
    os.close(master)
    make_controlling_terminal(os.open(slave_path, os.O_RDWR | os.O_NOCTTY))
    os.execv("/bin/sh", ["sh", "-c", sys.argv[1]])
proxy_terminal(master)
_, status = os.waitpid(pid, 0)
restored = int(termios.tcgetattr(0) == before) if os.isatty(0) else -1
os.write(1, b"RESTORED=%d STATUS=%d\\n" % (restored, os.waitstatus_to_exitcode(status)))
"""


def test_proxy_terminal_with_a_tty() -> None:
    outer_master, outer_slave = os.openpty()
    set_winsize(outer_slave, 33, 111)
    script = "echo READY; read a; stty size; read b; stty size; echo got:$a:$b; exec cat"
    child = subprocess.Popen(
        [PY, "-c", PROXY_SIDE, script],
        stdin=outer_slave,
        stdout=outer_slave,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(outer_slave)
    buf = bytearray()
    try:
        read_until(outer_master, b"READY", buf)
        # The outer tty is raw now: what we type reaches the container's pty as is.
        assert not termios.tcgetattr(outer_master)[3] & termios.ICANON
        os.write(outer_master, b"one\r")
        read_until(outer_master, b"33 111", buf)
        set_winsize(outer_master, 40, 120)  # SIGWINCH to the proxy
        time.sleep(0.3)
        os.write(outer_master, b"two\r")
        read_until(outer_master, b"40 120", buf)
        read_until(outer_master, b"got:one:two", buf)
        os.write(outer_master, b"echoed by cat\r")
        read_until(outer_master, b"echoed by cat\r\nechoed by cat", buf)
        os.write(outer_master, b"\x04")  # ^D at line start: cat sees EOF, exits
        read_until(outer_master, b"STATUS=", buf)
        assert child.wait(10) == 0, child.stderr.read() if child.stderr else b""
        read_until(outer_master, b"\n", buf)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        os.close(outer_master)
    assert b"RESTORED=1 STATUS=0" in buf


def test_proxy_terminal_stdin_eof_sends_veof() -> None:
    child = subprocess.Popen(
        [PY, "-c", PROXY_SIDE, "exec cat"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = child.communicate(b"line one\nline two\n", timeout=20)
    assert child.returncode == 0, err
    text = out.replace(b"\r\n", b"\n")
    # Each line is echoed by the pty and then written back by cat.
    assert text.count(b"line one\n") == 2
    assert text.count(b"line two\n") == 2
    assert text.endswith(b"RESTORED=-1 STATUS=0\n")


CHILD_ALIVE_SIDE = """
import os, signal, sys, time
from pysandbox.oci.console import make_controlling_terminal, open_pty, proxy_terminal
master, slave_path = open_pty()
pid = os.fork()
if pid == 0:
    os.close(master)
    make_controlling_terminal(os.open(slave_path, os.O_RDWR | os.O_NOCTTY))
    # A daemon keeps the slave open after the main process is gone.
    os.execv("/bin/sh", ["sh", "-c", "sleep 30 & echo main done"])
status = []
def alive():
    if status:
        return False
    got, st = os.waitpid(pid, os.WNOHANG)
    if got:
        status.append(st)
        return False
    return True
start = time.monotonic()
proxy_terminal(master, child_alive=alive)
took = time.monotonic() - start
os.killpg(pid, signal.SIGKILL)  # the container's session: the daemon goes too
os.write(1, b"\\nRETURNED after %.1fs\\n" % took)
"""


def test_proxy_terminal_stops_when_child_is_gone() -> None:
    child = subprocess.Popen(
        [PY, "-c", CHILD_ALIVE_SIDE],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    assert b"main done" in out
    took = float(out.split(b"RETURNED after ")[1].split(b"s")[0])
    assert took < 5


def test_proxy_terminal_restores_tty_on_exception() -> None:
    outer_master, outer_slave = os.openpty()
    master, slave_path = open_pty()
    slave = os.open(slave_path, os.O_RDWR | os.O_NOCTTY)  # keeps the pty alive
    before = termios.tcgetattr(outer_slave)
    handler_before = signal.getsignal(signal.SIGWINCH)

    def boom() -> bool:
        raise RuntimeError("boom")

    try:
        with pytest.raises(RuntimeError, match="boom"):
            proxy_terminal(master, stdin_fd=outer_slave, stdout_fd=outer_slave, child_alive=boom)
        assert termios.tcgetattr(outer_slave) == before
        assert signal.getsignal(signal.SIGWINCH) == handler_before
        assert os.get_blocking(master)
    finally:
        for fd in (slave, master, outer_slave, outer_master):
            os.close(fd)
