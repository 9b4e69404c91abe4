"""Control groups for containers: mode detection, path resolution and the manager API.

Two drivers sit behind one interface, :class:`CgroupManager`:

* ``v1`` (:mod:`.v1`): one directory per mounted hierarchy (cpu, memory, ...,
  ``name=systemd``), used whenever ``/sys/fs/cgroup`` is not itself a cgroup2
  mount -- that includes the "hybrid" layout with a controller-less cgroup2 at
  ``/sys/fs/cgroup/unified``, which is what runc does too.
* ``v2`` (:mod:`.v2`): one directory in the unified hierarchy.

Only the cgroupfs driver exists: a ``slice:prefix:name`` (systemd driver)
cgroupsPath is rejected with a :class:`CgroupError` the CLI can report.
"""

from __future__ import annotations

import abc
import errno
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from .. import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal

__all__ = [
    "CgroupError",
    "CgroupManager",
    "detect_mode",
    "limit_files",
    "manager_from_dict",
    "mountinfo_fields",
    "new_manager",
    "resolve_path",
    "unescape_mountinfo",
]

CGROUP_ROOT = "/sys/fs/cgroup"


class _Warnings:
    """Where cgroup warnings go; the runtime points ``sink`` at its logger.
    (The logging module would cost more start-up time than all of cgroups.)"""

    sink: Callable[[str], None] | None = None

    def warning(self, fmt: str, *args: object) -> None:
        msg = fmt % args if args else fmt
        if self.sink is not None:
            self.sink(msg)
        else:
            sys.stderr.write(msg + "\n")

    def debug(self, fmt: str, *args: object) -> None:
        pass


log = _Warnings()


class CgroupError(Exception):
    """A cgroup operation failed; the message names the file and the reason."""


# --- mount table ---------------------------------------------------------------


