"""Process and signal handlers against real seccomp listeners (see test_sentry_loop)."""

from __future__ import annotations

import ctypes
import errno
import os
import resource
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from pysandbox.oci import kernel
from pysandbox.sentry.tasks import TaskTable
from pysandbox.syscalls import process
from pysandbox.syscalls import signal as signal_handlers
from tests.unit.test_sentry_loop import raw_syscall, serve_child
from tests.unit.test_tasks import cgroup

__all__ = ["cgroup"]  # the fixture

CAP_SYS_RESOURCE = 24
RLIMIT_NOFILE = 7


def _routes() -> dict[int, Any]:
    tasks = TaskTable()
    return {**process.routes(tasks), **signal_handlers.routes(tasks)}


def _drop_sys_resource() -> None:
    eff, perm, inh = kernel.capget()
    kernel.capset(eff & ~(1 << CAP_SYS_RESOURCE), perm, inh)


def test_a_racing_thread_cannot_raise_the_hard_limit() -> None:
    """setrlimit's struct is read once: a buffer flipped between an allowed and a
    raising value either is refused or changes nothing; never raised."""

    def body() -> Any:
        sys.setswitchinterval(1e-5)
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        _drop_sys_resource()
        good = (ctypes.c_uint64 * 2)(64, hard)
        bad = (ctypes.c_uint64 * 2)(64, hard + 1000)
        buf = (ctypes.c_uint64 * 2)(64, hard)
        stop = threading.Event()

        def flipper() -> None:
            while not stop.is_set():
                ctypes.memmove(buf, bad, 16)
                ctypes.memmove(buf, good, 16)

        t = threading.Thread(target=flipper)
        t.start()
        ok = denied = 0
        raised: list[int] = []
        out = (ctypes.c_uint64 * 2)()
        for _ in range(300):
            ret, err = raw_syscall(kernel.SYS_SETRLIMIT, RLIMIT_NOFILE, ctypes.addressof(buf))
            if ret == 0:
                ok += 1
            elif err == errno.EPERM:
                denied += 1
            raw_syscall(kernel.SYS_GETRLIMIT, RLIMIT_NOFILE, ctypes.addressof(out))
            if out[1] != hard:
                raised.append(out[1])
        stop.set()
        t.join()
        return {"ok": ok, "denied": denied, "raised": raised}

    run = serve_child(body, _routes())
    assert run.status == 0, run.log
    assert run.report["raised"] == []
    assert run.report["ok"] + run.report["denied"] == 300
    assert run.report["ok"] > 0


def test_limits_and_decisions_answer_like_linux(cgroup: Path) -> None:
    def body() -> Any:
        # The sandboxed child's cgroup is the container (no init in this harness).
        (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        out = (ctypes.c_uint64 * 2)()
        new = (ctypes.c_uint64 * 2)(10, 5)
        got: dict[str, Any] = {}
        got["get"] = raw_syscall(kernel.SYS_GETRLIMIT, RLIMIT_NOFILE, ctypes.addressof(out))
        got["native"] = list(resource.getrlimit(resource.RLIMIT_NOFILE)) == [out[0], out[1]]
        got["bad_res"] = raw_syscall(kernel.SYS_GETRLIMIT, 16, ctypes.addressof(out))
        got["soft_above_hard"] = raw_syscall(
            kernel.SYS_PRLIMIT64, 0, RLIMIT_NOFILE, ctypes.addressof(new), 0
        )
        got["efault"] = raw_syscall(kernel.SYS_SETRLIMIT, RLIMIT_NOFILE, 8)
        new[0], new[1] = 1 << 40, 1 << 40
        got["nr_open"] = raw_syscall(
            kernel.SYS_PRLIMIT64, 0, RLIMIT_NOFILE, ctypes.addressof(new), 0
        )
        got["personality"] = raw_syscall(kernel.SYS_PERSONALITY, 0x0040000)
        got["set_mm"] = raw_syscall(kernel.SYS_PRCTL, 35, 1, 0, 0, 0)
        got["listener"] = raw_syscall(kernel.SYS_SECCOMP, 1, 8, 0)
        got["seccomp_op"] = raw_syscall(kernel.SYS_SECCOMP, 7, 0, 0)
        got["rusage_who"] = raw_syscall(kernel.SYS_GETRUSAGE, 7, ctypes.addressof(out))
        got["times"] = raw_syscall(kernel.SYS_TIMES, 0)[0] > 0
        cpu = ctypes.c_uint32(999)
        got["getcpu"] = raw_syscall(kernel.SYS_GETCPU, ctypes.addressof(cpu), 0, 0)
        got["cpu"] = cpu.value < os.cpu_count()  # type: ignore[operator]
        child = os.fork()
        if child == 0:
            signal.pause()
            os._exit(0)
        pidfd = os.pidfd_open(child)
        got["pidfd_kill"] = raw_syscall(kernel.SYS_PIDFD_SEND_SIGNAL, pidfd, 15, 0, 0)
        got["pidfd_status"] = os.waitpid(child, 0)[1]
        got["pidfd_ebadf"] = raw_syscall(kernel.SYS_PIDFD_SEND_SIGNAL, 0, 15, 0, 0)
        return got

    run = serve_child(body, _routes())
    assert run.status == 0, run.log
    r = run.report
    assert r["get"] == [0, 0] and r["native"]
    assert r["bad_res"] == [-1, errno.EINVAL]
    assert r["soft_above_hard"] == [-1, errno.EINVAL]
    assert r["efault"] == [-1, errno.EFAULT]
    assert r["nr_open"] == [-1, errno.EPERM]
    assert r["personality"] == [-1, errno.EPERM]
    assert r["set_mm"] == [-1, errno.EPERM]
    assert r["listener"] == [-1, errno.EBUSY]
    assert r["seccomp_op"] == [-1, errno.EINVAL]
    assert r["rusage_who"] == [-1, errno.EINVAL]
    assert r["times"] and r["cpu"]
    assert r["getcpu"] == [0, 0]
    assert r["pidfd_kill"] == [0, 0]
    assert os.WTERMSIG(r["pidfd_status"]) == 15
    assert r["pidfd_ebadf"] == [-1, errno.EBADF]
