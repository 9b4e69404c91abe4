"""The container's load average: /proc/loadavg and sysinfo's loads and task count.

The kernel keeps one load average, the host's: under runc a container reads
how busy every other tenant keeps the machine, and ``make -l``, ``uptime``,
``top`` and monitoring agents act on it. gVisor answers zeros. The sentry
computes the container's own, as the kernel computes the host's and as
LXCFS does for containers:

* every :data:`LOAD_FREQ` seconds a thread of the sentry counts the
  container's *active* tasks, those running or runnable (state R) and those
  in uninterruptible sleep (D), over the processes of the container's cgroup
  and the cgroups below it, less the sentry's own threads and its watchdog
  (they live in that cgroup; the gofer does not);
* the three averages follow the kernel's calc_load exactly: 11-bit fixed
  point, the decay factors EXP_1, EXP_5 and EXP_15, the same rounding; they
  start at 0.00 when the container is created, as the kernel's do at boot.

/proc/loadavg then reads ``L1 L5 L15 running/total last``, in the kernel's
format: ``running`` counts the container's tasks in state R now (the reader
itself among them), ``total`` its threads, and ``last`` is the container's
pid of its newest task: the highest pid among its tasks (Linux prints the
last pid its pid namespace allocated, which a task that exited may have had).
sysinfo(2) reports the same loads (shifted to SI_LOAD_SHIFT) and the task
count, where the host's were.
"""

from __future__ import annotations

import os
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Final

__all__ = ["LOAD_FREQ", "ContainerLoad", "LoadAverage", "calc_load"]

FSHIFT: Final = 11  # include/linux/sched/loadavg.h
FIXED_1: Final = 1 << FSHIFT
EXP: Final = (1884, 2014, 2037)  # 1/exp(5s/1min), 1/exp(5s/5min), 1/exp(5s/15min)
LOAD_FREQ: Final = 5.0  # seconds between samples (the kernel's 5*HZ+1 ticks)
SI_LOAD_SHIFT: Final = 16  # struct sysinfo's loads


def calc_load(load: int, exp: int, active: int) -> int:
    """One step of the kernel's exponential average (``active`` in fixed point)."""
    new = load * exp + active * (FIXED_1 - exp)
    if active >= load:
        new += FIXED_1 - 1
    return new // FIXED_1


class LoadAverage:
    """Three fixed-point averages, fed one count of active tasks per sample."""

    def __init__(self) -> None:
        self.avenrun = [0, 0, 0]

    def tick(self, active: int) -> None:
        self.avenrun = [
            calc_load(load, exp, active * FIXED_1)
            for load, exp in zip(self.avenrun, EXP, strict=True)
        ]

    def text(self, running: int, total: int, last_pid: int) -> str:
        """/proc/loadavg's line (fs/proc/loadavg.c: rounded to 1/100)."""
        shown = []
        for load in self.avenrun:
            load += FIXED_1 // 200
            shown.append(f"{load >> FSHIFT}.{((load & (FIXED_1 - 1)) * 100) >> FSHIFT:02d}")
        return f"{' '.join(shown)} {running}/{total} {last_pid}\n"

    def sysinfo_loads(self) -> tuple[int, int, int]:
        shift = SI_LOAD_SHIFT - FSHIFT
        a, b, c = (load << shift for load in self.avenrun)
        return a, b, c


class Census:
    """One look at the container's tasks."""

    __slots__ = ("active", "newest", "running", "total")

    def __init__(self) -> None:
        self.active = 0  # state R or D
        self.running = 0  # state R
        self.total = 0  # threads
        self.newest = 0  # the highest host tid


