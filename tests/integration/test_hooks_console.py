"""Lifecycle hooks and terminals with real containers.

Hooks: each hook is a shell script that appends its name to a log, saves its
stdin (the state JSON), its environment and the namespaces it runs in; the
log directory is bind-mounted into the container so startContainer (which
runs inside it) writes to the same place.

Console: the test plays containerd's shim (a console socket receiving the pty
master) and a person at a terminal (``run`` driven from a pty)."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci.console import (
    get_winsize,
    listen_console_socket,
    recv_pty_master,
    set_winsize,
)
from tests.conftest import PYSANDBOX, Bundle, Runner, wait_for
from tests.integration.inside import mine_left, ns_inode

HOOK_SCRIPT = r"""
k=$1; d=$2
echo "$k" >> "$d/order"
cat > "$d/$k.json"
readlink /proc/self/ns/mnt > "$d/$k.mnt"
cat /proc/sys/kernel/hostname > "$d/$k.uts"
tr '\0' '\n' < /proc/self/environ > "$d/$k.env"
"""

KINDS = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)
IN_CONTAINER = ("createContainer", "startContainer")


def _hook(kind: str, logdir: str, **extra: Any) -> dict[str, Any]:
    return {
        "path": "/bin/sh",
        "args": ["sh", "-c", HOOK_SCRIPT, "sh", kind, logdir],
        "env": ["PATH=/usr/bin:/bin", f"HOOK_KIND={kind}", "SPACED=a b"],
        **extra,
    }


def _host_mnt() -> int:
    return os.stat("/proc/self/ns/mnt").st_ino


def test_hooks_order_state_env_and_namespaces(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    logdir = tmp_path / "hooklog"
    logdir.mkdir()
    cfg = bundle.config
    cfg["mounts"].append(
        {"destination": "/hooklog", "type": "bind", "source": str(logdir), "options": ["rbind"]}
    )
    # startContainer runs in the container: its path and log dir are the container's
    cfg["hooks"] = {
        k: [_hook(k, "/hooklog" if k == "startContainer" else str(logdir))] for k in KINDS
    }
    bundle.args("sleep", "30")
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    order = logdir / "order"
    assert order.read_text().split() == ["prestart", "createRuntime", "createContainer"]
    pid = int(runtime.state(cid)["pid"])
    container_mnt = os.stat(f"/proc/{pid}/ns/mnt").st_ino
    runtime("start", cid, check=True)
    wait_for(lambda: "poststart" in order.read_text())
    runtime("kill", cid, "KILL", check=True)
    wait_for(lambda: runtime.state(cid)["status"] == "stopped")
    runtime("delete", cid, check=True)
    assert order.read_text().split() == list(KINDS)

    statuses = {
        "prestart": {"creating"},
        "createRuntime": {"creating"},
        "createContainer": {"creating"},
        "startContainer": {"created"},
        "poststart": {"running"},
        "poststop": {"stopped"},
    }
    for kind in KINDS:
        state = json.loads((logdir / f"{kind}.json").read_text())
        assert state["id"] == cid, kind
        assert os.path.realpath(state["bundle"]) == os.path.realpath(bundle.path), kind
        assert state["status"] in statuses[kind], (kind, state["status"])
        if kind == "startContainer":
            # it runs in the container: like runc, it reports its own getpid()
            assert state["pid"] in (pid, 1), kind
        elif kind != "poststop":
            assert state["pid"] == pid, kind
        env = (logdir / f"{kind}.env").read_text().splitlines()
        assert sorted(env) == sorted(_hook(kind, "")["env"]), (kind, env)
        mnt = ns_inode((logdir / f"{kind}.mnt").read_text())
        uts = (logdir / f"{kind}.uts").read_text().strip()
        if kind in IN_CONTAINER:
            assert mnt == container_mnt, kind
            assert uts == cfg["hostname"], kind
        else:
            assert mnt == _host_mnt(), kind
            assert uts == os.uname().nodename, kind


def test_failing_prestart_fails_create_and_leaves_nothing(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    bundle.config["hooks"] = {
        "prestart": [
            {"path": "/bin/sh", "args": ["sh", "-c", "echo network setup failed >&2; exit 3"]}
        ]
    }
    bundle.args("sleep", "30")
    res = runtime("create", "--bundle", str(bundle.path), cid)
    assert res.returncode != 0
    assert "prestart" in res.stderr and "network setup failed" in res.stderr, res.stderr
    assert runtime("state", cid).returncode != 0
    assert not mine_left(tmp_path, cid)


def test_failing_poststop_is_only_a_warning(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    marker = tmp_path / "second-ran"
    bundle.config["hooks"] = {
        "poststop": [
            {"path": "/bin/false"},
            {"path": "/bin/sh", "args": ["sh", "-c", f"touch {marker}"]},
        ]
    }
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode == 0, res.stderr
    assert "poststop" in res.stderr
    assert marker.exists()


def test_hook_timeout(runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path) -> None:
    bundle.config["hooks"] = {
        "createRuntime": [{"path": "/bin/sleep", "args": ["sleep", "30"], "timeout": 1}]
    }
    bundle.args("sleep", "30")
    started = time.monotonic()
    res = runtime("create", "--bundle", str(bundle.path), cid)
    assert time.monotonic() - started < 10
    assert res.returncode != 0 and "timed out" in res.stderr, res.stderr
    assert not mine_left(tmp_path, cid)


def test_failing_create_container_hook(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    bundle.config["hooks"] = {"createContainer": [{"path": "/does/not/exist"}]}
    bundle.args("sleep", "30")
    res = runtime("create", "--bundle", str(bundle.path), cid)
    assert res.returncode != 0 and "createContainer" in res.stderr, res.stderr
    assert not mine_left(tmp_path, cid)


# --- console ----------------------------------------------------------------------------


def read_until(fd: int, needle: bytes, buf: bytearray, timeout: float = 10.0) -> bytes:
    """Read from fd into buf until needle appears (EOF or timeout fails)."""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{needle!r} not seen; got {bytes(buf)!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            chunk = b""
        if not chunk:
            raise AssertionError(f"EOF before {needle!r}; got {bytes(buf)!r}")
        buf += chunk
    return bytes(buf)


def test_console_socket(runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path) -> None:
    proc = bundle.config["process"]
    proc["terminal"] = True
    proc["consoleSize"] = {"height": 33, "width": 111}
    bundle.args("sh")
    sock_path = str(tmp_path / "console.sock")
    listener = listen_console_socket(sock_path)
    master = -1
    try:
        runtime(
            "create", "--bundle", str(bundle.path), "--console-socket", sock_path, cid, check=True
        )
        listener.settimeout(10)
        conn, _ = listener.accept()
        with conn:
            master, name = recv_pty_master(conn)
        assert name
        assert get_winsize(master) == (33, 111)
        runtime("start", cid, check=True)
        buf = bytearray()
        os.write(
            master,
            b"tty; stty size; for f in 0 1 2; do readlink /proc/self/fd/$f; done;"
            b" test -c /dev/console && echo console-$((40+2))\n",
        )
        out = read_until(master, b"console-42", buf).decode()
        lines = [line.strip() for line in out.splitlines()]
        assert "/dev/pts/0" in lines
        assert "33 111" in lines
        assert lines.count("/dev/pts/0") >= 4  # tty plus the three fds
        buf.clear()
        os.write(master, b"echo hi\n")
        out = read_until(master, b"hi\r\n", buf).decode()
        # the terminal echoes the input line, then the shell's output follows
        assert "echo hi" in out
        buf.clear()
        set_winsize(master, 20, 70)
        os.write(master, b"stty size; exit 5\n")
        read_until(master, b"20 70", buf)
        wait_for(lambda: runtime.state(cid)["status"] == "stopped")
    finally:
        listener.close()
        if master >= 0:
            os.close(master)
        runtime("delete", "--force", cid)


def test_terminal_without_console_socket_refused_on_create(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    bundle.config["process"]["terminal"] = True
    bundle.write()
    res = runtime("create", "--bundle", str(bundle.path), cid)
    assert res.returncode != 0 and "console" in res.stderr


def test_run_attached_to_a_pty(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["process"]["terminal"] = True
    bundle.args("sh", "-c", "tty; stty size; read line; echo got:$line; exit 4")
    pid, master = pty.fork()
    if pid == 0:  # pragma: no cover - the child execs at once
        try:
            set_winsize(0, 41, 123)
            os.execv(PYSANDBOX, runtime.cmd("run", "--bundle", str(bundle.path), cid))
        finally:
            os._exit(127)
    try:
        buf = bytearray()
        read_until(master, b"41 123", buf)
        os.write(master, b"typed\n")
        out = read_until(master, b"got:typed", buf).decode()
        assert "/dev/pts/0" in out
        # drain to EOF so the child can finish
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    if not os.read(master, 65536):
                        break
                except OSError:
                    break
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 4
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(master)


@pytest.mark.parametrize("size", [None, (25, 80)])
def test_console_size_default(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path, size: tuple[int, int] | None
) -> None:
    proc = bundle.config["process"]
    proc["terminal"] = True
    if size is not None:
        proc["consoleSize"] = {"height": size[0], "width": size[1]}
    bundle.args("sh", "-c", "stty size 2>/dev/null; echo end")
    sock_path = str(tmp_path / "c.sock")
    listener = listen_console_socket(sock_path)
    master = -1
    try:
        runtime(
            "create", "--bundle", str(bundle.path), "--console-socket", sock_path, cid, check=True
        )
        listener.settimeout(10)
        conn, _ = listener.accept()
        with conn:
            master, _name = recv_pty_master(conn)
        assert get_winsize(master) == (size or (0, 0))
        runtime("start", cid, check=True)
        out = read_until(master, b"end", bytearray()).decode()
        if size is not None:
            assert f"{size[0]} {size[1]}" in out
        wait_for(lambda: runtime.state(cid)["status"] == "stopped")
    finally:
        listener.close()
        if master >= 0:
            os.close(master)
        runtime("delete", "--force", cid)


def test_poststart_waits_for_a_slow_start_container_hook(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """poststart runs after the workload is executed (runtime-spec), so after
    every startContainer hook, however long one takes: start waits for init's
    end of the exec fifo to close, which its execve does."""
    logdir = tmp_path / "hooklog"
    logdir.mkdir()
    bundle.config["mounts"].append(
        {"destination": "/hooklog", "type": "bind", "source": str(logdir), "options": ["rbind"]}
    )
    bundle.config["hooks"] = {
        "startContainer": [
            {"path": "/bin/sh", "args": ["sh", "-c", "sleep 0.5; echo start >> /hooklog/order"]}
        ],
        "poststart": [{"path": "/bin/sh", "args": ["sh", "-c", f"echo post >> {logdir}/order"]}],
    }
    bundle.args("sleep", "30")
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    try:
        runtime("start", cid, check=True)
        assert (logdir / "order").read_text().split() == ["start", "post"]
    finally:
        runtime("delete", "-f", cid)
