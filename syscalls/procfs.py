"""/proc files that tell the truth about the container's limits (first slice).

``free``, ``top``, language runtimes and build tools size themselves from
/proc/meminfo, /proc/cpuinfo, /proc/stat and /proc/uptime; under runc they
read the host's figures, so a container limited to 64 MiB believes it has
the host's memory. The sentry serves ``open``/``openat`` of exactly these
absolute paths: it renders the file from the host's copy cut to the
container's cgroup (memory limit and usage, CPU quota and cpuset) and
installs an anonymous memory file holding it (NOTIF_ADDFD), so the workload
reads it with plain read(). Everything else these calls name is handed back
to the kernel.

What each file shows:

* meminfo: MemTotal = the memory limit (or the host's, if lower or
  unlimited), MemFree and MemAvailable = limit - usage, SwapTotal/SwapFree
  cut to the swap limit; under a limit the cache lines (Buffers, Cached,
  SwapCached, SReclaimable, Shmem) are 0, since the usage includes the
  cgroup's page cache; the other lines are the host's, capped at MemTotal.
* cpuinfo: the first N processor blocks, renumbered 0..N-1, where N is what
  the container may use: the cpuset's size, the quota rounded up, at most
  the host's count.
* stat: the aggregate ``cpu`` line and ``cpu0``..``cpuN-1`` (the host's);
  procs_running and procs_blocked count the container's tasks (as
  loadavg, below); other lines unchanged.
* uptime: time since the sentry started (the container's creation), as
  gVisor reports the sandbox's uptime; idle time scaled to N CPUs.
* /sys/devices/system/cpu/online: those N CPUs (glibc's get_nprocs, and so
  sysconf(_SC_NPROCESSORS_ONLN) and Python's os.cpu_count, count it);
  sched_getaffinity is cut the same way (syscalls/sched.py).
* loadavg: the container's own load average (syscalls/loadavg.py), where
  the kernel's is the host's; sysinfo's loads are the same.

Mount tables: ``mountinfo`` and ``mounts`` of ``/proc/self``,
``/proc/thread-self``, ``/proc/<pid>``, ``/proc/<pid>/task/<tid>`` (``self``
for ``<pid>`` too), ``/proc/mounts``, and ``/etc/mtab`` when it is a symlink
to one of these. The kernel's view of a writable root is read-only (writes
go through the gofer: syscalls/files.py), so the kernel's table says ``ro``
for ``/``, and an overlay root's super options show its layers. The file is
the host's ``/proc/<tid>/mountinfo`` (``mounts``) of the task the path names
(a ``<pid>`` is the container's: the task table translates it, and a task
that is not the container's is left to the kernel), with the line of ``/``
rewritten (:func:`render_mountinfo`, :func:`render_mounts`):

* its per-mount ``ro`` becomes ``rw`` when the root is writable for the
  workload: the spec's root is not read-only, the gofer serves it (the sentry
  is told at start-up: ``SentryOptions.root_readonly``) and its super block is
  not read-only itself;
* the super options of an overlay keep only the generic ones (ro/rw, sync,
  dirsync, mand, lazytime, and in ``mounts`` the per-mount flags): its
  ``lowerdir``, ``upperdir``, ``workdir``, ``redirect_dir``, ``index``,
  ``metacopy``, ``xino``, ``uuid``... are the runtime's internals;
* the mount's root within its file system (mountinfo's 4th field) is ``/``:
  a bind of the bundle (``--overlay none``, or a read-only root) would show
  the bundle's host path there.

The source (``overlay``, or the bundle's device) and the file system type stay
the kernel's. Every other line is the container's own mount, unchanged.
A maskedPath that could cover one of these files disables them all (the
kernel opens the mask).

Rule 1: the path is read once and the answer is built from that copy. When
the path is not one of these files the call is CONTINUEd; a thread that
rewrites the path meanwhile makes the kernel open whatever it then names,
which the workload could have opened directly: no decision is made on it.
The same holds for /etc/mtab's link, read from the caller's root: whatever it
names, the answer is a mount table the caller may read anyway.
"""

