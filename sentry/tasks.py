"""The task table: which host tasks are the container's, and what pids mean to a caller.

The sentry lives in the host's pid namespace (more exactly: the one its
/proc shows; every "host pid" here is a pid in that namespace). A workload
names other tasks by pids of *its* pid namespace. :class:`TaskTable`

* translates such a pid (or tid) into a host pid (:meth:`TaskTable.to_host`)
  from the ``NSpid`` lines of /proc/<tid>/status: a task's pid in the
  namespace at depth ``d`` is the ``d``-th entry of its NSpid. Hits are
  cached per (namespace, pid); a cached entry is used only after its task's
  start time was read again and still matches (a tid can be reused, a
  (tid, start time) pair within one boot cannot). A miss scans /proc
  (processes first, then threads): slow on a large host, which is why the
  signal and ptrace handlers skip translation wherever the kernel confines
  the caller by itself (:meth:`TaskTable.confined`);
* decides membership (:meth:`TaskTable.contains`): with its own pid
  namespace, the container is every task of that namespace (and of
  namespaces below it); sharing the host's, it is every task in init's
  cgroup or below it, in *every* hierarchy init belongs to (a task matching
  one v1 hierarchy but not another is not the container's). Excluded pids
  (the sentry and its watchdog) never belong, whichever of their threads
  is named, even if a custom cgroupsPath put them beside the workload;
* reads what handlers need to emulate the kernel's permission checks
  (:meth:`TaskTable.status`: uids, gids, CapEff).

Before :meth:`TaskTable.set_init` the container is judged from the caller:
its own pid namespace if that is not the sentry's, else its cgroup.
"""

from __future__ import annotations

import contextlib
import os

from pysandbox.oci import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Final

__all__ = ["TaskStatus", "TaskTable", "start_time"]

_MAX_NS_DEPTH: Final = 32  # the kernel's MAX_PID_NS_LEVEL
_PID_MAX: Final = 1 << 22  # PID_MAX_LIMIT on 64-bit


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.read(fd, 8192)
    finally:
        os.close(fd)


def start_time(tid: int, proc: str = "/proc") -> int:
    """Field 22 of /proc/<tid>/stat: when the task started (clock ticks after boot).

    OSError (ENOENT/ESRCH) when the task is gone.
    """
    data = _read(f"{proc}/{tid}/stat")
    return int(data[data.rindex(b")") + 2 :].split(None, 20)[19])


class TaskStatus:
    """The fields of /proc/<tid>/status the handlers use (ids as the host sees them)."""

    __slots__ = ("cap_eff", "gids", "nspid", "tgid", "uids")

    def __init__(
        self,
        tgid: int,
        nspid: tuple[int, ...],
        uids: tuple[int, int, int, int],
        gids: tuple[int, int, int, int],
        cap_eff: int,
    ) -> None:
        self.tgid = tgid
        self.nspid = nspid  # the tid in each pid namespace, outermost first
        self.uids = uids  # real, effective, saved, fs
        self.gids = gids
        self.cap_eff = cap_eff

    def has_cap(self, cap: int) -> bool:
        return bool(self.cap_eff >> cap & 1)

    @classmethod
    def parse(cls, data: bytes) -> TaskStatus:
        tgid = 0
        nspid: tuple[int, ...] = ()
        uids = gids = (0, 0, 0, 0)
        cap_eff = 0
        for line in data.splitlines():
            key, _, value = line.partition(b":")
            if key == b"Tgid":
                tgid = int(value)
            elif key == b"NSpid":
                nspid = tuple(int(v) for v in value.split())
            elif key == b"Uid":
                u = [int(v) for v in value.split()]
                uids = (u[0], u[1], u[2], u[3])
            elif key == b"Gid":
                g = [int(v) for v in value.split()]
                gids = (g[0], g[1], g[2], g[3])
            elif key == b"CapEff":
                cap_eff = int(value, 16)
                break  # the last field we need (status lists CapEff after the ids)
        return cls(tgid, nspid, uids, gids, cap_eff)


def _cgroups(data: bytes) -> dict[bytes, bytes]:
    """/proc/<pid>/cgroup as {hierarchy id: path}."""
    out: dict[bytes, bytes] = {}
    for line in data.splitlines():
        hid, _, rest = line.partition(b":")
        _controllers, _, path = rest.partition(b":")
        out[hid] = path
    return out


def _under(path: bytes, top: bytes) -> bool:
    return path == top or top == b"/" or path.startswith(top + b"/")


