"""sched_getaffinity: the CPUs a container may use, as its CPU limit says.

``nproc``, Go's GOMAXPROCS, Rust's available_parallelism and thread pools
size themselves from the affinity mask. Under runc a container limited to
half a CPU still sees every host CPU and starts that many busy threads. The
sentry answers with the task's real mask cut to the container's share: its
first N CPUs, N = the cpuset's size, the quota rounded up, at most the host's
count (:meth:`ContainerView.cpus`); runsc's ``--cpu-num-from-quota`` does the
same. The mask is what the kernel would report otherwise, so a container
without a CPU limit sees no difference. sched_setaffinity stays the kernel's:
a task may still pin itself anywhere its cpuset allows.

The kernel's checks, in its order: a length below the mask's size in bits, or
not a multiple of sizeof(long), is EINVAL; a pid the caller cannot see is
ESRCH; the mask is copied out (EFAULT) and the call returns the bytes copied
(min(len, cpumask size)), which is what the raw syscall returns.
"""

from __future__ import annotations

import errno
import os

from pysandbox.oci import kernel
from pysandbox.sentry.loop import Call, Errno, Handler, Result
from pysandbox.sentry.tasks import TaskTable

from .args import s32, target_task
from .procfs import ContainerView, cpu_list

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["SYS_SCHED_GETAFFINITY", "AffinityHandlers", "mask_bytes", "nr_cpu_ids"]

SYS_SCHED_GETAFFINITY: Final = kernel.SYS_SCHED_GETAFFINITY
_LONG: Final = 8
_EINVAL: Final = Errno(errno.EINVAL)
_ESRCH: Final = Errno(errno.ESRCH)


def nr_cpu_ids(possible: str) -> int:
    """The kernel's nr_cpu_ids: one more than the highest possible CPU ("0-3,6" -> 7)."""
    highest = 0
    for part in possible.strip().split(","):
        if part:
            highest = max(highest, int(part.rpartition("-")[2]))
    return highest + 1


def mask_bytes(cpus: list[int], size: int) -> bytes:
    """A cpumask of ``size`` bytes (little-endian longs) with ``cpus`` set."""
    value = 0
    for cpu in cpus:
        value |= 1 << cpu
    return value.to_bytes(size, "little")


class AffinityHandlers:
    def __init__(self, view: ContainerView, tasks: TaskTable, sys: str = "/sys") -> None:
        self.view = view
        self.tasks = tasks
        with open(f"{sys}/devices/system/cpu/possible") as f:
            self.nr_cpu_ids = nr_cpu_ids(f.read())
        try:
            with open(f"{sys}/devices/system/cpu/online") as f:
                self.host_cpus = len(cpu_list(f.read())) or self.nr_cpu_ids
        except (OSError, ValueError):
            self.host_cpus = self.nr_cpu_ids
        self.mask_size = kernel.cpumask_size()

    def routes(self) -> dict[int, Handler]:
        return {SYS_SCHED_GETAFFINITY: self.sched_getaffinity}

    def visible(self, real: set[int]) -> list[int]:
        """The CPUs of a task's real mask the container is shown."""
        return sorted(real)[: self.view.cpus(self.host_cpus)]

    def sched_getaffinity(self, call: Call) -> Result:
        pid, length, addr = s32(call.args[0]), call.args[1] & 0xFFFFFFFF, call.args[2]
        if length * 8 < self.nr_cpu_ids or length & (_LONG - 1):
            return _EINVAL
        target = target_task(call, self.tasks, pid)
        if target is None:
            return _ESRCH
        try:
            real = os.sched_getaffinity(target)
        except ProcessLookupError:
            return _ESRCH
        size = min(length, self.mask_size)
        call.write(addr, mask_bytes(self.visible(real), self.mask_size)[:size])
        return size
