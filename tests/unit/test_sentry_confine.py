"""The sentry's self-confinement (sentry/confine.py), for real, in forked children.

Every test confines a forked child (never this process) and looks at what it
can still do: read /proc, serve a sibling's notifications, signal it; and
what it cannot: read /etc, write anywhere, execve, fork, mount, unshare.
Refused-by-seccomp calls kill the child with SIGSYS; Landlock refusals are
EACCES (seen in ``trial`` mode, where seccomp only logs).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from pysandbox.oci import kernel
from pysandbox.oci.kernel import CAP_DAC_READ_SEARCH, CAP_KILL, CAP_SYS_PTRACE
from pysandbox.sentry import bpf, harness
from pysandbox.sentry.confine import (
    ALLOWED,
    CONSTRAINED,
    SENTRY_CAPABILITIES,
    Confinement,
    confine,
)
from tests.forked import run_in_child

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (capabilities)")

CAP_SYS_ADMIN = 21
NR_GETPPID = 110
NR_GETCPU = 309
SECRET = b"the workload's argument"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def raw_syscall(nr: int, *args: int) -> tuple[int, int]:
    ctypes.set_errno(0)
    ret = _libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args))
    return int(ret), ctypes.get_errno() if ret == -1 else 0


def status_fields() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def confined(
    body: Callable[[], Any],
    *,
    read_paths: Iterable[str] = ("/proc",),
    keep_caps: Iterable[int] = SENTRY_CAPABILITIES,
    trial: bool = False,
    landlock: bool = False,
) -> tuple[int, Any]:
    """Confine a forked child, then run body there: (wait status, body's JSON result)."""

    def child() -> Any:
        conf = Confinement(
            read_paths=list(read_paths), keep_caps=keep_caps, trial=trial, landlock=landlock
        )
        report = conf.apply()
        return {"report": report.summary(), "body": body()}

    return run_in_child(child)


def try_errno(fn: Callable[[], object]) -> int:
    """0 if fn() worked, else the errno it failed with."""
    try:
        fn()
    except OSError as e:
        return e.errno or -1
    return 0


def killed_by_seccomp(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS


# --- what it can and cannot read and write -----------------------------------------


def test_only_the_read_paths_are_readable() -> None:
    def body() -> Any:
        with open("/proc/self/status") as f:
            proc = f.read(4)
        return {
            "passwd": try_errno(lambda: open("/etc/passwd").close()),
            "root": sorted(os.listdir("/")),
            "proc": proc,
            "proc_other": try_errno(lambda: open(f"/proc/{os.getppid()}/stat").close()),
            "proc_listdir": try_errno(lambda: os.listdir("/proc/self/fd")),
            "cgroup": try_errno(lambda: os.listdir("/sys/fs/cgroup")),
            # its own root through /proc is the new one
            "via_proc_root": try_errno(lambda: open("/proc/self/root/etc/passwd").close()),
        }

    status, out = confined(body, read_paths=("/proc", "/sys/fs/cgroup", "/does/not/exist"))
    assert status == 0, out
    assert out["body"] == {
        "passwd": errno.ENOENT,
        "root": ["proc", "sys"],
        "proc": "Name",
        "proc_other": 0,
        "proc_listdir": 0,
        "cgroup": 0,
        "via_proc_root": errno.ENOENT,
    }
    assert "fs=private read-only root" in out["report"]
    assert "read=/proc:/sys/fs/cgroup " in out["report"]


def test_nothing_can_be_written_or_executed() -> None:
    # trial: seccomp only logs, so what is refused here is refused by the mounts.
    host_file = f"/tmp/pysandbox-confine-{os.getpid()}"

    def body() -> Any:
        return {
            "create": try_errno(
                lambda: os.close(os.open(host_file, os.O_WRONLY | os.O_CREAT, 0o600))
            ),
            "mkdir": try_errno(lambda: os.mkdir("/new")),
            "write_proc": try_errno(lambda: open("/proc/self/comm", "w").close()),
            "execve": try_errno(lambda: os.execv("/bin/true", ["true"])),
        }

    status, out = confined(body, trial=True)
    assert status == 0, out
    assert out["body"] == {
        "create": errno.ENOENT,  # no /tmp in the new root
        "mkdir": errno.EROFS,
        "write_proc": errno.EROFS,
        "execve": errno.ENOENT,
    }
    assert not os.path.exists(host_file)
    # the host's mounts are untouched (the tmpfs went over /tmp of the new namespace)
    with open("/proc/self/mountinfo") as f:
        assert "sentry-root" not in f.read()


def test_landlock_mode_refuses_reads_writes_execute_and_tcp() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    def body() -> Any:
        s = socket.socket()
        try:
            return {
                "passwd": try_errno(lambda: open("/etc/passwd").close()),
                "proc": try_errno(lambda: open("/proc/self/status").close()),
                "create": try_errno(
                    lambda: os.close(os.open("/tmp/x-confine", os.O_WRONLY | os.O_CREAT))
                ),
                "execve": try_errno(lambda: os.execv("/bin/true", ["true"])),
                "connect": try_errno(lambda: s.connect(("127.0.0.1", port))),
            }
        finally:
            s.close()

    try:
        status, out = confined(body, trial=True, landlock=True)
    finally:
        server.close()
    assert status == 0, out
    assert out["body"] == {
        "passwd": errno.EACCES,
        "proc": 0,
        "create": errno.EACCES,
        "execve": errno.EACCES,
        "connect": errno.EACCES,
    }
    assert "fs=landlock" in out["report"]


def test_fds_opened_before_keep_working() -> None:
    r, w = os.pipe()

    def body() -> Any:
        return os.write(w, b"logged")

    status, out = confined(body)
    os.close(w)
    assert status == 0, out
    assert os.read(r, 100) == b"logged"
    os.close(r)


# --- capabilities, no_new_privs, dumpable, seccomp mode ------------------------------


def test_status_shows_the_confinement() -> None:
    status, out = confined(status_fields)
    assert status == 0, out
    fields = out["body"]
    kept = sum(1 << c for c in SENTRY_CAPABILITIES)
    for name in ("CapEff", "CapPrm", "CapBnd"):
        value = int(fields[name], 16)
        assert value & ~kept == 0, (name, fields[name])
        assert not value >> CAP_SYS_ADMIN & 1
        assert value >> CAP_SYS_PTRACE & 1
    assert int(fields["CapInh"], 16) == 0
    assert int(fields["CapAmb"], 16) == 0
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"] == "2"
    assert "caps=CAP_DAC_READ_SEARCH,CAP_KILL,CAP_SYS_PTRACE" in out["report"]


def test_not_dumpable() -> None:
    status, out = confined(lambda: kernel.prctl(kernel.PR_GET_DUMPABLE))
    # prctl is not on the allowlist: asking is itself fatal. The flag is
    # checked from outside instead, below.
    assert killed_by_seccomp(status), (status, out)

    r, w = os.pipe()
    go_r, go_w = os.pipe()

    def body() -> Any:
        os.write(w, b"x")
        os.read(go_r, 1)  # wait while the parent looks
        return True

    pid = os.fork()
    if pid == 0:
        try:
            confine(read_paths=["/proc"])
            body()
        finally:
            os._exit(0)
    try:
        os.read(r, 1)
        st = os.stat(f"/proc/{pid}/mem")
        # A non-dumpable task's /proc files belong to root and ptrace access
        # needs CAP_SYS_PTRACE: nothing of the same uid can read its memory.
        assert (st.st_uid, st.st_gid) == (0, 0)
        with open(f"/proc/{pid}/status") as f:
            assert "Seccomp:\t2" in f.read()
    finally:
        os.write(go_w, b"g")
        os.waitpid(pid, 0)
        for fd in (r, w, go_r, go_w):
            os.close(fd)


# --- calls outside the allowlist kill -----------------------------------------------


def _mount() -> None:
    kernel.mount("none", "/tmp", "tmpfs")


def _unshare() -> None:
    kernel.unshare(kernel.CLONE_NEWNS)


def _execve() -> None:
    os.execv("/bin/true", ["true"])


def _fork() -> None:
    if os.fork() == 0:
        os._exit(0)


def _ptrace() -> None:
    raw_syscall(101, 16, os.getppid())  # PTRACE_ATTACH


def _bpf() -> None:
    raw_syscall(kernel.SYS_BPF, 0, 0, 0)


def _io_uring() -> None:
    raw_syscall(425, 1, 0)  # io_uring_setup


def _write_open() -> None:
    os.open("/proc/self/comm", os.O_WRONLY)


def _socket() -> None:
    socket.socket()


def _exec_mapping() -> None:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC)


def _setuid() -> None:
    os.setuid(1)


def _ioctl_tty() -> None:
    fcntl.ioctl(0, 0x5412, b"\0")  # TIOCSTI


@pytest.mark.parametrize(
    "call",
    [
        _mount,
        _unshare,
        _execve,
        _fork,
        _ptrace,
        _bpf,
        _io_uring,
        _write_open,
        _socket,
        _exec_mapping,
        _setuid,
        _ioctl_tty,
    ],
)
def test_forbidden_calls_kill_the_sentry(call: Callable[[], None]) -> None:
    status, out = confined(lambda: call())
    assert killed_by_seccomp(status), (status, out)


def test_threads_work_after_confinement() -> None:
    # glibc tries clone3 first (ENOSYS here), then clone with CLONE_THREAD.
    def body() -> Any:
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(os.getpid())) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(results)

    status, out = confined(body)
    assert status == 0, out
    assert out["body"] == 3


