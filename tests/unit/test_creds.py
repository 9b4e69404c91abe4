"""The per-task credential cache (syscalls/creds.py), on real tasks: what is
kept, what proves it, and what makes it forget."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator

import pytest

from pysandbox.policies.compiler import load_profile
from pysandbox.syscalls import table
from pysandbox.syscalls.creds import CHANGE_ANY, CHANGE_OWN, CredCache, StatusFiles


class CountingStatus(StatusFiles):
    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def read(self, tid: int) -> bytes:
        self.reads += 1
        return super().read(tid)


@pytest.fixture
def cache() -> Iterator[tuple[CredCache, CountingStatus]]:
    status = CountingStatus()
    c = CredCache(status)
    try:
        yield c, status
    finally:
        c.close()


def _child(uid: int = 0) -> int:
    """A task that sleeps (after taking ``uid``), to be killed by the test."""
    pid = os.fork()
    if pid == 0:
        if uid:
            os.setresuid(uid, uid, uid)
        time.sleep(30)
        os._exit(0)
    return pid


def _reap(pid: int) -> None:
    os.kill(pid, 9)
    os.waitpid(pid, 0)


def test_credentials_are_read_once_then_proven_by_the_pidfd(
    cache: tuple[CredCache, CountingStatus],
) -> None:
    c, status = cache
    pid = _child()
    try:
        first = c.get(pid)
        assert status.reads == 1 and pid in c.entries
        assert c.get(pid) == first and c.get(pid) == first
        assert status.reads == 1  # no status read for a known task
        assert c.fresh(pid) == first and status.reads == 2  # the umask: read afresh
    finally:
        _reap(pid)
    # gone: the pidfd says so, the entry goes and the tid is not trusted
    with pytest.raises(OSError):
        c.get(pid)
    assert pid not in c.entries


def test_forget_makes_the_next_call_read_the_change(
    cache: tuple[CredCache, CountingStatus],
) -> None:
    c, _status = cache
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # wait until the cache has our root credentials
        os.setresuid(1000, 1000, 1000)  # the parent polls the status file for it
        time.sleep(30)
        os._exit(0)
    os.close(r)
    try:
        assert c.get(pid).fsuid == 0
        os.write(w, b"x")
        deadline = time.monotonic() + 5
        while c.fresh(pid).fsuid != 1000 and time.monotonic() < deadline:
            time.sleep(0.01)
        # fresh() refilled the entry; a stale one is exactly what forget() is for
        c.entries[pid] = (c.entries[pid][0]._replace(fsuid=0), c.entries[pid][1])
        assert c.get(pid).fsuid == 0  # what a missed set*id call would leave
        c.forget(pid)
        assert c.get(pid).fsuid == 1000
        c.forget_all()
        assert not c.entries
    finally:
        os.close(w)
        _reap(pid)


def test_a_leader_with_threads_is_not_kept_its_threads_are(
    cache: tuple[CredCache, CountingStatus],
) -> None:
    c, _status = cache
    started = threading.Event()
    stop = threading.Event()
    tids: list[int] = []

    def thread() -> None:
        tids.append(threading.get_native_id())
        started.set()
        stop.wait(10)

    t = threading.Thread(target=thread)
    t.start()
    try:
        started.wait(5)
        # this process has two threads: an execve in the other one would give
        # it our tid, so our entry could not be proven by our pidfd
        c.get(os.getpid())
        assert os.getpid() not in c.entries
        c.get(tids[0])
        assert tids[0] in c.entries  # a thread that is not a leader keeps its tid
    finally:
        stop.set()
        t.join()
    # (a leader alone in its process is kept: the forked children above)


def test_a_disabled_cache_reads_every_time(cache: tuple[CredCache, CountingStatus]) -> None:
    c, status = cache
    c.enabled = False
    c.get(os.getpid())
    c.get(os.getpid())
    assert status.reads == 2 and not c.entries


def test_the_changing_calls_are_named_and_numbered_as_the_table_says() -> None:
    for name, nr in {**CHANGE_OWN, **CHANGE_ANY}.items():
        sc = table.by_name(name)
        assert sc is not None and sc.nr == nr, name


@pytest.mark.parametrize("profile", ["default", "strict", "ci"])
def test_every_profile_routes_every_credential_change_to_the_sentry(profile: str) -> None:
    # A host rule (even one whose else is the sentry) would let some changes
    # go unseen, and the cache would be wrong: they must be plain sentry calls.
    prof = load_profile(profile)
    for name in {**CHANGE_OWN, **CHANGE_ANY}:
        d = prof.dispositions[name]
        assert d.kind == "sentry" and d.rule is None, (profile, name, d)