from __future__ import annotations

import errno
import math
import os
import re
import time
from collections.abc import Callable, Collection, Mapping

from pysandbox.oci import kernel
from pysandbox.sentry.loop import CONTINUE, Call, Errno, Handler, InstallFd, Result

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

    from pysandbox.sentry.tasks import TaskTable

    from .loadavg import ContainerLoad

__all__ = [
    "VIRTUAL_FILES",
    "ContainerView",
    "ProcHandlers",
    "render_cpuinfo",
    "render_meminfo",
    "render_mountinfo",
    "render_mounts",
    "render_stat",
    "render_uptime",
    "root_superblock_readonly",
]

# Flags that a read-only open of these files may carry; anything else (a
# write, O_DIRECTORY, O_PATH, O_TMPFILE...) is left to the kernel.
_READ_FLAGS: Final = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | kernel.O_LARGEFILE
_UNLIMITED: Final = 1 << 62  # cgroup v1 reports "no limit" as a huge page-aligned number
_PATH_MAX: Final = 4096


def _reads_only(flags: int) -> bool:
    """A read-only open with no flag beyond those a virtual file can honour."""
    return flags & os.O_ACCMODE == os.O_RDONLY and not flags & ~_READ_FLAGS & ~os.O_ACCMODE


def _limit(text: str | None) -> int | None:
    """A byte limit as cgroups write it: None for none ("max", v1's huge value)."""
    if text is None or text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value <= 0 or value >= _UNLIMITED else value


def cpu_list(text: str) -> list[int]:
    """The CPUs a kernel CPU list ("0-3,6") names."""
    cpus: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if part:
            lo, _, hi = part.partition("-")
            cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def cpuset_size(text: str) -> int:
    """How many CPUs a cpuset list ("0-3,6") names."""
    return len(cpu_list(text))


def format_cpu_list(cpus: list[int]) -> str:
    """The kernel's form of a CPU list: [0, 1, 2, 5] -> "0-2,5"."""
    parts: list[str] = []
    for cpu in sorted(cpus):
        if parts and cpu == int(parts[-1].rpartition("-")[2]) + 1:
            parts[-1] = f"{parts[-1].partition('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts)


class ContainerView:
    """The container's limits, read from its cgroup files at each use (they
    change: ``docker update``), and its start time."""

    def __init__(self, files: Mapping[str, str], started: float | None = None) -> None:
        self.files = dict(files)
        self.started = time.clock_gettime(time.CLOCK_BOOTTIME) if started is None else started
        self._fds: dict[str, int] = {}  # the cgroup files, kept open (_value)

    def _value(self, key: str) -> str | None:
        """The cgroup file ``key`` names, read through an fd kept open: a pread
        at offset 0 makes a cgroup file's text anew, and costs ~3 us here
        where an open, read and close cost ~15 (sysinfo reads three or four,
        sched_getaffinity up to four)."""
        fd = self._fds.get(key)
        if fd is None:
            path = self.files.get(key)
            if not path:
                return None
            try:
                fd = self._fds[key] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
        try:
            return os.pread(fd, 4096, 0).decode().strip()
        except (OSError, UnicodeDecodeError):
            return None

    def memory_limit(self) -> int | None:
        return _limit(self._value("memory.limit"))

    def memory_usage(self) -> int:
        return _limit(self._value("memory.usage")) or 0

    def swap_limit(self) -> int | None:
        """Swap the container may use, in bytes (None: unlimited)."""
        swap = _limit(self._value("swap.limit"))
        if swap is not None or "swap.limit" in self.files:
            return swap
        memsw = _limit(self._value("memsw.limit"))  # v1: memory + swap
        mem = self.memory_limit()
        if memsw is None or mem is None:
            return None
        return max(0, memsw - mem)

    def cpu_ids(self, host_online: list[int]) -> list[int]:
        """The CPUs shown to the container: its cpuset (or the host's online
        CPUs), cut to :meth:`cpus` of them."""
        cpuset = self._value("cpuset")
        try:
            allowed = cpu_list(cpuset) if cpuset else list(host_online)
        except ValueError:
            allowed = list(host_online)
        return sorted(allowed)[: self.cpus(len(host_online) or 1)]

    def cpus(self, host_cpus: int) -> int:
        """CPUs the container can use: cpuset size, quota rounded up, host count."""
        n = host_cpus
        cpuset = self._value("cpuset")
        if cpuset:
            try:
                n = min(n, cpuset_size(cpuset))
            except ValueError:
                pass
        quota = period = None
        cpu_max = self._value("cpu.max")
        if cpu_max:
            q, _, p = cpu_max.partition(" ")
            if q != "max":
                quota, period = int(q), int(p or 100000)
        else:
            q1, p1 = self._value("cpu.quota"), self._value("cpu.period")
            if q1 and p1 and int(q1) > 0:
                quota, period = int(q1), int(p1)
        if quota is not None and period:
            n = min(n, max(1, math.ceil(quota / period)))
        return max(1, n)


