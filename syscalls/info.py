"""Identity and system information: handlers that need no file system.

* ``uname``: a fixed, documented kernel identity, as gVisor reports one (its
  release is "4.4.0"): the workload never learns the host's kernel version
  (exploit selection) and sees the same answer on every host. sysname
  "Linux", release :data:`RELEASE`, version :data:`VERSION`, machine
  "x86_64", and the container's hostname and domainname.
* ``sethostname`` / ``setdomainname``: served within the container's UTS
  namespace, whose authoritative copy is the sentry's :class:`UtsState`
  (uname is served from it; the synthetic /proc/sys/kernel/{hostname,
  domainname} must read the same object). The kernel's checks are kept, in
  its order: CAP_SYS_ADMIN in the caller's effective set (the container's
  user namespace owns its UTS namespace, so its CapEff is what the kernel
  would test) -> EPERM; length above 64 -> EINVAL; unreadable name -> EFAULT.
* ``sysinfo``: the host's figures, bounded by the container's cgroup limits
  (totalram from the memory limit, freeram from limit minus usage, swap from
  the swap limit), the container's uptime and task count when known, so
  ``free`` and runtimes that size heaps from sysinfo see the container.
* ``clock_settime``, ``settimeofday``: EPERM (the realtime clock is the
  host's; no namespace virtualises it). ``adjtimex`` / ``clock_adjtime``:
  read-only queries (modes 0, ADJ_OFFSET_SS_READ) on CLOCK_REALTIME are
  served from the host's clock state, as unprivileged Linux callers may;
  any adjustment is EPERM.
* ``getcpu`` is not here: it is answered by the vDSO or, as a syscall, is
  harmless on the host (disposition ``host``).
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

from pysandbox.oci import kernel
from pysandbox.oci.kernel import CAP_SYS_ADMIN
from pysandbox.oci.records import record
from pysandbox.sentry.loop import Call, Errno, Handler, Result

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

SYSNAME: Final = "Linux"
RELEASE: Final = "4.4.0"
VERSION: Final = "#1 SMP pysandbox"
MACHINE: Final = "x86_64"
UTS_FIELD: Final = 65  # __NEW_UTS_LEN + 1
UTS_MAX: Final = 64
ADJ_OFFSET_SS_READ: Final = 0xA001
CLOCK_REALTIME: Final = 0
MAX_CLOCKS: Final = 16

NAMES: Final[dict[int, str]] = {
    kernel.SYS_UNAME: "uname",
    kernel.SYS_SETHOSTNAME: "sethostname",
    kernel.SYS_SETDOMAINNAME: "setdomainname",
    kernel.SYS_SYSINFO: "sysinfo",
    kernel.SYS_CLOCK_SETTIME: "clock_settime",
    kernel.SYS_SETTIMEOFDAY: "settimeofday",
    kernel.SYS_ADJTIMEX: "adjtimex",
    kernel.SYS_CLOCK_ADJTIME: "clock_adjtime",
}

ARGC: Final[dict[int, int]] = {
    kernel.SYS_UNAME: 1,
    kernel.SYS_SETHOSTNAME: 2,
    kernel.SYS_SETDOMAINNAME: 2,
    kernel.SYS_SYSINFO: 1,
    kernel.SYS_CLOCK_SETTIME: 2,
    kernel.SYS_SETTIMEOFDAY: 2,
    kernel.SYS_ADJTIMEX: 1,
    kernel.SYS_CLOCK_ADJTIME: 2,
}

_EPERM: Final = Errno(errno.EPERM)
_EINVAL: Final = Errno(errno.EINVAL)


@record
class InfoConfig:
    """What the info handlers know about the container (from config.json and its cgroup)."""

    hostname: str = "localhost"
    domainname: str = "(none)"  # what Linux reports when none was set
    machine: str = MACHINE  # "i686" under the LINUX32 personality (`setarch i686`)
    # bytes (cgroup memory.max), None: unlimited; a callable is read at each call
    memory_limit: int | Callable[[], int | None] | None = None
    # bytes of swap (memory.swap.max), None: unlimited; a callable as above
    swap_limit: int | Callable[[], int | None] | None = None
    memory_usage: Callable[[], int] | None = None  # live memory.current
    task_count: Callable[[], int] | None = None  # the container's threads (syscalls/loadavg.py)
    # the container's 1, 5 and 15 minute loads, as sysinfo reports them (<< 16)
    loads: Callable[[], tuple[int, int, int]] | None = None
    boot_time: float | None = None  # CLOCK_BOOTTIME at container start; None: host uptime


def _field(value: bytes) -> bytes:
    return value[: UTS_FIELD - 1].ljust(UTS_FIELD, b"\0")


class UtsState:
    """The container's UTS namespace: hostname and domainname, and uname's answer."""

    __slots__ = ("domainname", "hostname", "machine", "utsname")

    def __init__(self, hostname: str, domainname: str, machine: str = MACHINE) -> None:
        self.hostname = hostname.encode()
        self.domainname = domainname.encode()
        self.machine = machine.encode()
        self.utsname = b""
        self._render()

    def _render(self) -> None:
        # struct new_utsname: six char[65] fields, NUL padded
        self.utsname = b"".join(
            _field(v)
            for v in (
                SYSNAME.encode(),
                self.hostname,
                RELEASE.encode(),
                VERSION.encode(),
                self.machine,
                self.domainname,
            )
        )

    def set_hostname(self, name: bytes) -> None:
        self.hostname = name.split(b"\0", 1)[0]
        self._render()

    def set_domainname(self, name: bytes) -> None:
        self.domainname = name.split(b"\0", 1)[0]
        self._render()


def has_capability(pid: int, cap: int) -> bool:
    """Is ``cap`` in the effective set of task ``pid`` (from /proc/PID/status)?

    The caller verifies the notification afterwards (the pid may be reused).
    """
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"CapEff:"):
                return bool(int(line.split()[1], 16) >> cap & 1)
    return False


# struct sysinfo's fields, in kernel.SYSINFO's order.
_SYSINFO_FIELDS = (
    "uptime",
    "load1",
    "load5",
    "load15",
    "totalram",
    "freeram",
    "sharedram",
    "bufferram",
    "totalswap",
    "freeswap",
    "procs",
    "pad",
    "totalhigh",
    "freehigh",
    "mem_unit",
)


class InfoHandlers:
    """The handlers, sharing one :class:`UtsState` and one :class:`InfoConfig`."""

    def __init__(self, config: InfoConfig | None = None) -> None:
        self.config = config or InfoConfig()
        self.uts = UtsState(self.config.hostname, self.config.domainname, self.config.machine)

    def routes(self) -> dict[int, Handler]:
        return {
            kernel.SYS_UNAME: self.uname,
            kernel.SYS_SETHOSTNAME: self.sethostname,
            kernel.SYS_SETDOMAINNAME: self.setdomainname,
            kernel.SYS_SYSINFO: self.sysinfo,
            kernel.SYS_CLOCK_SETTIME: self.refuse,
            kernel.SYS_SETTIMEOFDAY: self.refuse,
            kernel.SYS_ADJTIMEX: self.adjtimex,
            kernel.SYS_CLOCK_ADJTIME: self.clock_adjtime,
        }

    # --- uname -------------------------------------------------------------
    def uname(self, call: Call) -> Result:
        # The answer is rendered once per hostname change (UtsState), not per call.
        call.write(call.args[0], self.uts.utsname)
        return 0

    # --- sethostname / setdomainname ---------------------------------------
    def _read_uts_name(self, call: Call) -> bytes:
        addr, length = call.notif.args[0], call.notif.args[1] & 0xFFFFFFFF
        if length >= 1 << 31:
            length -= 1 << 32  # the kernel's `int len`
        if not has_capability(call.pid, CAP_SYS_ADMIN):
            call.verify()  # the capability read was this caller's
            raise OSError(errno.EPERM, "no CAP_SYS_ADMIN")
        if length < 0 or length > UTS_MAX:
            raise OSError(errno.EINVAL, "name too long")
        name = call.read(addr, length)
        call.verify()  # rule 1: what we read was the caller's, and it still waits
        if call.tracing:
            call.detail = f"{name!r}, {length}"
        return name

    def sethostname(self, call: Call) -> Result:
        self.uts.set_hostname(self._read_uts_name(call))
        return 0

    def setdomainname(self, call: Call) -> Result:
        self.uts.set_domainname(self._read_uts_name(call))
        return 0

    # --- sysinfo -----------------------------------------------------------
    def sysinfo_fields(self) -> tuple[int, ...]:
        """The struct sysinfo the container sees (fields of kernel.SYSINFO)."""
        cfg = self.config
        f = dict(zip(_SYSINFO_FIELDS, kernel.sysinfo(), strict=True))
        unit = f["mem_unit"] or 1
        if cfg.boot_time is not None:
            f["uptime"] = max(0, int(time.clock_gettime(time.CLOCK_BOOTTIME) - cfg.boot_time))
        memory_limit = cfg.memory_limit() if callable(cfg.memory_limit) else cfg.memory_limit
        swap_limit = cfg.swap_limit() if callable(cfg.swap_limit) else cfg.swap_limit
        if memory_limit is not None:
            limit = memory_limit // unit
            used = (cfg.memory_usage() if cfg.memory_usage else 0) // unit
            f["totalram"] = min(f["totalram"], limit)
            f["freeram"] = max(0, min(f["freeram"], f["totalram"] - used))
            # The cgroup's usage already counts its page cache and shared
            # memory; the host's figures would make `free`'s used (total -
            # free - buffers - cache) negative. /proc/meminfo does the same.
            f["sharedram"] = 0
            f["bufferram"] = 0
        if swap_limit is not None:
            f["totalswap"] = min(f["totalswap"], swap_limit // unit)
            f["freeswap"] = min(f["freeswap"], f["totalswap"])
        if cfg.task_count is not None:
            f["procs"] = min(cfg.task_count(), 0xFFFF)
        if cfg.loads is not None:
            f["load1"], f["load5"], f["load15"] = cfg.loads()
        return tuple(f.values())

    def sysinfo(self, call: Call) -> Result:
        call.write(call.notif.args[0], kernel.SYSINFO.pack(*self.sysinfo_fields()))
        return 0

    # --- time setting ------------------------------------------------------
    def refuse(self, call: Call) -> Result:
        """clock_settime, settimeofday: the host's clock is not the container's to set."""
        return _EPERM

    def _adjtime_query(self, call: Call, addr: int) -> Result:
        timex = bytearray(call.read(addr, kernel.TIMEX_SIZE))
        modes = int.from_bytes(timex[:4], "little")
        if call.tracing:
            call.detail = f"{{modes={modes:#x}}}"
        if modes not in (0, ADJ_OFFSET_SS_READ):
            return _EPERM
        state = kernel.adjtimex(timex)  # a read: the kernel fills in the clock state
        call.write(addr, bytes(timex))
        return state

    def adjtimex(self, call: Call) -> Result:
        return self._adjtime_query(call, call.notif.args[0])

    def clock_adjtime(self, call: Call) -> Result:
        clock = call.notif.args[0] & 0xFFFFFFFF
        if clock == CLOCK_REALTIME:
            return self._adjtime_query(call, call.notif.args[1])
        if clock < MAX_CLOCKS:
            return Errno(errno.EOPNOTSUPP)  # no clock_adj for the other static clocks
        if clock >= 1 << 31:
            return _EPERM  # dynamic (fd-based, PTP) clocks: refused
        return _EINVAL
