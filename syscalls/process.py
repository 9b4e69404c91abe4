"""Process calls: resource limits and usage, CPU, tracing, personality, prctl, seccomp.

Each handler's docstring says what Linux does and what pysandbox does. The
sentry is in the host's pid namespace with every capability, so where it acts
itself (rlimits) it first makes every check the kernel would have made for
the *caller*; where it hands the call back to the kernel (CONTINUE) it has
looked only at integer arguments, which the caller cannot change after the
notification was raised (rule 1 of DESIGN.md is about pointer arguments: the
memory behind a pointer can change between our check and the kernel's use,
a register cannot).

Residual window of the CONTINUE paths that name a pid: when the container
shares the host's pid namespace, the target may exit after our check and its
pid be reused by a host process before the kernel looks it up. Pids are
handed out cyclically, so that takes a full wrap of the pid space within a
few microseconds; the kernel's own permission checks (ptrace_may_access,
kill's credential check) still apply to whatever it finds. With its own pid
namespace the container cannot name a host task at all.
"""

from __future__ import annotations

import errno
import os
import resource
import struct
import threading

from pysandbox.oci import kernel
from pysandbox.oci.kernel import CAP_SYS_RESOURCE
from pysandbox.sentry.loop import CONTINUE, Call, Errno, Handler, Result
from pysandbox.sentry.tasks import TaskTable
from pysandbox.syscalls.args import s32 as _s32
from pysandbox.syscalls.args import target_task

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

RLIM_INFINITY: Final = (1 << 64) - 1
RLIM_NLIMITS: Final = 16
RLIMIT_NOFILE: Final = 7
_U64: Final = (1 << 64) - 1
_U32: Final = 0xFFFFFFFF

RLIMIT: Final = struct.Struct("=QQ")  # struct rlimit / rlimit64 (x86_64: both u64 pairs)
# struct rusage: two struct timeval, then 14 longs from ru_maxrss to ru_nivcsw
RUSAGE: Final = struct.Struct("=4q14q")
TMS: Final = struct.Struct("=4q")  # struct tms: four clock_t
U32: Final = struct.Struct("=I")

RUSAGE_SELF: Final = 0
RUSAGE_CHILDREN: Final = -1
RUSAGE_THREAD: Final = 1

PTRACE_TRACEME: Final = 0
PTRACE_SETOPTIONS: Final = 0x4200
PTRACE_SEIZE: Final = 0x4206
PTRACE_O_SUSPEND_SECCOMP: Final = 1 << 21