def test_refuses_to_run_with_threads() -> None:
    def child() -> Any:
        stop = threading.Event()
        t = threading.Thread(target=stop.wait)
        t.start()
        try:
            return try_errno(lambda: confine(read_paths=["/proc"]))
        except RuntimeError as e:
            return str(e)
        finally:
            stop.set()
            t.join()

    status, out = run_in_child(child)
    assert status == 0, out
    assert "threads" in out


def test_allowlist_has_no_dangerous_calls() -> None:
    names = set(ALLOWED) | {name for name, _why, _alts in CONSTRAINED}
    for bad in (
        "execve",
        "execveat",
        "fork",
        "vfork",
        "clone3",
        "mount",
        "umount2",
        "ptrace",
        "unshare",
        "setns",
        "bpf",
        "io_uring_setup",
        "io_uring_enter",
        "capset",
        "prctl",
        "setuid",
        "open",
        "unlink",
        "unlinkat",
        "rename",
        "socket",
        "connect",
        "bind",
        "landlock_restrict_self",
        "init_module",
        "kexec_load",
    ):
        assert bad not in names, bad


# --- the sentry's own work still works, and needs the capabilities it keeps ----------


def _serve_sibling(keep_caps: Iterable[int], landlock: bool = False) -> tuple[int, Any]:
    """Confined child serving a sibling of another uid; returns what it could do.

    Before confining, the child starts a task under a routing filter; that
    task becomes uid 65534 (dumpable, so its /proc files are its own),
    calls getppid(SECRET, len) and getcpu() (both routed to the listener),
    and waits to be killed. After confining, the child serves both calls:
    RECV, process_vm_readv of SECRET, /proc/PID/fdinfo, NOTIF_ID_VALID,
    ADDFD (getcpu answers with an fd), SEND; then SIGKILLs the task.
    """

    def child() -> Any:
        got_r, got_w = os.pipe()

        def task() -> int:
            # Only got_w: an inherited copy of run_in_child's pipe would keep
            # the test waiting for as long as this task lives.
            os.closerange(3, got_w)
            os.closerange(got_w + 1, 1 << 16)
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            kernel.prctl(kernel.PR_SET_DUMPABLE, 1)
            kernel.prctl(kernel.PR_SET_PDEATHSIG, signal.SIGKILL)  # after setresuid cleared it
            buf = ctypes.create_string_buffer(SECRET)
            ret, err = raw_syscall(NR_GETPPID, ctypes.addressof(buf), len(SECRET))
            fd, fd_err = raw_syscall(NR_GETCPU)
            text = os.read(fd, 64).decode(errors="replace") if fd >= 0 else ""
            os.write(got_w, json.dumps([ret, err, fd_err, text]).encode())
            os.close(got_w)
            while True:  # until killed
                signal.pause()

        prog = bpf.routing_filter(notify=[NR_GETPPID, NR_GETCPU])
        pid, listener = harness.spawn_under_filter(prog, task)
        os.close(got_w)
        conf = Confinement(read_paths=["/proc"], keep_caps=keep_caps, landlock=landlock)
        report = conf.apply()
        ioctls = kernel.NotifIoctls()  # after confinement: SECCOMP_GET_NOTIF_SIZES
        seen: dict[str, Any] = {"report": report.summary(), "pid": pid}
        for _ in range(2):
            notif_id, npid, _flags, nr, _arch, _ip, a0, a1, *_rest = ioctls.recv(listener)
            if nr == NR_GETPPID:
                try:
                    seen["read"] = kernel.process_vm_readv(npid, a0, a1).decode()
                except OSError as e:
                    seen["read"] = e.errno
                try:
                    with open(f"/proc/{npid}/fdinfo/0") as f:
                        seen["fdinfo"] = f.read().split("\n", 1)[0]
                except OSError as e:
                    seen["fdinfo"] = e.errno
                try:
                    seen["fd_link"] = os.readlink(f"/proc/{npid}/fd/{got_w}")
                except OSError as e:
                    seen["fd_link"] = e.errno
                seen["valid"] = ioctls.id_valid(listener, notif_id)
                ioctls.send(listener, notif_id, 42, 0)
            else:
                try:
                    fd = os.open(f"/proc/{npid}/comm", os.O_RDONLY | os.O_CLOEXEC)
                except OSError as e:
                    ioctls.send(listener, notif_id, 0, -(e.errno or errno.EIO))
                    continue
                kernel.notif_addfd(listener, notif_id, fd, kernel.SECCOMP_ADDFD_FLAG_SEND)
                os.close(fd)
        data = b""
        while chunk := os.read(got_r, 4096):
            data += chunk
        seen["task"] = json.loads(data)
        seen["kill"] = try_errno(lambda: os.kill(pid, signal.SIGKILL))
        pidfd = os.pidfd_open(pid)
        seen["pidfd_kill"] = try_errno(lambda: kernel.pidfd_send_signal(pidfd, signal.SIGKILL))
        return seen

    status, out = run_in_child(child)
    if isinstance(out, dict) and "pid" in out:  # the task is ours to end, whatever happened
        try:
            os.kill(out["pid"], signal.SIGKILL)
        except ProcessLookupError:
            pass
    return status, out