# --- rendering (pure functions of the host's text and the limits) ----------------


# Under a limit the cgroup's usage already counts its page cache, and `free`
# computes used = total - free - buffers - cache: the host's cache figures
# would make that negative.
_CACHE_KEYS: Final = ("Buffers", "Cached", "SwapCached", "SReclaimable", "Shmem")


def render_meminfo(host: str, limit: int | None, usage: int, swap_limit: int | None = None) -> str:
    """/proc/meminfo cut to a memory limit (bytes) and usage (bytes)."""
    values: dict[str, int] = {}
    for line in host.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key] = int(fields[0])
    total = values.get("MemTotal", 0)
    if limit is not None:
        total = min(total, limit // 1024)
    free = max(0, total - usage // 1024) if limit is not None else values.get("MemFree", 0)
    swap_total = values.get("SwapTotal", 0)
    if swap_limit is not None:
        swap_total = min(swap_total, swap_limit // 1024)
    fixed = {
        **({key: 0 for key in _CACHE_KEYS} if limit is not None else {}),
        "MemTotal": total,
        "MemFree": min(free, values.get("MemFree", free)) if limit is None else free,
        "MemAvailable": free if limit is not None else values.get("MemAvailable", free),
        "SwapTotal": swap_total,
        "SwapFree": min(values.get("SwapFree", 0), swap_total),
    }
    out = []
    for line in host.splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if not sep or not fields or not fields[0].isdigit():
            out.append(line)
            continue
        value = fixed.get(key)
        if value is None:
            value = min(int(fields[0]), total) if fields[1:] == ["kB"] else int(fields[0])
        unit = " kB" if fields[1:] == ["kB"] else ""
        out.append(f"{key + ':':<16}{value:>8}{unit}")
    return "\n".join(out) + "\n"


def render_cpuinfo(host: str, ncpu: int) -> str:
    """The first ``ncpu`` processor blocks of /proc/cpuinfo, renumbered."""
    blocks = [b for b in host.strip("\n").split("\n\n") if b.strip()]
    out = []
    for i, block in enumerate(blocks[:ncpu]):
        lines = []
        for line in block.splitlines():
            if line.startswith("processor"):
                key = line.split(":", 1)[0]
                line = f"{key}: {i}"
            lines.append(line)
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n\n"


def render_stat(host: str, ncpu: int, procs: tuple[int, int] | None = None) -> str:
    """/proc/stat with cpu0..cpu{ncpu-1} only (the aggregate line stays);
    ``procs``: the container's (running, blocked) tasks for procs_running and
    procs_blocked, which are otherwise the host's."""
    out = []
    for line in host.splitlines():
        head = line.split(" ", 1)[0]
        if head[:3] == "cpu" and head[3:].isdigit() and int(head[3:]) >= ncpu:
            continue
        if procs is not None and head in ("procs_running", "procs_blocked"):
            line = f"{head} {procs[head == 'procs_blocked']}"
        out.append(line)
    return "\n".join(out) + "\n"


def render_uptime(host: str, started: float, now: float, ncpu: int, host_cpus: int) -> str:
    """/proc/uptime since the container started; idle scaled to its CPUs."""
    fields = host.split()
    up = max(0.0, now - started)
    try:
        host_up, host_idle = float(fields[0]), float(fields[1])
    except (IndexError, ValueError):
        host_up, host_idle = up, 0.0
    share = host_idle / host_up if host_up > 0 else 0.0  # idle CPU-seconds per second
    idle = min(up * ncpu, up * share * ncpu / max(1, host_cpus))
    return f"{up:.2f} {idle:.2f}\n"


# Options the VFS prints for any file system: the super block's (mountinfo's
# last field starts with them) and the mount's (mountinfo's 6th field; in
# /proc/mounts both come first, then the file system's own). An overlay's
# own options (lowerdir, upperdir, workdir, redirect_dir, index, metacopy,
# xino, uuid, ...) describe the runtime's layers, not the container: dropped.
_SB_OPTIONS: Final = frozenset({"ro", "rw", "sync", "dirsync", "mand", "lazytime"})
_MNT_OPTIONS: Final = frozenset(
    {"ro", "rw", "nosuid", "nodev", "noexec", "noatime", "nodiratime", "relatime"}
    | {"nosymfollow", "idmapped"}
)
_LAYERED_FS: Final = frozenset({"overlay"})


def _keep_options(options: str, keep: frozenset[str]) -> str:
    return ",".join(o for o in options.split(",") if o in keep)


def _mountinfo_fields(line: str) -> tuple[list[str], int] | None:
    """A mountinfo line's fields and the index of its "-" separator; None if
    the line is not one."""
    fields = line.split(" ")
    try:
        sep = fields.index("-", 6)
    except ValueError:
        return None
    return (fields, sep) if len(fields) == sep + 4 else None


def root_superblock_readonly(mountinfo: str) -> bool:
    """Is the super block of the root mount (mount point ``/``) read-only?
    True when the text has no such line (nothing to rewrite then)."""
    return "/" in readonly_superblocks(mountinfo) or not any(
        parsed is not None and parsed[0][4] == "/"
        for parsed in map(_mountinfo_fields, mountinfo.splitlines())
    )


def readonly_superblocks(mountinfo: str) -> set[str]:
    """The mount points (as mountinfo writes them) whose super block is
    read-only: the mount, not the kernel's view, is then what says ``ro``."""
    points = set()
    for line in mountinfo.splitlines():
        parsed = _mountinfo_fields(line)
        if parsed is not None:
            fields, sep = parsed
            if fields[sep + 3].split(",", 1)[0] == "ro":
                points.add(fields[4])
            else:
                points.discard(fields[4])  # mounted over by a writable one
    return points


def render_mountinfo(host: str, root_writable: bool, writable: Collection[str] = ()) -> str:
    """/proc/<tid>/mountinfo as the container should see it: the line of
    ``/`` says ``rw`` (if ``root_writable`` and its super block is not
    read-only itself), has root ``/`` and no overlay internals; the lines of
    the mount points in ``writable`` (the other mounts the gofer serves and
    the workload may write) say ``rw`` on the same terms; every other line
    is the kernel's."""
    out = []
    for line in host.splitlines():
        parsed = _mountinfo_fields(line)
        point = "" if parsed is None else parsed[0][4]
        if parsed is None or (point != "/" and point not in writable):
            out.append(line)
            continue
        fields, sep = parsed
        fstype, super_options = fields[sep + 1], fields[sep + 3]
        options = fields[5].split(",")
        rw = root_writable if point == "/" else True
        if rw and options[0] == "ro" and super_options.split(",", 1)[0] != "ro":
            options[0] = "rw"
        fields[5] = ",".join(options)
        if point == "/":
            fields[3] = "/"  # a bind's root is the bundle's host path
            if fstype in _LAYERED_FS:
                fields[sep + 3] = _keep_options(super_options, _SB_OPTIONS)
        out.append(" ".join(fields))
    return "".join(line + "\n" for line in out)


def render_mounts(host: str, root_writable: bool, writable: Collection[str] = ()) -> str:
    """/proc/<tid>/mounts with the line of ``/`` rewritten as in
    :func:`render_mountinfo`, and the lines of ``writable`` saying ``rw``.
    This format cannot tell a read-only super block from a read-only mount:
    the caller passes ``root_writable`` False for one, and leaves such
    points out of ``writable`` (:func:`readonly_superblocks`)."""
    out = []
    for line in host.splitlines():
        fields = line.split(" ")
        if len(fields) != 6 or (fields[1] != "/" and fields[1] not in writable):
            out.append(line)
            continue
        options = fields[3].split(",")
        if (root_writable if fields[1] == "/" else True) and options[0] == "ro":
            options[0] = "rw"
        fields[3] = ",".join(options)
        if fields[1] == "/" and fields[2] in _LAYERED_FS:
            fields[3] = _keep_options(fields[3], _SB_OPTIONS | _MNT_OPTIONS)
        out.append(" ".join(fields))
    return "".join(line + "\n" for line in out)


# --- the handlers ----------------------------------------------------------------

VIRTUAL_FILES: Final = (
    "/proc/meminfo",
    "/proc/cpuinfo",
    "/proc/stat",
    "/proc/uptime",
    "/proc/loadavg",
    "/sys/devices/system/cpu/online",
)


# /proc/<who>/[task/<tid>/]mountinfo or mounts; who: self, thread-self or a pid
# (procfs takes no leading zero); /proc/mounts is the link to self/mounts.
_MOUNT_TABLE: Final = re.compile(
    rb"/proc/(?:(self|thread-self|[1-9][0-9]{0,9})/(?:task/([1-9][0-9]{0,9})/)?)?"
    rb"(mountinfo|mounts)"
)
_MTAB: Final = b"/etc/mtab"  # glibc's _PATH_MOUNTED: a link to ../proc/self/mounts
_MOUNT_SUFFIXES: Final = (b"/mountinfo", b"/mounts", _MTAB)


def _may_mask_mount_table(masked: str) -> bool:
    """Could this maskedPath cover a mount table a path of ours names? The
    mask is mounted where the path led at set-up (/proc/self was init's
    directory then), so any /proc/<task> or table name counts."""
    parts = [p for p in masked.split("/") if p]
    if not parts or parts[-1] in ("mounts", "mountinfo", "mtab"):
        return True
    if (_MTAB.decode() + "/").startswith("/" + "/".join(parts) + "/"):
        return True
    return parts[0] == "proc" and (
        len(parts) == 1 or parts[1] in ("self", "thread-self") or parts[1].isdigit()
    )


class ProcHandlers:
    """open/openat of :data:`VIRTUAL_FILES` served from :class:`ContainerView`,
    and of the mount tables (module docstring)."""

    def __init__(
        self,
        view: ContainerView,
        host_proc: str = "/proc",
        host_sys: str = "/sys",
        masked: tuple[str, ...] = (),
        root_readonly: bool = True,
        tasks: TaskTable | None = None,
        load: ContainerLoad | None = None,
    ) -> None:
        """``root_readonly``: False only when the workload may write its root
        (the spec's root is writable and the gofer serves it): the mount
        tables then say ``rw`` for it. ``tasks``: translates the pids of
        ``/proc/<pid>/mountinfo``; without it such paths go to the kernel.
        ``load``: the container's load average; without it /proc/loadavg is
        the kernel's (the host's)."""
        self.view = view
        self.host_proc = host_proc
        self.root_readonly = root_readonly
        # The other mounts the workload may write (through the gofer), whose
        # kernel view is read-only too: told by FileHandlers.attach.
        self.writable_mounts: frozenset[str] = frozenset()
        self.tasks = tasks
        self.load = load
        self.mount_tables = not any(_may_mask_mount_table(m) for m in masked)
        self.host_cpus = os.cpu_count() or 1
        # Read now: the confined sentry cannot read /sys/devices/system/cpu.
        try:
            with open(os.path.join(host_sys, "devices/system/cpu/online")) as f:
                self.host_online = cpu_list(f.read())
        except (OSError, ValueError):
            self.host_online = list(range(self.host_cpus))
        # path -> the file's text as a reader (host tid) sees it; only the
        # task counts depend on who reads (the reader is running)
        self.renderers: dict[bytes, Callable[[int], str]] = {
            b"/proc/meminfo": self.meminfo,
            b"/proc/cpuinfo": self.cpuinfo,
            b"/proc/stat": self.stat,
            b"/proc/uptime": self.uptime,
            # glibc's get_nprocs (sysconf(_SC_NPROCESSORS_ONLN), Python's
            # os.cpu_count) counts this list
            b"/sys/devices/system/cpu/online": self.cpu_online,
        }
        if load is not None:
            self.renderers[b"/proc/loadavg"] = load.loadavg
        # maskedPaths stay masked: a masked file (or one below a masked
        # directory) is left to the kernel, which opens the mask.
        for path in list(self.renderers):
            text = path.decode()
            if any(text == m or text.startswith(m.rstrip("/") + "/") for m in masked):
                del self.renderers[path]

    def routes(self) -> dict[int, Handler]:
        return {kernel.SYS_OPEN: self.open, kernel.SYS_OPENAT: self.openat}

    def _host(self, name: str) -> str:
        with open(os.path.join(self.host_proc, name), "rb") as f:
            return f.read().decode()

    def meminfo(self, reader: int = 0) -> str:
        v = self.view
        return render_meminfo(
            self._host("meminfo"), v.memory_limit(), v.memory_usage(), v.swap_limit()
        )

    def cpuinfo(self, reader: int = 0) -> str:
        return render_cpuinfo(self._host("cpuinfo"), self.view.cpus(self.host_cpus))

    def stat(self, reader: int = 0) -> str:
        procs = None
        if self.load is not None:
            now = self.load.census(reader)
            procs = (now.running, now.active - now.running)
        return render_stat(self._host("stat"), self.view.cpus(self.host_cpus), procs)

    def cpu_online(self, reader: int = 0) -> str:
        return format_cpu_list(self.view.cpu_ids(self.host_online)) + "\n"

    def uptime(self, reader: int = 0) -> str:
        now = time.clock_gettime(time.CLOCK_BOOTTIME)
        ncpu = self.view.cpus(self.host_cpus)
        return render_uptime(self._host("uptime"), self.view.started, now, ncpu, self.host_cpus)

    def open(self, call: Call) -> Result:
        return self._serve(call, call.args[0], call.args[1])

    def openat(self, call: Call) -> Result:
        # An absolute path ignores the dirfd, as the kernel does.
        return self._serve(call, call.args[1], call.args[2])

    def _serve(self, call: Call, path_addr: int, flags: int) -> Result:
        flags &= 0xFFFFFFFF
        if not _reads_only(flags):
            return CONTINUE  # decided before any memory is read
        try:
            path = call.read_cstring(path_addr, _PATH_MAX)
        except OSError:
            return CONTINUE  # EFAULT, ENAMETOOLONG: the kernel gives the same answer
        result = self.serve_path(call, path, flags)
        return CONTINUE if result is None else result

    def serve_path(self, call: Call, path: bytes, flags: int) -> Result | None:
        """The open of ``path`` (absolute, already read) if it is a virtual file
        opened read-only; None for anything else."""
        render = self.renderers.get(path)
        if render is None:
            if self.mount_tables and path.endswith(_MOUNT_SUFFIXES):
                return self._serve_mount_table(call, path, flags)
            return None
        flags &= 0xFFFFFFFF
        if not _reads_only(flags):
            return None
        call.verify()  # rule 1: the path read was this caller's, and it still waits
        if call.tracing:
            call.detail = f"{path.decode(errors='replace')!r}, {flags:#o}"
        try:
            data = render(call.pid).encode()
        except OSError:
            return Errno(errno.EIO)
        return self._install(path, data, flags)

    def _install(self, path: bytes, data: bytes, flags: int) -> Result:
        fd = os.memfd_create(path.rsplit(b"/", 1)[-1].decode(), os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError:
            os.close(fd)
            raise
        return InstallFd(fd, cloexec=bool(flags & os.O_CLOEXEC))

    # --- mount tables ----------------------------------------------------------------

    def _serve_mount_table(self, call: Call, path: bytes, flags: int) -> Result | None:
        flags &= 0xFFFFFFFF
        if not _reads_only(flags):
            return None
        table = self._mtab_target(call) if path == _MTAB else path
        match = None if table is None else _MOUNT_TABLE.fullmatch(table)
        if match is None:
            return None
        who, tid, kind = match.groups()
        if who is None and kind != b"mounts":
            return None  # there is no /proc/mountinfo
        try:
            task = self._table_task(call, who or b"self", tid)
        except OSError:  # a task gone meanwhile (the caller too): the kernel answers
            task = None
        if task is None:
            return None  # not the container's task, or no such one: the kernel's answer
        writable = not self.root_readonly
        others = self.writable_mounts
        try:
            text = self._host_text(f"{task}/{kind.decode()}")
            if kind == b"mountinfo":
                data = render_mountinfo(text, writable, others)
            else:
                if writable or others:
                    readonly = readonly_superblocks(self._host_text(f"{task}/mountinfo"))
                    writable = writable and "/" not in readonly
                    others = others - readonly
                data = render_mounts(text, writable, others)
        except OSError as e:
            # the kernel's own answer for that task (gone: ENOENT; exited: EINVAL)
            call.verify()
            return Errno(e.errno or errno.EIO)
        # rule 1: the path read was this caller's, and /proc/<its tid> was its own
        call.verify()
        if call.tracing:
            call.detail = f"{path.decode(errors='replace')!r}, {flags:#o}"
        return self._install(path, data.encode(errors="surrogateescape"), flags)

    def _mtab_target(self, call: Call) -> bytes | None:
        """What the caller's /etc/mtab links to, absolute; None if it is no link."""
        try:
            target = os.readlink(f"{self.host_proc}/{call.pid}/root/etc/mtab".encode())
        except OSError:
            return None  # a file of the image's own: the gofer's to open
        return os.path.normpath(os.path.join(b"/etc", target))

    def _table_task(self, call: Call, who: bytes, tid: bytes | None) -> int | None:
        """The host tid whose mount table ``/proc/<who>[/task/<tid>]`` shows."""
        if who == b"thread-self":
            return None if tid is not None else call.pid  # thread-self has no task/
        if who == b"self":
            leader = self._tgid(call.pid)
        else:
            if self.tasks is None:
                return None
            found = self.tasks.lookup(call.pid, int(who))
            if found is None:
                return None
            if tid is None:
                return found  # /proc/<tid> of a thread is that thread's, as here
            leader = self._tgid(found)
        if tid is None:
            return leader
        if self.tasks is None:
            return None
        thread = self.tasks.lookup(call.pid, int(tid))
        if thread is None or self._tgid(thread) != leader:
            return None  # not a thread of that process: ENOENT from the kernel
        return thread

    def _tgid(self, tid: int) -> int:
        fd = os.open(f"{self.host_proc}/{tid}/status", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
        start = data.index(b"\nTgid:") + 6
        return int(data[start : data.index(b"\n", start)])

    def _host_text(self, name: str) -> str:
        """A host /proc file as text; bytes of a path that are no UTF-8 survive."""
        fd = os.open(os.path.join(self.host_proc, name), os.O_RDONLY | os.O_CLOEXEC)
        try:
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode(errors="surrogateescape")
