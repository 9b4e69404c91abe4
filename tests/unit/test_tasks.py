"""The sentry's task table against real processes: pid namespaces, cgroups, threads."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysandbox.oci import kernel
from pysandbox.sentry.tasks import TaskTable, start_time
from tests.conftest import ID_PREFIX, wait_for

CLONE_NEWPID = 0x20000000


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(x) for x in text.split()]


def _threads(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


class Tree:
    """A child that made a pid namespace: ``outer`` (host ns) -> ``init`` (pid 1)
    -> ``second`` (pid 2) with one extra thread (tid 3). All block on a pipe."""

    def __init__(self) -> None:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # outer: host pid namespace
            code = 1
            try:
                os.close(w)
                kernel.unshare(CLONE_NEWPID)
                init = os.fork()
                if init == 0:  # pid 1 of the new namespace
                    second = os.fork()
                    if second == 0:
                        threading.Thread(target=os.read, args=(r, 1), daemon=True).start()
                        os.read(r, 1)
                        os._exit(0)
                    os.read(r, 1)
                    os.waitpid(second, 0)
                    os._exit(0)
                os.read(r, 1)
                os.waitpid(init, 0)
                code = 0
            finally:
                os._exit(code)
        os.close(r)
        self.w = w
        self.outer = pid
        self.init = wait_for(lambda: (_children(pid) or [0])[0])
        self.second = wait_for(lambda: (_children(self.init) or [0])[0])
        threads = wait_for(lambda: len(_threads(self.second)) == 2 and _threads(self.second))
        self.thread = next(t for t in threads if t != self.second)

    def close(self) -> None:
        os.close(self.w)
        for pid in (self.second, self.init):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        os.waitpid(self.outer, 0)


@pytest.fixture
def tree() -> Iterator[Tree]:
    t = Tree()
    try:
        yield t
    finally:
        t.close()


def test_translation_into_a_pid_namespace(tree: Tree) -> None:
    tasks = TaskTable()
    assert tasks.to_host(tree.second, 1) == tree.init
    assert tasks.to_host(tree.init, 2) == tree.second
    assert tasks.to_host(tree.init, 3) == tree.thread  # a tid, not only processes
    assert tasks.to_host(tree.init, 4) is None
    assert tasks.to_host(tree.init, 0) is None
    assert tasks.to_host(tree.init, -1) is None
    # The caller in the host namespace: host pids are its own.
    me = os.getpid()
    assert tasks.to_host(me, tree.second) == tree.second
    assert tasks.to_host(me, 1 << 22) is None


def test_a_stale_cache_entry_is_never_trusted(tree: Tree) -> None:
    tasks = TaskTable()
    assert tasks.to_host(tree.init, 2) == tree.second
    ns = tasks.pidns(tree.init)
    # Pretend pid 2 of that namespace was once another task (the same host
    # tid with another start time, or another tid): both are looked up again.
    tasks._cache[(ns, 2)] = (tree.second, start_time(tree.second) + 1)
    assert tasks.to_host(tree.init, 2) == tree.second
    tasks._cache[(ns, 2)] = (os.getpid(), start_time(os.getpid()))
    assert tasks.to_host(tree.init, 2) == os.getpid()  # a valid entry is used as is
    tasks._cache[(ns, 2)] = (tree.outer, 1)
    assert tasks.to_host(tree.init, 2) == tree.second


def test_membership_with_an_own_pid_namespace(tree: Tree) -> None:
    tasks = TaskTable()
    tasks.set_init(tree.init)
    assert tasks.own_pidns
    assert tasks.contains(tree.init)
    assert tasks.contains(tree.second)
    assert tasks.contains(tree.thread)
    assert not tasks.contains(tree.outer)  # the parent, outside the namespace
    assert not tasks.contains(os.getpid())
    assert not tasks.contains(1)
    assert not tasks.contains(1 << 22)  # no such task
    assert tasks.confined(tree.second)
    assert not tasks.confined(os.getpid())
    assert tasks.lookup(tree.second, 2) == tree.second
    assert tasks.may_target(tree.second, 12345)  # the kernel confines it
    assert tasks.may_target(tree.second, -1)
    assert not tasks.may_target(os.getpid(), tree.outer)
    assert tasks.may_target(os.getpid(), tree.second)
    # An excluded process is never the container's, by any of its threads,
    # and while one is visible the kernel's confinement is not relied upon.
    tasks.exclude(tree.second)
    assert not tasks.contains(tree.second)
    assert not tasks.contains(tree.thread)
    assert tasks.contains(tree.init)
    assert not tasks.confined(tree.init)
    assert tasks.lookup(tree.init, 2) is None
    assert not tasks.may_target(tree.init, 3)


def test_status_and_process_groups(tree: Tree) -> None:
    tasks = TaskTable()
    st = tasks.status(tree.thread)
    assert st.tgid == tree.second
    assert st.nspid == (tree.thread, 3)
    assert st.uids == (0, 0, 0, 0)
    assert tasks.status(os.getpid()).has_cap(kernel.cap_number("CAP_SYS_ADMIN"))
    pgrp = os.getpgid(tree.second)
    assert tree.second in tasks.process_group(pgrp)
    assert os.getpid() in tasks.process_group(os.getpgrp())


@pytest.fixture
def cgroup() -> Iterator[Path]:
    """A fresh cgroup (pids controller, v1 or v2) for the test's processes."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    base = Path("/sys/fs/cgroup") if v2 else Path("/sys/fs/cgroup/pids")
    path = base / (ID_PREFIX + "tasks-" + uuid.uuid4().hex[:8])
    path.mkdir()
    try:
        yield path
    finally:
        for _ in range(100):
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.02)


