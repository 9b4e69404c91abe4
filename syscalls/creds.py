"""A caller's credentials, as the file handlers need them, read once per task.

The gofer acts *as* the caller and the sentry's own lookups (syscalls/lookup.py)
judge search permission for it, so every path call needs the caller's fs
ids, groups and effective capabilities. /proc/TID/status has them, but the
kernel renders the whole file on every read: ~9-14 us here, more than the
rest of a served stat. :class:`CredCache` keeps them per task instead, which
is safe only because of three facts:

* **Credentials are per thread and only the thread changes its own.** The
  calls that do (setuid, setgid, setreuid, setregid, setresuid, setresgid,
  setfsuid, setfsgid, setgroups, capset: glibc makes every thread of a
  process call them itself) are routed to the sentry in every profile, whose
  handler forgets that thread's entry and CONTINUEs; the thread is inside
  that call until it returns, so it asks for nothing with stale credentials.
  execve may change them too (set-user-ID files, file capabilities): it
  forgets every entry. The kernel applies the change after the sentry
  answered, and only the thread itself can ask again after that.
* **A tid is proven to be the same task by a pidfd.** The entry holds a
  pidfd of the thread (PIDFD_THREAD); ``pidfd_send_signal(fd, 0)`` fails
  with ESRCH once that task is gone, even if a new task got the tid.
* **execve in a multi-threaded process gives the leader's tid to the thread
  that called it** (de_thread), so the leader's pidfd then proves the wrong
  task. A leader's entry is therefore kept only while its process has one
  thread (``Threads:`` in the same read), and execve forgets everything.

The umask is per process (shared by threads, changed by umask(2) without the
sentry), so it is not cached: the calls that create a file read
/proc/TID/status afresh (:meth:`CredCache.fresh`).
"""

from __future__ import annotations

import errno
import os
import resource

from pysandbox.oci.kernel import PIDFD_THREAD, pidfd_send_signal
from pysandbox.oci.records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "CHANGE_ANY",
    "CHANGE_OWN",
    "CredCache",
    "Creds",
    "StatusFiles",
    "fd_limit",
    "parse_status",
    "read_creds",
]


class Creds(NamedTuple):
    """What /proc/TID/status says of a task's credentials (host ids)."""

    ruid: int
    fsuid: int
    rgid: int
    fsgid: int
    groups: tuple[int, ...]
    cap_effective: int
    cap_permitted: int
    umask: int


def _field(data: bytes, name: bytes) -> bytes:
    start = data.find(name)
    if start < 0:
        raise OSError(errno.ESRCH, "no " + name.decode() + " in /proc/TID/status")
    start += len(name)
    return data[start : data.find(b"\n", start)]


def read_creds(tid: int) -> Creds:
    """The task's credentials; OSError(ESRCH) when it is gone."""
    try:
        fd = os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OSError(errno.ESRCH, "task gone") from None
    try:
        return parse_status(os.read(fd, 8192))
    finally:
        os.close(fd)


def parse_status(data: bytes) -> Creds:
    """The credentials in the text of /proc/TID/status."""
    uids = _field(data, b"\nUid:").split()
    gids = _field(data, b"\nGid:").split()
    return Creds(
        ruid=int(uids[0]),
        fsuid=int(uids[3]),
        rgid=int(gids[0]),
        fsgid=int(gids[3]),
        groups=tuple(int(g) for g in _field(data, b"\nGroups:").split()),
        cap_effective=int(_field(data, b"\nCapEff:"), 16),
        cap_permitted=int(_field(data, b"\nCapPrm:"), 16),
        umask=int(_field(data, b"\nUmask:"), 8),
    )