class TaskTable:
    """Pid translation and container membership for one sentry (see the module doc)."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self.host_ns = os.stat(f"{proc}/self/ns/pid").st_ino
        self.host_userns = os.stat(f"{proc}/self/ns/user").st_ino
        self.init: int | None = None
        self.init_ns: int | None = None
        self.own_pidns = False
        self._init_cgroups: dict[bytes, bytes] = {}
        self._excluded: set[int] = set()
        self._excluded_visible = False  # an excluded task sits in init's pid namespace
        self._depth: dict[int, int] = {}  # pid namespace inode -> depth (len of NSpid)
        self._cache: dict[tuple[int, int], tuple[int, int]] = {}  # (ns, vpid) -> (tid, start)

    # --- set-up ------------------------------------------------------------
    def set_init(self, host_pid: int) -> None:
        """The container's init (host pid): its pid namespace and cgroups define the container.

        Call it once init is in its final pid namespace (the pid is the one
        --pid-file gets); its cgroups are read live (see _reference_cgroups).
        """
        ns = self.pidns(host_pid)
        self.init = host_pid
        self.init_ns = ns
        self.own_pidns = ns != self.host_ns
        self._init_cgroups = {}
        self._reference_cgroups(host_pid)
        self._depth[ns] = len(self.status(host_pid).nspid)
        self._excluded_visible = any(self._in_ns(p, ns) for p in self._excluded)

    @property
    def excluded(self) -> frozenset[int]:
        """The processes never counted as the container's (:meth:`exclude`)."""
        return frozenset(self._excluded)

    def exclude(self, host_pid: int) -> None:
        """Never count this process (any thread of it) as the container's: sentry, watchdog."""
        self._excluded.add(host_pid)
        if self.init_ns is not None and self._in_ns(host_pid, self.init_ns):
            self._excluded_visible = True

    # --- /proc readers -----------------------------------------------------
    def pidns(self, tid: int) -> int:
        """Inode of the task's pid namespace (OSError when it is gone)."""
        return os.stat(f"{self.proc}/{tid}/ns/pid").st_ino

    def userns(self, tid: int) -> int:
        return os.stat(f"{self.proc}/{tid}/ns/user").st_ino

    def status(self, tid: int) -> TaskStatus:
        return TaskStatus.parse(_read(f"{self.proc}/{tid}/status"))

    def start_time(self, tid: int) -> int:
        return start_time(tid, self.proc)

    def stat_fields(self, tid: int) -> list[bytes]:
        """/proc/<tid>/stat split after the comm: index 0 is field 3 (state)."""
        data = _read(f"{self.proc}/{tid}/stat")
        return data[data.rindex(b")") + 2 :].split()

    def _in_ns(self, tid: int, ns: int) -> bool:
        """Is the task in pid namespace ``ns`` or in one below it?"""
        try:
            if self.pidns(tid) == ns:
                return True
            fd = os.open(f"{self.proc}/{tid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            for _ in range(_MAX_NS_DEPTH):
                parent = kernel.ns_get_parent(fd)
                os.close(fd)
                fd = parent
                if os.fstat(fd).st_ino == ns:
                    return True
        except OSError:  # EPERM: no parent in our view (the top reached)
            pass
        finally:
            os.close(fd)
        return False

    # --- translation -------------------------------------------------------
    def confined(self, caller: int) -> bool:
        """Does the kernel alone keep ``caller``'s pid arguments inside the container?

        True when the container has its own pid namespace, the caller is in
        it, and no excluded task is visible there: every pid the caller can
        name is then the container's, and a pid it cannot name is ESRCH from
        the kernel exactly as from us, so a handler may CONTINUE without
        translating. (The caller cannot leave its namespace: setns and
        namespace flags of clone/unshare are refused by every profile.)
        """
        try:
            ns = self.pidns(caller)
        except OSError:
            return False
        if self.init_ns is None:  # before set_init: the caller's namespace is the container's
            return ns != self.host_ns and not any(self._in_ns(p, ns) for p in self._excluded)
        return self.own_pidns and not self._excluded_visible and ns == self.init_ns

    def to_host(self, caller: int, vpid: int) -> int | None:
        """The host tid of the task ``caller`` (a host tid) calls ``vpid``; None if none.

        OSError when the caller itself is gone.
        """
        if vpid <= 0 or vpid > _PID_MAX:
            return None
        ns = self.pidns(caller)
        if ns == self.host_ns:
            return vpid if os.path.exists(f"{self.proc}/{vpid}/stat") else None
        depth = self._depth.get(ns)
        if depth is None:
            depth = self._depth[ns] = len(self.status(caller).nspid)
        key = (ns, vpid)
        hit = self._cache.get(key)
        if hit is not None:
            tid, start = hit
            try:
                if self.start_time(tid) == start:
                    return tid
            except OSError:
                pass
            del self._cache[key]
        for tid in self._scan(depth, vpid, ns):
            try:
                start = self.start_time(tid)
            except OSError:
                continue
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = (tid, start)
            return tid
        return None

    def _scan(self, depth: int, vpid: int, ns: int) -> Iterator[int]:
        """Host tids whose pid at namespace depth ``depth`` is ``vpid``, in namespace ``ns``."""
        proc = self.proc
        pids = [int(n) for n in os.listdir(proc) if n.isdigit()]
        for threads in (False, True):
            for pid in pids:
                if threads:
                    try:
                        tids = [int(t) for t in os.listdir(f"{proc}/{pid}/task") if int(t) != pid]
                    except OSError:
                        continue
                else:
                    tids = [pid]
                for tid in tids:
                    try:
                        nspid = self.status(tid).nspid
                    except OSError:
                        continue
                    if len(nspid) >= depth and nspid[depth - 1] == vpid and self._in_ns(tid, ns):
                        yield tid

    # --- membership --------------------------------------------------------
    def contains(self, host_tid: int, caller: int | None = None) -> bool:
        """Is the task (host tid) the container's? Never for excluded processes.

        Without init (before :meth:`set_init`) the reference is ``caller``.
        """
        try:
            if host_tid in self._excluded or self.status(host_tid).tgid in self._excluded:
                return False
            ref = self.init if self.init is not None else caller
            if ref is None:
                return False
            if ref == self.init:
                own, ns = self.own_pidns, self.init_ns
            else:
                ns = self.pidns(ref)
                own = ns != self.host_ns
            if own:
                assert ns is not None
                return self._in_ns(host_tid, ns)
            cgroups = self._reference_cgroups(ref)
            if not cgroups:
                return False  # no cgroup of the container's own: nothing is provably its
            if self._in_cgroups(host_tid, cgroups):
                return True
            return self._zombie_of(host_tid, cgroups)
        except OSError:
            return False

    def _reference_cgroups(self, ref: int) -> dict[bytes, bytes]:
        """The cgroups of ``ref`` (init, or the caller before set_init), read live.

        Live, because set_init may come before init is moved into its cgroups;
        init's last known ones once it is gone (or a zombie, which reads "/").
        Empty when every path is the root: a reference that is in no cgroup
        of its own would make the whole host the container.
        """
        try:
            cgroups = _cgroups(_read(f"{self.proc}/{ref}/cgroup"))
        except OSError:
            cgroups = {}
        if all(path == b"/" for path in cgroups.values()):
            return self._init_cgroups if ref == self.init else {}
        if ref == self.init:
            self._init_cgroups = cgroups
        return cgroups

    def _in_cgroups(self, tid: int, cgroups: dict[bytes, bytes]) -> bool:
        mine = _cgroups(_read(f"{self.proc}/{tid}/cgroup"))
        return all(hid in mine and _under(mine[hid], path) for hid, path in cgroups.items())

    def _zombie_of(self, tid: int, cgroups: dict[bytes, bytes]) -> bool:
        """A zombie has left its cgroups (its /proc/<pid>/cgroup reads "/"): it is the
        container's if its live threads are (an exited group leader), else if its
        parent, which has not waited for it yet, is."""
        fields = self.stat_fields(tid)
        if fields[0] not in (b"Z", b"X"):
            return False
        for name in os.listdir(f"{self.proc}/{tid}/task"):
            other = int(name)
            if other != tid:
                with contextlib.suppress(OSError):
                    return self._in_cgroups(other, cgroups)
        parent = int(fields[1])
        if parent in self._excluded or self.status(parent).tgid in self._excluded:
            return False
        return self._in_cgroups(parent, cgroups)

    def lookup(self, caller: int, vpid: int) -> int | None:
        """:meth:`to_host`, then :meth:`contains`: the container's task ``vpid``, or None."""
        tid = self.to_host(caller, vpid)
        if tid is None or not self.contains(tid, caller):
            return None
        return tid

    def may_target(self, caller: int, vpid: int) -> bool:
        """May a call of ``caller`` that names task ``vpid`` be handed to the kernel?

        Yes for a pid <= 0 (it names no task: the kernel answers ESRCH or
        EINVAL), when the kernel confines the caller (:meth:`confined`), and
        for a task of the container; no (the handler answers ESRCH) otherwise.
        """
        if vpid <= 0 or self.confined(caller):
            return True
        return self.lookup(caller, vpid) is not None

    def process_group(self, pgid: int) -> list[int]:
        """Host pids of every process whose process group is ``pgid`` (a host pid)."""
        members: list[int] = []
        for name in os.listdir(self.proc):
            if not name.isdigit():
                continue
            try:
                if int(self.stat_fields(int(name))[2]) == pgid:
                    members.append(int(name))
            except (OSError, IndexError, ValueError):
                continue
        return members

    def group_contained(self, pgid: int, caller: int) -> bool:
        """Is every member of process group ``pgid`` (host numbering) the container's?

        False for an empty group too (the caller gets the kernel's ESRCH).
        """
        members = self.process_group(pgid)
        return bool(members) and all(self.contains(m, caller) for m in members)