def unescape_mountinfo(field: str) -> str:
    """Undo mountinfo's octal escapes (\\040 for a space, ...)."""
    if "\\" not in field:
        return field
    out: list[str] = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountinfo_fields(path: str) -> Iterator[tuple[list[str], int]]:
    """(the fields, the index of the "-" separator) of every line of a
    mountinfo file that is one, in its order (a mount listed later is on top)."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-", 6)
            except ValueError:
                continue
            if len(fields) >= sep + 4:
                yield fields, sep


def mountinfo_entries(
    path: str = "/proc/self/mountinfo",
) -> Iterator[tuple[str, str, str, list[str]]]:
    """(root, mountpoint, fstype, super options) of every mount."""
    for fields, sep in mountinfo_fields(path):
        yield (
            unescape_mountinfo(fields[3]),
            unescape_mountinfo(fields[4]),
            fields[sep + 1],
            fields[sep + 3].split(","),
        )


def _known_subsystems() -> set[str]:
    names: set[str] = set()
    try:
        with open("/proc/cgroups", encoding="ascii") as f:
            for line in f:
                if not line.startswith("#") and line.split():
                    names.add(line.split()[0])
    except OSError:
        pass
    # Not every kernel lists every controller in /proc/cgroups; add the usual ones.
    names.update(
        (
            "cpu",
            "cpuacct",
            "cpuset",
            "memory",
            "devices",
            "freezer",
            "blkio",
            "pids",
            "hugetlb",
            "net_cls",
            "net_prio",
            "perf_event",
            "rdma",
            "misc",
        )
    )
    return names


def v1_mounts(mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """Controller (or ``name=X`` for a named hierarchy) -> mountpoint of every v1 hierarchy.

    Co-mounted controllers (``cpu,cpuacct``) map to the same mountpoint; the
    first mount of a hierarchy wins over later bind mounts of it.
    """
    known = _known_subsystems()
    result: dict[str, str] = {}
    try:
        mounts = list(mountinfo_entries(mountinfo))
    except OSError as e:
        raise CgroupError(f"cgroup {mountinfo}: read: {e.strerror}") from e
    for _root, mountpoint, fstype, opts in mounts:
        if fstype != "cgroup":
            continue
        for opt in opts:
            if (opt in known or opt.startswith("name=")) and opt not in result:
                result[opt] = mountpoint
    return result


def v2_mountpoint(mountinfo: str = "/proc/self/mountinfo") -> str:
    """Where the unified (cgroup2) hierarchy is mounted; /sys/fs/cgroup preferred."""
    found: list[str] = []
    try:
        for _root, mountpoint, fstype, _opts in mountinfo_entries(mountinfo):
            if fstype == "cgroup2":
                found.append(mountpoint)
    except OSError as e:
        raise CgroupError(f"cgroup {mountinfo}: read: {e.strerror}") from e
    if not found:
        raise CgroupError("cgroup: no cgroup2 filesystem is mounted")
    return CGROUP_ROOT if CGROUP_ROOT in found else found[0]


def detect_mode(mountinfo: str = "/proc/self/mountinfo") -> Literal["v1", "v2"]:
    """``v2`` when /sys/fs/cgroup is itself a cgroup2 mount, else ``v1`` (like runc).

    A hybrid host (v1 hierarchies plus a cgroup2 at /sys/fs/cgroup/unified) is v1.
    """
    try:
        mounts = list(mountinfo_entries(mountinfo))
    except OSError:
        return "v2" if os.path.exists(os.path.join(CGROUP_ROOT, "cgroup.controllers")) else "v1"
    fstype_at_root = None
    for _root, mountpoint, fstype, _opts in mounts:
        if mountpoint == CGROUP_ROOT:
            fstype_at_root = fstype  # the last mount on a point is the visible one
    if fstype_at_root == "cgroup2":
        return "v2"
    if any(fstype == "cgroup" for _r, _m, fstype, _o in mounts):
        return "v1"
    if any(fstype == "cgroup2" for _r, _m, fstype, _o in mounts):
        return "v2"
    raise CgroupError("cgroup: no cgroup filesystem is mounted")


# --- paths ---------------------------------------------------------------------


def resolve_path(cgroups_path: str | None, container_id: str) -> str:
    """The cgroup of a container, relative to each hierarchy's root.

    Absent or empty -> ``/<id>``; absolute paths are kept; a relative ``a/b``
    becomes ``/a/b`` (runc's cgroupfs driver). ``..`` components are refused,
    and so is the systemd driver's ``slice:prefix:name`` form.
    """
    if not cgroups_path:
        if not container_id or "/" in container_id or container_id in (".", ".."):
            raise CgroupError(f"cgroup: invalid container id {container_id!r} for a cgroup name")
        return "/" + container_id
    if "\0" in cgroups_path:
        raise CgroupError("cgroup: cgroupsPath contains a NUL byte")
    if not cgroups_path.startswith("/") and cgroups_path.count(":") == 2:
        raise CgroupError(
            f"systemd cgroup driver not supported: cgroupsPath {cgroups_path!r} has the "
            "slice:prefix:name form; use a cgroupfs path such as /mygroup/ID"
        )
    parts = [p for p in cgroups_path.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise CgroupError(f"cgroup: cgroupsPath {cgroups_path!r} must not contain '..'")
    return "/" + "/".join(parts)


# --- file helpers shared by both drivers --------------------------------------------


def write_file(directory: str, name: str, value: str | int) -> None:
    """Write value to directory/name in one write(2); errors become CgroupError."""
    data = str(value)
    path = os.path.join(directory, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CgroupError(f"cgroup {name}: open: {e.strerror} ({directory})") from e
    try:
        os.write(fd, data.encode())
    except OSError as e:
        raise CgroupError(f"cgroup {name}: write {data}: {e.strerror} ({directory})") from e
    finally:
        os.close(fd)


def read_file(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError as e:
        raise CgroupError(f"cgroup {name}: read: {e.strerror} ({directory})") from e


def read_optional(directory: str, name: str) -> str | None:
    """File contents, or None when the file (or its cgroup) does not exist."""
    try:
        with open(os.path.join(directory, name), encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_int(directory: str, name: str, default: int = 0) -> int:
    """An integer file; ``max`` reads as 2**64-1 (runc's convention); missing -> default."""
    text = read_optional(directory, name)
    if text is None:
        return default
    text = text.strip()
    if text == "max":
        return 2**64 - 1
    try:
        return int(text)
    except ValueError:
        return default


def read_keyed(directory: str, name: str) -> dict[str, int]:
    """A flat-keyed file (``key value`` per line) such as memory.stat; missing -> {}."""
    text = read_optional(directory, name)
    result: dict[str, int] = {}
    if text is None:
        return result
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2:
            try:
                result[fields[0]] = int(fields[1])
            except ValueError:
                continue
    return result


def read_procs(directory: str) -> list[int]:
    text = read_optional(directory, "cgroup.procs")
    if text is None:
        return []
    return [int(x) for x in text.split()]


def tree_pids(top: str) -> list[int]:
    """Every pid in cgroup directory top and its descendants, sorted."""
    pids: set[int] = set()
    for dirpath, _dirnames, _filenames in os.walk(top):
        pids.update(read_procs(dirpath))
    return sorted(pids)


def signal_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
        except OSError as e:
            raise CgroupError(f"cgroup: kill {pid} with signal {sig}: {e.strerror}") from e


def remove_tree(top: str, timeout: float = 2.0) -> None:
    """rmdir top and every cgroup below it, deepest first; ENOENT is not an error.

    A cgroup whose last process just died may stay busy for a moment, so EBUSY
    is retried until timeout.
    """
    if not os.path.isdir(top):
        return
    subdirs = [d for d, _dn, _fn in os.walk(top, topdown=False)]
    deadline = time.monotonic() + timeout
    for d in subdirs:
        while True:
            try:
                os.rmdir(d)
                break
            except FileNotFoundError:
                break
            except OSError as e:
                if e.errno == errno.EBUSY and time.monotonic() < deadline:
                    time.sleep(0.01)
                    continue
                raise CgroupError(f"cgroup: rmdir {d}: {e.strerror}") from e


# How many times mkdir_p starts again when a parent vanishes under it. Each time
# means that another container's delete removed the parent in the instant between
# our EEXIST on it and our mkdir below it, and that it had made the parent again
# first; a hundred in a row is not a race any more.
_MKDIR_ATTEMPTS = 100


def mkdir_p(base: str, rel: str) -> list[str]:
    """Create base/rel component by component; return the directories made here, top first.

    A parent that exists may vanish before its child is made: whoever made it
    (another container's create) removes it on delete once it holds no cgroup
    (:func:`remove_created`). mkdir below it then fails with ENOENT, and we start
    again from the top, making the parent ourselves (so it is ours to remove).
    Once our cgroup exists its parents cannot go: the kernel refuses to rmdir a
    cgroup that has a child.
    """
    parts = [p for p in rel.split("/") if p]
    made: list[str] = []
    current = base
    for _attempt in range(_MKDIR_ATTEMPTS):
        current = base
        for part in parts:
            parent, current = current, os.path.join(current, part)
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                continue
            except FileNotFoundError as e:
                if parent == base:
                    raise CgroupError(f"cgroup: mkdir {current}: {e.strerror}") from e
                break  # the parent was removed since we found it: start again
            except OSError as e:
                raise CgroupError(f"cgroup: mkdir {current}: {e.strerror}") from e
            if current not in made:
                made.append(current)
        else:
            return made
    raise CgroupError(
        f"cgroup: mkdir {current}: its parent was removed {_MKDIR_ATTEMPTS} times in a row"
    )


def remove_created(created: Iterable[str], own: Iterable[str]) -> None:
    """Remove the directories a create made, deepest first: the container's own
    cgroups (``own``) with everything below them, and each parent it made only
    if no cgroup is left in it.

    A parent (dockerd's cgroup-parent, a pod's cgroup) is shared: the first
    container to find it missing makes it, and its siblings make their cgroups
    in it. Removing it with what is below would take a sibling's cgroup while
    that is empty -- between its create's mkdir and its write of cgroup.procs,
    say, which then fails with ENOENT -- and would wait on every sibling that has
    processes. So a parent gets one plain rmdir, which the kernel refuses (EBUSY,
    under cgroup_mutex, so atomically with any mkdir in it) while a child cgroup
    exists: then it stays, and is left behind when its last user goes (runc never
    removes parents at all). :func:`mkdir_p` copes with the other side of the race.
    """
    tops = [o.rstrip("/") for o in own]
    for d in sorted(dict.fromkeys(created), key=lambda p: p.count("/"), reverse=True):
        if any(d == t or d.startswith(t + "/") for t in tops):
            remove_tree(d)
            continue
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                raise CgroupError(f"cgroup: rmdir {d}: {e.strerror}") from e


# --- the manager interface -------------------------------------------------------


class CgroupManager(abc.ABC):
    """The cgroup(s) of one container.

    ``path`` is the cgroup path relative to each hierarchy's root (as
    returned by :func:`resolve_path`).
    """

    path: str
    mode: Literal["v1", "v2"]

    @abc.abstractmethod
    def create(self) -> None:
        """mkdir -p the cgroup in every hierarchy used; remember what was made."""

    @abc.abstractmethod
    def add_process(self, pid: int) -> None:
        """Move pid (the whole thread group) into the cgroup."""

    @abc.abstractmethod
    def apply(self, resources: Mapping[str, Any] | None) -> None:
        """Set OCI ``linux.resources`` (also used by ``update``)."""

    @abc.abstractmethod
    def freeze(self) -> None: ...

    @abc.abstractmethod
    def thaw(self) -> None: ...

    @abc.abstractmethod
    def is_frozen(self) -> bool: ...

    @abc.abstractmethod
    def pids(self) -> list[int]:
        """Every pid in the cgroup and its descendants, sorted."""

    @abc.abstractmethod
    def kill_all(self, sig: int) -> None:
        """Send sig to every process in the cgroup (and its descendants)."""

    def signal_frozen(self, sig: int, can_freeze: bool) -> None:
        """Signal every process, frozen meanwhile (when the freezer is there) so
        nothing can fork between listing the processes and signalling them."""
        frozen_here = False
        if can_freeze and not self.is_frozen():
            try:
                self.freeze()
                frozen_here = True
            except CgroupError as e:
                log.warning("cgroup: could not freeze before signalling: %s", e)
        try:
            signal_pids(self.pids(), sig)
        finally:
            if frozen_here:
                self.thaw()

    def kill_until_empty(self, pause: Callable[[], None]) -> None:
        """SIGKILL everything until the cgroup is empty (2 s at most); ``pause``
        waits a moment between rounds (v2 can wait for cgroup.events)."""
        deadline = time.monotonic() + 2.0
        while True:
            pids = self.pids()
            if not pids:
                return
            signal_pids(pids, kernel.SIGKILL)
            if time.monotonic() > deadline:
                log.warning("cgroup: processes %s survived SIGKILL in %s", pids, self.path)
                return
            pause()

    def thaw_quietly(self) -> None:
        if self.is_frozen():
            try:
                self.thaw()
            except CgroupError as e:
                log.warning("cgroup: thaw before destroy failed: %s", e)

    @abc.abstractmethod
    def stats(self) -> dict[str, Any]:
        """runc's ``events --stats`` data object (types.Stats field names)."""

    @abc.abstractmethod
    def oom_kill_count(self) -> int:
        """Number of processes the OOM killer has killed in this cgroup so far."""

    @abc.abstractmethod
    def oom_event_fd(self) -> int | None:
        """An fd that becomes readable on OOM (the caller closes it), or None."""

    @abc.abstractmethod
    def destroy(self) -> None:
        """Kill what is left, remove the directories create() made (a parent only
        while no other cgroup is in it, see :func:`remove_created`); idempotent."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-able description for the state file (see :func:`manager_from_dict`)."""

    def exists(self) -> bool:
        """Whether the container's cgroup directory is still there."""
        return os.path.isdir(self.main_dir())

    @abc.abstractmethod
    def main_dir(self) -> str:
        """The directory that best represents the cgroup (v2: the only one)."""


def new_manager(
    cgroups_path: str | None,
    container_id: str,
    *,
    mode: str | None = None,
    v2_mountpoint: str | None = None,
) -> CgroupManager:
    """A manager for the container's cgroup; nothing is created until create().

    Without ``mode`` the host's layout decides (:func:`detect_mode`). For
    testing and debugging only, the environment can override that:
    ``PYSANDBOX_CGROUP_MODE=v2`` (or ``v1``) picks the driver, and
    ``PYSANDBOX_CGROUP2_MOUNT`` the cgroup2 mountpoint the v2 driver uses
    (default: /sys/fs/cgroup if it is cgroup2, else the first cgroup2 mount,
    e.g. /sys/fs/cgroup/unified on a hybrid host). That runs the v2 driver
    on a hybrid host, in a hierarchy that may lack controllers: limits then
    fail, but the device filter, freezer and kill work. The choice is saved
    in the container's state, so later commands need no environment.
    """
    path = resolve_path(cgroups_path, container_id)
    chosen = mode or os.environ.get("PYSANDBOX_CGROUP_MODE") or detect_mode()
    if chosen == "v2" and v2_mountpoint is None:
        v2_mountpoint = os.environ.get("PYSANDBOX_CGROUP2_MOUNT") or None
    if chosen == "v1":
        from .v1 import V1Manager

        return V1Manager(path)
    if chosen == "v2":
        from .v2 import V2Manager

        return V2Manager(path, mountpoint=v2_mountpoint)
    raise CgroupError(f"cgroup: unknown cgroup mode {chosen!r}")


def manager_from_dict(d: Mapping[str, Any]) -> CgroupManager:
    """Rebuild a manager saved with :meth:`CgroupManager.to_dict`."""
    mode = d.get("mode")
    if mode == "v1":
        from .v1 import V1Manager

        return V1Manager.from_dict(d)
    if mode == "v2":
        from .v2 import V2Manager

        return V2Manager.from_dict(d)
    raise CgroupError(f"cgroup: unknown cgroup mode {mode!r} in saved state")


# --- start-up latency ---------------------------------------------------------------

_priming = {"stop": False, "started": False}


def limit_files(mode: str, dirs: Mapping[str, str]) -> dict[str, str]:
    """Where a container's limits live: {what: file}, for the sentry's ContainerView
    (syscalls/procfs.py); here so that create names them without importing it.

    ``dirs``: the container's cgroup directory per v1 subsystem (memory, cpu,
    cpuset), or {"unified": dir} for v2. "cgroup" is a directory whose
    processes (and those of the cgroups below it) are the container's, for
    its load average (syscalls/loadavg.py).
    """
    out: dict[str, str] = {}
    if mode == "v2":
        d = dirs.get("unified")
        if d:
            out.update(
                {
                    "cgroup": d,
                    "memory.limit": os.path.join(d, "memory.max"),
                    "memory.usage": os.path.join(d, "memory.current"),
                    "swap.limit": os.path.join(d, "memory.swap.max"),
                    "cpu.max": os.path.join(d, "cpu.max"),
                    "cpuset": os.path.join(d, "cpuset.cpus.effective"),
                }
            )
        return out
    if "memory" in dirs:
        m = dirs["memory"]
        out["memory.limit"] = os.path.join(m, "memory.limit_in_bytes")
        out["memory.usage"] = os.path.join(m, "memory.usage_in_bytes")
        out["memsw.limit"] = os.path.join(m, "memory.memsw.limit_in_bytes")
    if "cpu" in dirs:
        out["cpu.quota"] = os.path.join(dirs["cpu"], "cpu.cfs_quota_us")
        out["cpu.period"] = os.path.join(dirs["cpu"], "cpu.cfs_period_us")
    if "cpuset" in dirs:
        out["cpuset"] = os.path.join(dirs["cpuset"], "cpuset.cpus")
    for sub in ("cpu", "memory", "cpuset"):
        if sub in dirs:
            out["cgroup"] = dirs[sub]
            break
    return out


def prime_migration(duration: float = 2.0) -> None:
    """Keep the kernel's cgroup-migration lock warm from a background thread
    until :func:`stop_priming` (or ``duration`` seconds).

    Every write to a ``cgroup.procs`` takes the global cgroup_threadgroup_rwsem
    for writing. When nobody has done so within the last RCU grace period the
    write first waits for a whole grace period (10-35 ms on this kind of VM),
    more than the rest of a container start; within a grace period of another
    writer it costs ~50 us. So a thread moves this process into the cgroup it is
    already in (a no-op) every few milliseconds: it pays the one wait while the
    main thread reads config.json and prepares the container, and the real move
    of the container's init then finds the lock warm.
    """
    import _thread

    if _priming.get("started"):
        return  # the launcher already started it
    _priming["started"] = True
    _priming["stop"] = False
    _thread.start_new_thread(_keep_migration_warm, (duration,))


def stop_priming() -> None:
    _priming["stop"] = True


def _own_procs_file() -> str | None:
    with open("/proc/self/cgroup", "rb") as f:
        lines = f.read().decode().splitlines()
    for line in lines:
        hid, controllers, path = line.split(":", 2)
        if hid == "0":
            base = v2_mountpoint()
        elif "pids" in controllers.split(","):
            base = os.path.join(CGROUP_ROOT, "pids")
        else:
            continue
        return os.path.join(base + path, "cgroup.procs")
    return None


def _keep_migration_warm(duration: float) -> None:
    try:
        path = _own_procs_file()
        if path is None:
            return
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except (OSError, ValueError, CgroupError):
        return  # only an optimisation
    deadline = time.monotonic() + duration
    try:
        while not _priming["stop"] and time.monotonic() < deadline:
            try:
                os.write(fd, b"0")  # "0": the writing thread's own process
            except OSError:
                return
            time.sleep(0.003)
    finally:
        os.close(fd)