# prctl options that reach the sentry (not in SAFE_PRCTLS) and are handed to the
# kernel: they change only the caller's own state, take integers (or a pointer
# we never read), and the kernel checks whatever privilege they need.
PRCTL_CONTINUE: Final = {
    13: "PR_GET_TIMING",
    14: "PR_SET_TIMING (only PR_TIMING_STATISTICAL exists)",
    26: "PR_SET_TSC (rdtsc faults for the caller)",
    28: "PR_SET_SECUREBITS (the kernel wants CAP_SETPCAP)",
    31: "PR_TASK_PERF_EVENTS_DISABLE (perf_event_open is denied anyway)",
    32: "PR_TASK_PERF_EVENTS_ENABLE",
    33: "PR_MCE_KILL (the caller's machine-check policy)",
    53: "PR_SET_SPECULATION_CTRL (the caller's own mitigations)",
    57: "PR_SET_IO_FLUSHER (the kernel wants CAP_SYS_RESOURCE)",
    58: "PR_GET_IO_FLUSHER",
    59: "PR_SET_SYSCALL_USER_DISPATCH (runs before seccomp and only blocks calls)",
    65: "PR_SET_MDWE (memory-deny-write-execute: only tightens)",
    66: "PR_GET_MDWE",
    68: "PR_GET_MEMORY_MERGE",
    77: "PR_TIMER_CREATE_RESTORE_IDS (the caller's timers)",
    78: "PR_FUTEX_HASH (the caller's private futex hash)",
    0x41555856: "PR_GET_AUXV (copies the caller's auxv to the caller)",
    # SAFE_PRCTLS of policies/constants.toml, should a profile route them here
    1: "PR_SET_PDEATHSIG",
    2: "PR_GET_PDEATHSIG",
    3: "PR_GET_DUMPABLE",
    4: "PR_SET_DUMPABLE",
    7: "PR_GET_KEEPCAPS",
    8: "PR_SET_KEEPCAPS",
    15: "PR_SET_NAME",
    16: "PR_GET_NAME",
    21: "PR_GET_SECCOMP",
    23: "PR_CAPBSET_READ",
    24: "PR_CAPBSET_DROP",
    25: "PR_GET_TSC",
    27: "PR_GET_SECUREBITS",
    29: "PR_SET_TIMERSLACK",
    30: "PR_GET_TIMERSLACK",
    34: "PR_MCE_KILL_GET",
    36: "PR_SET_CHILD_SUBREAPER",
    37: "PR_GET_CHILD_SUBREAPER",
    38: "PR_SET_NO_NEW_PRIVS",
    39: "PR_GET_NO_NEW_PRIVS",
    40: "PR_GET_TID_ADDRESS",
    41: "PR_SET_THP_DISABLE",
    42: "PR_GET_THP_DISABLE",
    46: "PR_GET_FP_MODE",
    47: "PR_CAP_AMBIENT (the kernel checks permitted/inheritable and NO_RAISE)",
    52: "PR_GET_SPECULATION_CTRL",
    0x53564D41: "PR_SET_VMA",
    0x59616D61: "PR_SET_PTRACER",
}
# prctl options refused with EPERM although the kernel knows them.
PRCTL_EPERM: Final = {
    35: "PR_SET_MM: rewrites the exe link, auxv, arg/env and brk bounds the sentry relies on",
    67: "PR_SET_MEMORY_MERGE: KSM merging is a cross-tenant timing side channel",
}
# Everything else is EINVAL, the kernel's answer for an option it does not have:
# the arm64/riscv/powerpc/mips options (PR_SET_FP_MODE, PR_SVE_*, PR_PAC_*,
# tagged addresses, shadow stack status, PR_GET/SET_UNALIGN, _FPEMU, _FPEXC,
# _ENDIAN) do not exist on x86_64; PR_SCHED_CORE (62) takes a pid whose
# process group may reach past the container, and is reported absent as on a
# kernel without CONFIG_SCHED_CORE; MPX (43, 44) was removed.

_EINVAL: Final = Errno(errno.EINVAL)
_EPERM: Final = Errno(errno.EPERM)
_ESRCH: Final = Errno(errno.ESRCH)