def test_serving_a_sibling_of_another_uid_works() -> None:
    status, out = _serve_sibling(SENTRY_CAPABILITIES)
    assert status == 0, out
    assert out["read"] == SECRET.decode()
    assert out["fdinfo"].startswith("pos:")
    assert out["fd_link"].startswith("pipe:")
    assert out["valid"] is True
    assert out["kill"] == 0
    ret, err, fd_err, comm = out["task"]
    assert (ret, err, fd_err) == (42, 0, 0)
    assert comm.strip()  # the fd the sentry opened and installed reads the task's comm


@pytest.mark.parametrize(
    ("dropped", "key", "expected"),
    [
        (CAP_SYS_PTRACE, "read", errno.EPERM),
        (CAP_DAC_READ_SEARCH, "fd_link", errno.EACCES),
        (CAP_KILL, "kill", errno.EPERM),
        (CAP_KILL, "pidfd_kill", errno.EPERM),
    ],
)
def test_each_kept_capability_is_needed(dropped: int, key: str, expected: int) -> None:
    status, out = _serve_sibling(SENTRY_CAPABILITIES - {dropped})
    assert status == 0, out
    assert out[key] == expected


def test_landlock_would_cut_the_sentry_off_its_workload() -> None:
    # Why the sentry's file system confinement is a private root and not
    # Landlock: a Landlock domain may not ptrace-access tasks outside it.
    status, out = _serve_sibling(SENTRY_CAPABILITIES, landlock=True)
    assert status == 0, out
    assert out["read"] == errno.EPERM
    assert out["fdinfo"] == errno.EACCES
    assert out["kill"] == 0  # signals are not scoped (no LANDLOCK_SCOPE_SIGNAL)


def test_memfd_create_is_allowed_only_without_mfd_exec() -> None:
    # The virtual /proc files are memory files (syscalls/procfs.py).
    def body() -> Any:
        fd = os.memfd_create("meminfo", os.MFD_CLOEXEC)
        os.write(fd, b"MemTotal: 1 kB\n")
        os.lseek(fd, 0, os.SEEK_SET)
        data = os.read(fd, 64)
        os.close(fd)
        return data.decode()

    status, out = confined(body)
    assert status == 0, out
    assert out["body"] == "MemTotal: 1 kB\n"

    mfd_exec = 0x10  # a memory file that may be executed: never

    status, _out = confined(lambda: os.memfd_create("x", os.MFD_CLOEXEC | mfd_exec))
    assert killed_by_seccomp(status)