def _sleeper() -> int:
    pid = os.fork()
    if pid == 0:
        threading.Thread(target=time.sleep, args=(100,), daemon=True).start()
        time.sleep(100)
        os._exit(0)
    wait_for(lambda: len(_threads(pid)) == 2)
    return pid


def test_membership_in_a_shared_pid_namespace(cgroup: Path) -> None:
    inside, sentry, outside = _sleeper(), _sleeper(), _sleeper()
    try:
        for pid in (inside, sentry):
            (cgroup / "cgroup.procs").write_text(str(pid))
        tasks = TaskTable()
        # Before init is known, the caller is the reference.
        assert tasks.contains(sentry, caller=inside)
        assert not tasks.contains(outside, caller=inside)
        tasks.set_init(inside)
        tasks.exclude(sentry)
        assert not tasks.own_pidns
        assert tasks.contains(inside)
        assert all(tasks.contains(t) for t in _threads(inside))
        assert not tasks.contains(sentry)
        assert not any(tasks.contains(t) for t in _threads(sentry))  # its threads too
        assert not tasks.contains(outside)
        assert not tasks.contains(os.getpid())
        assert not tasks.contains(1)
        assert not tasks.confined(inside)
        assert tasks.lookup(inside, inside) == inside
        assert tasks.lookup(inside, outside) is None
        assert tasks.lookup(inside, sentry) is None
        assert tasks.may_target(inside, _threads(inside)[1])
        assert not tasks.may_target(inside, os.getpid())
        # A sub-cgroup of the container's is still the container.
        sub = cgroup / "sub"
        sub.mkdir()
        try:
            (sub / "cgroup.procs").write_text(str(inside))
            assert tasks.contains(inside)
            (cgroup / "cgroup.procs").write_text(str(inside))
        finally:
            sub.rmdir()
        # A zombie has left its cgroups: its parent decides.
        zombie = os.fork()
        if zombie == 0:
            os._exit(0)
        wait_for(lambda: tasks.stat_fields(zombie)[0] == b"Z")
        assert not tasks.contains(zombie)  # ours, and we are not the container's
        os.waitpid(zombie, 0)
        parent = subprocess.Popen(
            ["sh", "-c", "read x; true & exec sleep 100"], stdin=subprocess.PIPE
        )
        try:
            (cgroup / "cgroup.procs").write_text(str(parent.pid))
            assert parent.stdin is not None
            parent.stdin.write(b"go\n")
            parent.stdin.close()
            child = wait_for(lambda: _children(parent.pid) and _children(parent.pid)[0])
            wait_for(lambda: tasks.stat_fields(child)[0] == b"Z")
            assert (
                Path(f"/proc/{child}/cgroup").read_text()
                != Path(f"/proc/{parent.pid}/cgroup").read_text()
            )
            assert tasks.contains(child)
        finally:
            parent.kill()
            parent.wait()
        # Process groups: all of it must be the container's.
        os.setpgid(inside, inside)
        assert tasks.group_contained(inside, inside)
        os.setpgid(outside, inside)
        assert not tasks.group_contained(inside, inside)
        os.setpgid(outside, outside)
        assert tasks.group_contained(inside, inside)
        assert not tasks.group_contained(outside, inside)
    finally:
        for pid in (inside, sentry, outside):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