class ContainerLoad:
    """The container's :class:`LoadAverage`, sampled by a thread of its own
    (:meth:`start`), and what /proc/loadavg and sysinfo read from it."""

    def __init__(
        self,
        cgroup_dir: str | None,
        excluded: Callable[[], Iterable[int]],
        proc: str = "/proc",
    ) -> None:
        """``cgroup_dir``: the container's cgroup (one hierarchy's directory;
        None: no cgroup, every figure is 0). ``excluded``: the processes that
        are in it but not the container's (the sentry, its watchdog)."""
        self.cgroup_dir = cgroup_dir
        self.excluded = excluded
        self.proc = proc
        self.average = LoadAverage()
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._sample_forever, daemon=True, name="loadavg").start()

    def _sample_forever(self) -> None:
        deadline = time.monotonic()
        while True:
            deadline += LOAD_FREQ
            time.sleep(max(0.0, deadline - time.monotonic()))
            self.sample()

    def sample(self) -> None:
        """Count the active tasks now and feed the averages."""
        active = self.census().active
        with self._lock:
            self.average.tick(active)

    def census(self, reader: int = 0) -> Census:
        """The container's tasks now; ``reader`` (a host tid), stopped in the
        open of /proc/loadavg the sentry is serving, counts as running, as the
        kernel counts the task that reads the file."""
        found = Census()
        if self.cgroup_dir is None:
            return found
        skip = {str(pid) for pid in self.excluded()}
        for pid in _cgroup_procs(self.cgroup_dir):
            if pid in skip:
                continue
            try:
                tids = os.listdir(f"{self.proc}/{pid}/task")
            except OSError:
                continue  # gone meanwhile
            for tid in tids:
                state = _state(f"{self.proc}/{pid}/task/{tid}/stat")
                if state is None:
                    continue
                found.total += 1
                found.newest = max(found.newest, int(tid))
                if state == b"R" or int(tid) == reader:
                    found.running += 1
                    found.active += 1
                elif state == b"D":
                    found.active += 1
        return found

    def loadavg(self, reader: int) -> str:
        """/proc/loadavg of the container, as ``reader`` (a host tid) reads it."""
        now = self.census(reader)
        with self._lock:
            return self.average.text(now.running, now.total, self._container_pid(now.newest))

    def sysinfo_loads(self) -> tuple[int, int, int]:
        with self._lock:
            return self.average.sysinfo_loads()

    def task_count(self) -> int:
        """The container's threads now (sysinfo's procs). Not a census: that
        reads every thread's stat (~250 us with a compiler or two running,
        and gcc asks sysinfo a few times per run); the cgroups' own thread
        lists (v1 ``tasks``, v2 ``cgroup.threads``) give them in a read each,
        less the excluded processes' threads."""
        if self.cgroup_dir is None:
            return 0
        tids: set[bytes] = set()
        for directory in _cgroup_dirs(self.cgroup_dir):
            tids.update(_thread_ids(directory))
        for pid in self.excluded():
            try:
                tids.difference_update(
                    os.fsencode(t) for t in os.listdir(f"{self.proc}/{pid}/task")
                )
            except OSError:
                continue  # not there (any more)
        return len(tids)

    def _container_pid(self, tid: int) -> int:
        """The task's pid in its innermost pid namespace (the container's)."""
        if not tid:
            return 0
        try:
            with open(f"{self.proc}/{tid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"NSpid:"):
                        return int(line.split()[-1])
        except (OSError, ValueError):
            pass
        return 0


def _cgroup_dirs(top: str) -> list[str]:
    """Cgroup ``top`` and those below it (a container may make its own:
    systemd, docker in docker); none when it is gone. A cgroup directory's
    link count is 2 + its child cgroups: usually there are none, and no walk
    (~15 us) is needed."""
    try:
        below = os.stat(top).st_nlink > 2
    except OSError:
        return []
    return [d for d, _dirs, _files in os.walk(top)] if below else [top]


def _cgroup_procs(top: str) -> list[str]:
    """The processes of cgroup ``top`` and of those below it."""
    out: list[str] = []
    for directory in _cgroup_dirs(top):
        try:
            with open(os.path.join(directory, "cgroup.procs"), "rb") as f:
                out.extend(line.decode() for line in f.read().split())
        except OSError:
            continue  # removed meanwhile
    return out


def _thread_ids(directory: str) -> list[bytes]:
    """The thread ids a cgroup lists (v1 ``tasks``, v2 ``cgroup.threads``)."""
    for name in ("tasks", "cgroup.threads"):
        try:
            with open(os.path.join(directory, name), "rb") as f:
                return f.read().split()
        except FileNotFoundError:
            continue
        except OSError:
            break  # removed meanwhile
    return []


def _state(stat_path: str) -> bytes | None:
    """Field 3 of a /proc/<pid>/task/<tid>/stat (after the comm, which may hold
    spaces and parentheses); None when the task is gone."""
    try:
        with open(stat_path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    end = data.rfind(b")")
    return data[end + 2 : end + 3] if end >= 0 else None