def _to_py(value: int) -> int:
    """An rlim_t (u64) as Python's resource module passes it (a C long long)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _from_py(value: int) -> int:
    return value & _U64


def _read_nr_open() -> int:
    with open("/proc/sys/fs/nr_open", "rb") as f:
        return int(f.read())


class ProcessHandlers:
    """The handlers, sharing one :class:`TaskTable`."""

    def __init__(self, tasks: TaskTable) -> None:
        self.tasks = tasks
        self.clk_tck = os.sysconf("SC_CLK_TCK")
        self._rlimit_lock = threading.Lock()
        self._cpu_node: dict[int, int] | None = None

    def routes(self) -> dict[int, Handler]:
        return {
            kernel.SYS_GETRLIMIT: self.getrlimit,
            kernel.SYS_SETRLIMIT: self.setrlimit,
            kernel.SYS_PRLIMIT64: self.prlimit64,
            kernel.SYS_GETRUSAGE: self.getrusage,
            kernel.SYS_TIMES: self.times,
            kernel.SYS_GETCPU: self.getcpu,
            kernel.SYS_PTRACE: self.ptrace,
            kernel.SYS_PROCESS_VM_READV: self.process_vm,
            kernel.SYS_PROCESS_VM_WRITEV: self.process_vm,
            kernel.SYS_PERSONALITY: self.personality,
            kernel.SYS_PRCTL: self.prctl,
            kernel.SYS_SECCOMP: self.seccomp,
        }

    # --- resource limits ---------------------------------------------------
    def _set_limit(
        self, call: Call, target: int, res: int, new: tuple[int, int] | None
    ) -> tuple[int, int]:
        """do_prlimit for ``target`` (host tid) with the caller's privileges; returns the old limit.

        ``new`` is the sentry's copy, read and verified already.
        """
        if res >= RLIM_NLIMITS:
            raise OSError(errno.EINVAL, "bad resource")
        if new is None:
            soft, hard = resource.prlimit(target, res)
            return _from_py(soft), _from_py(hard)
        cur, hard_new = new
        if cur > hard_new:
            raise OSError(errno.EINVAL, "soft limit above hard limit")
        if res == RLIMIT_NOFILE and hard_new > _read_nr_open():
            raise OSError(errno.EPERM, "RLIMIT_NOFILE above fs.nr_open")
        # One sentry thread serves the calls, and every rlimit change is served
        # here: nothing can lower the hard limit between the comparison and the
        # set (the lock keeps that true should serving ever become concurrent).
        with self._rlimit_lock:
            old = tuple(_from_py(v) for v in resource.prlimit(target, res))
            if hard_new > old[1] and not self._capable(call, CAP_SYS_RESOURCE):
                raise OSError(errno.EPERM, "raising the hard limit needs CAP_SYS_RESOURCE")
            resource.prlimit(target, res, (_to_py(cur), _to_py(hard_new)))
        return old[0], old[1]

    def _capable(self, call: Call, cap: int) -> bool:
        """capable(cap): in the caller's CapEff *and* the caller in the initial user namespace."""
        tasks = self.tasks
        ok = tasks.status(call.pid).has_cap(cap) and tasks.userns(call.pid) == tasks.host_userns
        call.verify()  # what was read was this caller's
        return ok

    def _read_rlimit(self, call: Call, addr: int) -> tuple[int, int]:
        cur, hard = RLIMIT.unpack(call.read(addr, RLIMIT.size))  # one copy, then only that
        call.verify()
        return cur, hard

    def getrlimit(self, call: Call) -> Result:
        """getrlimit(resource, rlim): Linux: EINVAL for a resource >= RLIM_NLIMITS,
        then copies the limit out (EFAULT). We read the caller's limit with
        prlimit(2) on its host tid and write it."""
        res, addr = call.args[0] & _U32, call.args[1]
        old = self._set_limit(call, call.pid, res, None)
        call.write(addr, RLIMIT.pack(*old))
        return 0

    def setrlimit(self, call: Call) -> Result:
        """setrlimit(resource, rlim): Linux copies the struct in (EFAULT), then: bad
        resource EINVAL, soft > hard EINVAL, RLIMIT_NOFILE above fs.nr_open EPERM,
        hard limit raised without CAP_SYS_RESOURCE (in the initial user namespace)
        EPERM. We make the same checks in that order on one copy of the struct,
        then set the caller's limit with prlimit(2)."""
        res, addr = call.args[0] & _U32, call.args[1]
        new = self._read_rlimit(call, addr)
        if call.tracing:
            call.detail = f"{res}, {{{new[0]:#x}, {new[1]:#x}}}"
        self._set_limit(call, call.pid, res, new)
        return 0

    def prlimit64(self, call: Call) -> Result:
        """prlimit64(pid, resource, new, old): Linux copies ``new`` in (EFAULT), finds
        the pid in the caller's namespace (ESRCH), checks the caller may (same
        thread; or its uid equals the target's real/effective/saved uids and its
        gid the target's gids; or CAP_SYS_RESOURCE over the target's user
        namespace: else EPERM), applies setrlimit's checks, swaps the limit and
        copies the old one out (EFAULT, after the change). We do the same; a
        target outside the container is ESRCH, as a pid the caller cannot see."""
        pid, res = _s32(call.args[0]), call.args[1] & _U32
        new_addr, old_addr = call.args[2], call.args[3]
        new = self._read_rlimit(call, new_addr) if new_addr else None
        target = target_task(call, self.tasks, pid)
        if target is None:
            return _ESRCH
        if target != call.pid and not self._may_prlimit(call, target):
            return _EPERM
        old = self._set_limit(call, target, res, new)
        if old_addr:
            call.write(old_addr, RLIMIT.pack(*old))
        return 0

    def _may_prlimit(self, call: Call, target: int) -> bool:
        tasks = self.tasks
        me, them = tasks.status(call.pid), tasks.status(target)
        uid, gid = me.uids[0], me.gids[0]
        ok = all(u == uid for u in them.uids[:3]) and all(g == gid for g in them.gids[:3])
        if not ok and me.has_cap(CAP_SYS_RESOURCE):
            mine = tasks.userns(call.pid)
            ok = mine == tasks.host_userns or mine == tasks.userns(target)
        call.verify()
        return ok

    # --- usage ---------------------------------------------------------------
    def getrusage(self, call: Call) -> Result:
        """getrusage(who, usage): Linux sums the process's (or the thread's, or the
        waited-for children's) CPU times, faults, context switches, block I/O and
        peak RSS; a bad ``who`` is EINVAL. We read the same counters from /proc:
        /proc/<tid>/stat (whole process), /proc/<tid>/task/<tid>/stat (the
        thread), status (VmHWM, context switches) and io (blocks of 512 bytes).
        Approximate: CPU times have clock-tick (10 ms) granularity; RUSAGE_SELF's
        context switches are those of the live threads (exited threads' are
        lost); RUSAGE_CHILDREN has CPU times and faults only (maxrss, context
        switches and block I/O of children are not in /proc: 0)."""
        who = _s32(call.args[0])
        tid, tasks = call.pid, self.tasks
        if who == RUSAGE_CHILDREN:
            f = tasks.stat_fields(tid)
            utime, stime, minflt, majflt = int(f[13]), int(f[14]), int(f[8]), int(f[10])
            maxrss = nvcsw = nivcsw = inblock = oublock = 0
        elif who in (RUSAGE_SELF, RUSAGE_THREAD):
            base = f"{tasks.proc}/{tid}" if who == RUSAGE_SELF else f"{tasks.proc}/{tid}/task/{tid}"
            f = tasks.stat_fields(tid) if who == RUSAGE_SELF else _fields(f"{base}/stat")
            utime, stime, minflt, majflt = int(f[11]), int(f[12]), int(f[7]), int(f[9])
            status = _keyed(f"{tasks.proc}/{tid}/status")
            maxrss = _kb(status.get(b"VmHWM", b"0"))
            if who == RUSAGE_SELF:
                nvcsw = nivcsw = 0
                for t in os.listdir(f"{tasks.proc}/{tid}/task"):
                    try:
                        st = _keyed(f"{tasks.proc}/{tid}/task/{t}/status")
                    except OSError:
                        continue
                    nvcsw += int(st.get(b"voluntary_ctxt_switches", b"0"))
                    nivcsw += int(st.get(b"nonvoluntary_ctxt_switches", b"0"))
            else:
                nvcsw = int(status.get(b"voluntary_ctxt_switches", b"0"))
                nivcsw = int(status.get(b"nonvoluntary_ctxt_switches", b"0"))
            try:
                io = _keyed(f"{base}/io")
                inblock = int(io.get(b"read_bytes", b"0")) >> 9
                oublock = int(io.get(b"write_bytes", b"0")) >> 9
            except OSError:  # no task I/O accounting in this kernel
                inblock = oublock = 0
        else:
            return _EINVAL
        tck = self.clk_tck
        usage = RUSAGE.pack(
            utime // tck,
            utime % tck * (1_000_000 // tck),
            stime // tck,
            stime % tck * (1_000_000 // tck),
            maxrss,
            0,  # ixrss, idrss, isrss: always 0 on Linux
            0,
            0,
            minflt,
            majflt,
            0,  # nswap
            inblock,
            oublock,
            0,  # msgsnd, msgrcv, nsignals: always 0 on Linux
            0,
            0,
            nvcsw,
            nivcsw,
        )
        call.write(call.args[1], usage)
        return 0

    def times(self, call: Call) -> Result:
        """times(buf): Linux fills struct tms (the process's and its waited-for
        children's user/system time, in clock ticks) if ``buf`` is not NULL and
        returns clock ticks since an arbitrary point (boot minus 5 minutes).
        We read the times from /proc/<tid>/stat and return the sentry's own
        times() value, which is the same system-wide clock."""
        addr = call.args[0]
        if addr:
            f = self.tasks.stat_fields(call.pid)
            call.write(addr, TMS.pack(int(f[11]), int(f[12]), int(f[13]), int(f[14])))
        return round(os.times().elapsed * self.clk_tck)

    def getcpu(self, call: Call) -> Result:
        """getcpu(cpu, node, tcache): Linux writes the CPU the caller runs on and its
        NUMA node (NULL pointers skipped; tcache unused since 2.6.24). The caller
        waits in the syscall, so the CPU it last ran on (field 39 of
        /proc/<tid>/task/<tid>/stat) is the one it made the call from; the node
        comes from /sys/devices/system/node (0 without NUMA)."""
        cpu_addr, node_addr = call.args[0], call.args[1]
        cpu = int(_fields(f"{self.tasks.proc}/{call.pid}/task/{call.pid}/stat")[36])
        if cpu_addr:
            call.write(cpu_addr, U32.pack(cpu))
        if node_addr:
            call.write(node_addr, U32.pack(self._node_of(cpu)))
        return 0

    def _node_of(self, cpu: int) -> int:
        if self._cpu_node is None:
            nodes: dict[int, int] = {}
            base = "/sys/devices/system/node"
            try:
                for name in os.listdir(base):
                    if name.startswith("node") and name[4:].isdigit():
                        with open(f"{base}/{name}/cpulist") as f:
                            for cpu_id in _cpulist(f.read()):
                                nodes[cpu_id] = int(name[4:])
            except OSError:
                pass
            self._cpu_node = nodes
        return self._cpu_node.get(cpu, 0)

    # --- tracing and other processes' memory -------------------------------
    def ptrace(self, call: Call) -> Result:
        """ptrace(request, pid, addr, data): Linux lets a task trace what
        ptrace_may_access allows in its pid namespace. PTRACE_TRACEME is handed
        to the kernel; any other request is for a pid, which must be a task of
        the container (else ESRCH, Linux's answer for a pid it cannot see), and
        is then handed to the kernel, which checks attach rights and tracee
        state. Only integer registers were looked at (rule 1 is about pointers).
        PTRACE_O_SUSPEND_SECCOMP in SETOPTIONS/SEIZE is EPERM (the kernel refuses
        it too for a tracer under seccomp; we do not depend on that)."""
        request = call.args[0] & _U64
        if request == PTRACE_TRACEME:
            return CONTINUE
        if not self.tasks.may_target(call.pid, _s32(call.args[1])):
            return _ESRCH
        if request in (PTRACE_SETOPTIONS, PTRACE_SEIZE) and call.args[3] & PTRACE_O_SUSPEND_SECCOMP:
            return _EPERM
        return CONTINUE

    def process_vm(self, call: Call) -> Result:
        """process_vm_readv/writev(pid, ...): Linux copies between the caller and a
        task it may ptrace-read/attach. The pid must be a task of the container
        (else ESRCH); then the kernel runs the call (the iovecs are not read)."""
        if not self.tasks.may_target(call.pid, _s32(call.args[0])):
            return _ESRCH
        return CONTINUE

    # --- personality, prctl, seccomp ----------------------------------------
    def personality(self, call: Call) -> Result:
        """personality(persona): Linux sets the execution domain and flags and returns
        the old value. Only values outside SAFE_PERSONALITIES (PER_LINUX,
        PER_LINUX32, their UNAME26 variants, the 0xffffffff query) reach the
        sentry, and they are EPERM, as under Docker's default profile (which
        allows exactly those five): ADDR_NO_RANDOMIZE turns ASLR off,
        READ_IMPLIES_EXEC makes every readable mapping executable, the foreign
        execution domains are not supported. Tools cope (gdb and setarch warn)."""
        return _EPERM

    def prctl(self, call: Call) -> Result:
        """prctl(option, ...): only options outside SAFE_PRCTLS reach the sentry.
        kernel.PR_SET_SECCOMP with mode strict or filter is handed to the kernel (prctl
        cannot ask for a listener; filters stack and the most restrictive action
        wins, see :meth:`seccomp`), another mode is EINVAL as in Linux. The
        options of :data:`PRCTL_CONTINUE` only touch the caller and are handed to
        the kernel; :data:`PRCTL_EPERM` are refused; anything else is EINVAL, the
        kernel's answer for an option it does not have (see the notes there)."""
        option = call.args[0] & _U32
        if option == kernel.PR_SET_SECCOMP:
            mode = call.args[1] & _U64
            return (
                CONTINUE
                if mode in (kernel.SECCOMP_MODE_STRICT, kernel.SECCOMP_MODE_FILTER)
                else _EINVAL
            )
        if option in PRCTL_CONTINUE:
            return CONTINUE
        if option in PRCTL_EPERM:
            return _EPERM
        return _EINVAL

    def seccomp(self, call: Call) -> Result:
        """seccomp(op, flags, args): Linux installs a filter on the caller (strict
        mode, or a BPF program), or answers GET_ACTION_AVAIL / GET_NOTIF_SIZES.
        A filter with SECCOMP_FILTER_FLAG_NEW_LISTENER is EBUSY: the kernel
        refuses a second listener in a filter tree that has one (ours) anyway,
        after reading the program, so a bad program with that flag is EFAULT or
        EINVAL there and EBUSY here. Unknown ops and flags are EINVAL (a flag
        this code does not know is not let through). Everything else is handed
        to the kernel without reading the program: a workload filter cannot
        weaken ours, because the kernel runs every stacked filter and takes the
        most restrictive action (RET_USER_NOTIF, ours, is more restrictive than
        RET_TRACE and RET_ALLOW; a workload RET_USER_NOTIF has no listener and
        fails the call with ENOSYS), and since Linux 4.8 a syscall a tracer
        changes at a RET_TRACE stop is run through the filters again."""
        op, flags = call.args[0] & _U32, call.args[1] & _U32
        if op == kernel.SECCOMP_SET_MODE_STRICT:
            return CONTINUE if flags == 0 else _EINVAL
        if op == kernel.SECCOMP_SET_MODE_FILTER:
            if flags & ~kernel.SECCOMP_FILTER_FLAG_MASK:
                return _EINVAL
            listener = flags & kernel.SECCOMP_FILTER_FLAG_NEW_LISTENER
            if (
                flags & kernel.SECCOMP_FILTER_FLAG_TSYNC
                and listener
                and not flags & kernel.SECCOMP_FILTER_FLAG_TSYNC_ESRCH
            ):
                return _EINVAL
            if flags & kernel.SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV and not listener:
                return _EINVAL
            return Errno(errno.EBUSY) if listener else CONTINUE
        if op in (kernel.SECCOMP_GET_ACTION_AVAIL, kernel.SECCOMP_GET_NOTIF_SIZES):
            return CONTINUE
        return _EINVAL


def _fields(path: str) -> list[bytes]:
    with open(path, "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2 :].split()


def _keyed(path: str) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    with open(path, "rb") as f:
        for line in f:
            key, _, value = line.partition(b":")
            out[key] = value.strip()
    return out


def _kb(value: bytes) -> int:
    return int(value.split()[0]) if value.split() else 0


def _cpulist(text: str) -> list[int]:
    out: list[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def routes(tasks: TaskTable) -> dict[int, Handler]:
    return ProcessHandlers(tasks).routes()