class StatusFiles:
    """/proc/TID/status, kept open per task and read again with pread: an
    open+read+close costs ~11 us, a pread ~7 (the kernel renders the file
    each time, so it is always current). An fd belongs to the task it was
    opened for: once that task is gone its reads fail with ESRCH, even if a
    new task got the same tid, and the file is opened anew for the new one."""

    LIMIT: Final = 512  # open fds at most; then all are closed and reopened as needed

    def __init__(self) -> None:
        self.fds: dict[int, int] = {}
        self.limit = min(self.LIMIT, fd_limit() // 4)  # never the sentry's EMFILE

    def read(self, tid: int) -> bytes:
        """The text of the task's status file; OSError(ESRCH) when it is gone."""
        fd = self.fds.get(tid)
        if fd is not None:
            try:
                return os.pread(fd, 8192, 0)
            except ProcessLookupError:
                pass  # that task is gone; the tid may name a new one
            del self.fds[tid]
            os.close(fd)
        if len(self.fds) >= self.limit:
            self.close()
        try:
            fd = os.open(f"/proc/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise OSError(errno.ESRCH, "task gone") from None
        try:
            data = os.pread(fd, 8192, 0)
        except BaseException:
            os.close(fd)
            raise
        self.fds[tid] = fd
        return data

    def creds(self, tid: int) -> Creds:
        return parse_status(self.read(tid))

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def fd_limit() -> int:
    """The process's soft RLIMIT_NOFILE: the sentry's caches of fds stay well below it."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _one_thread_or_not_leader(tid: int, data: bytes) -> bool:
    """Whether a pidfd of ``tid`` keeps naming this task: it is not its
    process's leader, or its process has no other thread that could execve."""
    return int(_field(data, b"\nTgid:")) != tid or _field(data, b"\nThreads:").strip() == b"1"


class CredCache:
    """Credentials per task, read from /proc/TID/status once and proven by a
    pidfd afterwards (see the module's docstring for why that is sound)."""

    LIMIT: Final = 512  # entries (each holds a pidfd) at most; then all are dropped

    def __init__(self, status: StatusFiles | None = None) -> None:
        self.status = status if status is not None else StatusFiles()
        self.entries: dict[int, tuple[Creds, int]] = {}
        self.enabled = True  # False: every call reads the status file
        self.limit = min(self.LIMIT, fd_limit() // 4)

    def get(self, tid: int) -> Creds:
        """The task's credentials (its umask may be stale: see :meth:`fresh`);
        OSError(ESRCH) when it is gone."""
        entry = self.entries.get(tid)
        if entry is not None:
            creds, pidfd = entry
            try:
                pidfd_send_signal(pidfd, 0)
                return creds
            except ProcessLookupError:
                self.forget(tid)  # gone: the tid names another task now, or none
        return self._read(tid)

    def fresh(self, tid: int) -> Creds:
        """The task's credentials and umask as they are now (one status read)."""
        return self._read(tid)

    def _read(self, tid: int) -> Creds:
        # The pidfd first: if its task is still there at a later check, the tid
        # named that task all along, the read below included.
        pidfd = -1
        if self.enabled:
            try:
                pidfd = os.pidfd_open(tid, PIDFD_THREAD)
            except OSError:
                pidfd = -1  # gone: the read below says so
        try:
            data = self.status.read(tid)
            creds = parse_status(data)
        except BaseException:
            if pidfd >= 0:
                os.close(pidfd)
            raise
        if pidfd >= 0:
            if _one_thread_or_not_leader(tid, data):
                self._keep(tid, creds, pidfd)
            else:
                os.close(pidfd)
        return creds

    def _keep(self, tid: int, creds: Creds, pidfd: int) -> None:
        self.forget(tid)
        if len(self.entries) >= self.limit:
            self.forget_all()
        self.entries[tid] = (creds, pidfd)

    def forget(self, tid: int) -> None:
        """The task is changing its credentials (or is gone)."""
        entry = self.entries.pop(tid, None)
        if entry is not None:
            os.close(entry[1])

    def forget_all(self) -> None:
        """An execve: any task may come out of it with other credentials."""
        for _creds, pidfd in self.entries.values():
            os.close(pidfd)
        self.entries.clear()

    def close(self) -> None:
        self.forget_all()
        self.status.close()


# The calls after which a thread's credentials may differ (numbers of
# syscalls/x86_64.tsv; tests/unit/test_creds.py checks them against it):
# a profile must route all of them to the sentry for the cache to be used.
CHANGE_OWN: Final = {
    "setuid": 105,
    "setgid": 106,
    "setreuid": 113,
    "setregid": 114,
    "setgroups": 116,
    "setresuid": 117,
    "setresgid": 119,
    "setfsuid": 122,
    "setfsgid": 123,
    "capset": 126,
}
CHANGE_ANY: Final = {"execve": 59, "execveat": 322}
