"""The sentry confines itself (DESIGN.md, rule 3) before it serves anything.

The sentry is the one process that reads untrusted input from the workload
(every notified syscall's arguments) and holds privileges the workload must
never get (ptrace-level access to the container's tasks, signals, the
container's listeners). If a handler bug lets the workload take it over, what
the attacker gets is what this module leaves it:

1. **Capabilities**: only those the handlers use (``keep_caps``, by default
   :data:`SENTRY_CAPABILITIES`) stay effective and permitted; every other one
   leaves the bounding set, the ambient and inheritable sets are emptied.
   ``PR_SET_NO_NEW_PRIVS`` and ``PR_SET_DUMPABLE 0`` (nothing of the same uid
   may ptrace the sentry or read its memory through /proc).
2. **File system**: a mount namespace of its own whose root is an empty,
   read-only tmpfs holding only ``read_paths`` (typically /proc and the
   container's cgroup directory), bind-mounted read-only, nosuid, nodev,
   noexec; the host's root is detached (gVisor's sandbox does the same). Fds
   opened before (the log, the listeners, the control socket) keep working.
   Not Landlock, although the kernel has it: a Landlock-restricted task may
   not ptrace-access tasks outside its domain, i.e. any workload task, so
   process_vm_readv, pidfd_getfd, /proc/PID/fdinfo and /proc/PID/ns/* would
   all fail (see :class:`Confinement`; ``landlock=True`` is there for helpers
   that do not need those, such as the watchdog and the gofer). What is left:
   magic links (/proc/PID/root, /cwd, /fd/N) lead into other tasks' file
   systems; through them the sentry can *read* what CAP_DAC_READ_SEARCH and
   CAP_SYS_PTRACE allow, never write (seccomp: read-only openat, no call that
   changes the file system).
3. **seccomp**: an allowlist (:data:`ALLOWED` and :data:`CONSTRAINED`) of the
   calls the loop, the handlers and the CPython runtime make after start-up,
   found by running the sentry under the integration tests (strace and a
   SECCOMP_RET_LOG trial). Anything else kills the sentry (see
   :data:`DEFAULT_ACTION` for why KILL_PROCESS rather than an errno).

Order matters and is fixed in :meth:`Confinement.apply`: the BPF is compiled
first (libseccomp, a temporary file); the private root is built while
CAP_SYS_ADMIN is there; capabilities are dropped while CAP_SETPCAP is still
there to shrink the bounding set; Landlock (when asked for) needs
no_new_privs; the seccomp filter comes last because it forbids mount, capset,
prctl and the Landlock calls themselves.

Threads: capabilities, Landlock and no_new_privs apply to the calling thread
and what it creates afterwards. :meth:`Confinement.apply` therefore refuses to
run in a process with more than one thread; start the sentry's other threads
(the control socket's accept loop) after it. Processes forked earlier (the
watchdog) are not confined by it.

Lazy imports after confinement fail (ENOENT: the package is not in the new
root): import everything, and load every data file (the syscall table), first.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence

from pysandbox.oci import kernel
from pysandbox.oci.kernel import (
    CAP_DAC_READ_SEARCH,
    CAP_KILL,
    CAP_SYS_NICE,
    CAP_SYS_PTRACE,
    CAP_SYS_RESOURCE,
)
from pysandbox.oci.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "ALLOWED",
    "CONSTRAINED",
    "SENTRY_CAPABILITIES",
    "Confinement",
    "ConfinementReport",
    "confine",
    "drop_capabilities",
    "pivot_into",
]


# What the sentry's handlers need, and why (each was checked by dropping it):
# * CAP_SYS_PTRACE: process_vm_readv/writev and pidfd_getfd on the container's
#   tasks (PTRACE_MODE_ATTACH_REALCREDS: another uid, or a task in a user
#   namespace the sentry does not own), readlink of /proc/PID/ns/* and
#   /proc/PID/fd/*, /proc/PID/fdinfo (all PTRACE_MODE_READ).
# * CAP_DAC_READ_SEARCH: /proc/PID/fd is mode 0500 and owned by the task's
#   uid; a sentry (root) resolving /proc/PID/fd/N of a task of another uid
#   needs a DAC bypass (/proc/PID/fdinfo is checked with ptrace access alone
#   on 6.x kernels). READ_SEARCH, not DAC_OVERRIDE: no writes.
# * CAP_KILL: signals (kill, pidfd_send_signal) on behalf of a workload
#   process to tasks of another uid.
# * CAP_SYS_RESOURCE: prlimit64 raising a hard limit of a container task on
#   behalf of a caller that may. Held only if the sentry had it (some hosts
#   drop it from the bounding set; the report lists it as missing then).
# * CAP_SYS_NICE: sched_setaffinity of the gofer onto the sentry's CPU
#   (syscalls/files.py): the gofer holds capabilities the sentry does not,
#   and the kernel then asks for CAP_SYS_NICE; and of a caller of another uid,
#   allowed only the sentry's CPU for the moment of NOTIF_ADDFD (sentry/loop.py
#   _addfd_here). The allowlist permits no other scheduling call.
# Not needed: CAP_SYS_ADMIN (the seccomp notify ioctls check nothing but the
# fd), CAP_DAC_OVERRIDE, CAP_SETPCAP (only to shrink the bounding set, which
# happens here before it is dropped).
SENTRY_CAPABILITIES: Final = frozenset(
    {CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH, CAP_KILL, CAP_SYS_NICE, CAP_SYS_RESOURCE}
)

# Read-only access for Landlock: files and directories beneath a read path.
_READ_FILE_RIGHTS: Final = kernel.LANDLOCK_ACCESS_FS_READ_FILE
_READ_DIR_RIGHTS: Final = kernel.LANDLOCK_ACCESS_FS_READ_FILE | kernel.LANDLOCK_ACCESS_FS_READ_DIR

# The action for every call not listed. KILL_PROCESS, not ERRNO(EPERM):
# * the sentry already fails closed (rule 2: its watchdog kills the container
#   when it dies), so a call we failed to list costs that one container's
#   availability and can never weaken isolation;
# * an attacker who took the sentry over gets one try, not a probe loop;
# * a missing entry is loud and precise: the kernel logs the number
#   (audit type=1326 "syscall=N", dmesg), where an errno would be swallowed
#   by some ``except OSError`` and show up as odd behaviour much later.
# The calls glibc and CPython probe and handle (clone3) get their own errno.
DEFAULT_ACTION: Final = 0x80000000  # SECCOMP_RET_KILL_PROCESS
_RET_LOG: Final = 0x7FFC0000
_RET_ALLOW: Final = 0x7FFF0000
_RET_ERRNO: Final = 0x00050000

# Every call the sentry makes after confinement, and why. Names are x86_64's.
ALLOWED: Final[dict[str, str]] = {
    # --- the loop and the notify protocol
    "poll": "the loop waits on its listeners and wake-up pipe (select.poll)",
    "ppoll": "poll's other entry point (glibc may use it)",
    "read": "wake-up pipe, /proc and cgroup files, control socket",
    "write": "the log fd, the wake-up pipe, strace lines",
    "close": "fds the sentry owns (listeners that hung up, pidfds, files it read)",
    "fstat": "CPython's open() and FileIO",
    "newfstatat": "fstat/stat through glibc's fstatat",
    "statx": "stat through glibc on newer kernels",
    "lseek": "CPython's FileIO tell/seek on files it opens",
    "getdents64": "os.listdir of /proc/PID/task, /proc/self/fd",
    "readlink": "/proc/PID/ns/*, /proc/PID/fd/* (task table, fd resolution)",
    "readlinkat": "readlink's other entry point",
    "getxattr": "whether a directory has a POSIX ACL (syscalls/lookup.py: then the gofer judges)",
    "lgetxattr": "whether a file has a POSIX ACL (access(2) in syscalls/lookup.py), not its target",
    "inotify_init1": "watches that keep the directory modes syscalls/lookup.py caches true",
    "inotify_add_watch": "a watch per cached directory (IN_ATTRIB, moved, deleted)",
    "inotify_rm_watch": "the watches of a dropped directory cache (closing would wait ~15 ms)",
    "fcntl": "CPython checks and sets fd flags (F_GETFD, F_GETFL)",
    "process_vm_readv": "reading a caller's arguments (rule 1: copy first)",
    "process_vm_writev": "writing results into a caller (uname, sysinfo, ...)",
    "pidfd_open": "pidfds of container tasks (signals, pidfd_getfd)",
    "pidfd_getfd": "a caller's fd, to serve calls on it",
    "pidfd_send_signal": "signals to container tasks",
    "kill": "signals to container tasks (pids)",
    "tgkill": "signals to one thread of a container task; CPython's own raise",
    "prlimit64": "getrlimit/setrlimit/prlimit served for a caller",
    "accept4": "exec's connections on the control socket",
    "accept": "accept's older entry point",
    "recvmsg": "listener fds (SCM_RIGHTS) and requests on the control socket",
    "recvfrom": "socket.recv on the control connection",
    "sendmsg": "answers on the control socket",
    "sendto": "socket.send on the control connection",
    "shutdown": "closing a control connection",
    "getsockopt": "CPython socket objects (SO_TYPE, SO_ERROR)",
    "getsockname": "CPython's socket.accept() wraps the new connection",
    "getpeername": "bind of a caller's AF_UNIX socket: is it connected? (syscalls/sockets.py)",
    "setsockopt": "bind: the caller's socket options onto the gofer's bound socket",
    "sysinfo": "sysinfo is served from the host's figures, cut to the cgroup",
    "times": "times() answers with the sentry's own clock ticks (os.times)",
    "adjtimex": "read-only time queries (modes 0; setting needs CAP_SYS_TIME, dropped)",
    # --- the CPython runtime and glibc
    "brk": "malloc",
    "munmap": "free, thread stacks",
    "mremap": "realloc of large blocks",
    "madvise": "glibc frees thread stacks and large blocks (MADV_DONTNEED)",
    "rt_sigaction": "CPython's signal module",
    "rt_sigprocmask": "glibc masks signals around thread creation",
    "rt_sigreturn": "return from a signal handler",
    "sigaltstack": "CPython/glibc per-thread signal stack",
    "futex": "the GIL, locks, thread joins",
    "set_robust_list": "every new thread (glibc)",
    "rseq": "every new thread registers rseq (glibc 2.35+)",
    "sched_yield": "glibc spin-then-yield locks",
    "sched_getaffinity": "os.cpu_count / sysconf(_SC_NPROCESSORS_ONLN)",
    "pread64": "/proc/TID/status, kept open per task (syscalls/files.py)",
    "sched_setaffinity": (
        "the gofer follows the sentry's CPU, a caller stays on it for ADDFD"
        " (a cross-CPU wake-up is ~50 us here)"
    ),
    "getpid": "os.getpid, pid checks",
    "gettid": "threading, logging",
    "getppid": "os.getppid",
    "getuid": "identity checks (cheap, no state)",
    "geteuid": "identity checks",
    "getgid": "identity checks",
    "getegid": "identity checks",
    "clock_gettime": "time.* when the vDSO falls back",
    "clock_getres": "time.get_clock_info",
    "gettimeofday": "time.time when the vDSO falls back",
    "clock_nanosleep": "time.sleep",
    "nanosleep": "time.sleep (older glibc)",
    "getrandom": "os.urandom, random, hash seeds of new interpreters state",
    "exit": "a thread ends",
    "exit_group": "the sentry ends",
}

# (name, why, alternatives): each alternative is a list of (arg index, mask,
# value) that must all hold (arg & mask == value); any alternative allows.
_CLONE_THREAD: Final = 0x00010000
_CLONE_NS_FLAGS: Final = (
    kernel.CLONE_NEWNS
    | kernel.CLONE_NEWCGROUP
    | kernel.CLONE_NEWUTS
    | kernel.CLONE_NEWIPC
    | kernel.CLONE_NEWUSER
    | kernel.CLONE_NEWPID
    | kernel.CLONE_NEWNET
)
_PROT_EXEC: Final = 0x4
_O_WRITE_FLAGS: Final = (
    os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND | 0o20000000  # __O_TMPFILE
)
_U32: Final = 0xFFFFFFFF
_MFD_CLOEXEC: Final = 0x1
_IOCTLS: Final = (
    kernel.SECCOMP_IOCTL_NOTIF_RECV,
    kernel.SECCOMP_IOCTL_NOTIF_SEND,
    kernel.SECCOMP_IOCTL_NOTIF_ID_VALID,
    kernel.SECCOMP_IOCTL_NOTIF_ADDFD,
    kernel.SECCOMP_IOCTL_NOTIF_SET_FLAGS,
    0x5401,  # TCGETS: CPython's open() asks isatty() to pick its buffering
    0x5421,  # FIONBIO: socket.setblocking / settimeout
    0x5451,  # FIOCLEX: os.set_inheritable(fd, False)
    0x5450,  # FIONCLEX
    kernel.NS_GET_PARENT,  # the task table walks pid namespaces up (sentry/tasks.py)
)
Conditions = list[tuple[int, int, int]]
CONSTRAINED: Final[list[tuple[str, str, list[Conditions]]]] = [
    (
        "clone",
        "threads only: CLONE_THREAD set and no namespace flag (no fork, no new namespaces)",
        [[(0, _CLONE_THREAD | _CLONE_NS_FLAGS, _CLONE_THREAD)]],
    ),
    (
        "openat",
        "read-only: no O_WRONLY/O_RDWR/O_CREAT/O_TRUNC/O_APPEND/O_TMPFILE (also without Landlock)",
        [[(2, _O_WRITE_FLAGS, 0)]],
    ),
    (
        "memfd_create",
        "virtual /proc files (rendered text installed as a memory file): MFD_CLOEXEC only,"
        " never MFD_EXEC; exec and executable mappings are refused anyway",
        [[(1, _U32 & ~_MFD_CLOEXEC, 0)]],
    ),
    ("mmap", "no executable mappings (W^X: nothing to jump to)", [[(2, _PROT_EXEC, 0)]]),
    ("mprotect", "no executable pages; thread stack guards", [[(2, _PROT_EXEC, 0)]]),
    (
        "ioctl",
        "the seccomp notify ioctls on listeners, and CPython's fd/socket ioctls",
        [[(1, _U32, req)] for req in _IOCTLS],
    ),
    (
        "seccomp",
        "SECCOMP_GET_NOTIF_SIZES only (each new Listener sizes its buffers); no new filters",
        [[(0, _U32, kernel.SECCOMP_GET_NOTIF_SIZES)]],
    ),
    (
        "clock_adjtime",
        "glibc's adjtimex(): read-only query of CLOCK_REALTIME",
        [[(0, _U32, 0)]],
    ),
]
# Calls refused with an errno rather than the default action because glibc
# or CPython try them and fall back: clone3 cannot be constrained by seccomp
# (its flags are behind a pointer), so glibc gets ENOSYS and uses clone.
ERRNO_CALLS: Final[dict[str, int]] = {"clone3": errno.ENOSYS}


@record
class ConfinementReport:
    """What :func:`confine` achieved (for the sentry's log and the tests)."""

    capabilities: tuple[str, ...]  # effective = permitted now
    missing_capabilities: tuple[str, ...]  # asked for but not held before
    bounding_dropped: bool  # False: no CAP_SETPCAP, the bounding set is unchanged
    landlock_abi: int  # 0: no Landlock on this kernel
    filesystem: str  # "private read-only root", "landlock", or why unconfined
    read_paths: tuple[str, ...]  # the ones readable now (that existed)
    seccomp_syscalls: int  # entries of the allowlist
    seccomp_action: str  # "kill_process" or "log" (trial mode)

    def summary(self) -> str:
        caps = ",".join(self.capabilities) or "none"
        missing = f" (missing: {','.join(self.missing_capabilities)})" * bool(
            self.missing_capabilities
        )
        return (
            f"sentry: confined: caps={caps}{missing}"
            f" bounding={'dropped' if self.bounding_dropped else 'unchanged'}"
            f" fs={self.filesystem} (landlock ABI {self.landlock_abi})"
            f" read={':'.join(self.read_paths) or '-'}"
            f" seccomp={self.seccomp_syscalls} calls, else {self.seccomp_action}"
        )


_bpf_cache: dict[int, bytes] = {}


def compile_allowlist(default_action: int = DEFAULT_ACTION, cache_dir: str | None = None) -> bytes:
    """The sentry's seccomp program (classic BPF), compiled by libseccomp once per
    process, and kept in ``cache_dir`` (keyed by the allowlist itself) when
    given: compiling costs ~22 ms, which every container start would pay."""
    prog = _bpf_cache.get(default_action)
    if prog is not None:
        return prog
    path = None
    if cache_dir is not None:
        from pysandbox.oci.jsonio import sha256_hex
        from pysandbox.oci.seccomp import read_cached_bpf

        key = sha256_hex(
            repr(
                (sorted(ALLOWED), CONSTRAINED, sorted(ERRNO_CALLS.items()), default_action)
            ).encode()
        )
        path = os.path.join(cache_dir, f"sentry-allowlist-{key}.bpf")
        prog = read_cached_bpf(path)
    if prog is None:
        prog = _compile(default_action)
        if path is not None:
            from pysandbox.oci.seccomp import write_cached_bpf

            write_cached_bpf(path, prog)
    _bpf_cache[default_action] = prog
    return prog


def _compile(default_action: int) -> bytes:
    import tempfile

    import pyseccomp

    filt = pyseccomp.SyscallFilter(default_action)
    filt.set_attr(pyseccomp.Attr.CTL_NNP, 0)  # set by us, before, with the other prctls
    filt.set_attr(pyseccomp.Attr.ACT_BADARCH, DEFAULT_ACTION)  # i386/x32: always killed
    try:
        filt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)  # binary tree: the loop calls are hot
    except OSError:
        pass
    constrained = {name for name, _why, _alts in CONSTRAINED}
    for name in ALLOWED:
        if name not in constrained:
            filt.add_rule(_RET_ALLOW, name)
    for name, _why, alternatives in CONSTRAINED:
        for alt in alternatives:
            args = [pyseccomp.Arg(i, pyseccomp.MASKED_EQ, mask, value) for i, mask, value in alt]
            filt.add_rule(_RET_ALLOW, name, *args)
    for name, err in ERRNO_CALLS.items():
        filt.add_rule(_RET_ERRNO | err, name)
    with tempfile.TemporaryFile() as buf:
        filt.export_bpf(buf)
        buf.seek(0)
        return buf.read()


def _landlock_rights(abi: int) -> tuple[int, int, int]:
    """(handled fs rights, handled net rights, scopes) this kernel's ABI knows."""
    fs = (1 << 13) - 1  # ABI 1: EXECUTE .. MAKE_SYM
    if abi >= 2:
        fs |= kernel.LANDLOCK_ACCESS_FS_REFER
    if abi >= 3:
        fs |= kernel.LANDLOCK_ACCESS_FS_TRUNCATE
    if abi >= 5:
        fs |= kernel.LANDLOCK_ACCESS_FS_IOCTL_DEV
    net = 0
    if abi >= 4:
        net = kernel.LANDLOCK_ACCESS_NET_BIND_TCP | kernel.LANDLOCK_ACCESS_NET_CONNECT_TCP
    # Abstract unix sockets only. Not LANDLOCK_SCOPE_SIGNAL: the sentry signals
    # the container's tasks, which are outside its Landlock domain.
    scoped = kernel.LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET if abi >= 6 else 0
    return fs, net, scoped


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


class Confinement:
    """The confinement, prepared (BPF compiled, capabilities chosen) and applied once.

    Preparing costs the libseccomp import and compile (~15 ms); do it during
    the sentry's start-up, then :meth:`apply` right before serving.

    ``landlock``: use Landlock instead of a private root for the file system.
    Off for the sentry, on purpose: a Landlock-restricted task may not
    ptrace-access any task outside its own domain, and every workload task is
    outside it, so process_vm_readv/writev and pidfd_getfd fail with EPERM and
    /proc/PID/fdinfo and /proc/PID/ns/* with EACCES, whatever the
    capabilities (checked on 6.18, ABI 7; tests/unit/test_sentry_confine.py).
    It suits helpers that only read files and signal (the watchdog, the gofer).
    """

    def __init__(
        self,
        *,
        read_paths: Sequence[str],
        keep_caps: Iterable[int] = SENTRY_CAPABILITIES,
        landlock: bool = False,
        trial: bool = False,
        cache_dir: str | None = None,
    ) -> None:
        """``trial``: SECCOMP_RET_LOG instead of killing (the kernel logs every
        unlisted call, audit type 1326): for finding what a new handler needs."""
        self.read_paths = tuple(read_paths)
        for path in self.read_paths:
            if not os.path.isabs(path) or os.path.normpath(path) != path or path == "/":
                raise ValueError(f"read path must be absolute, normalised and not /: {path!r}")
        self.keep_caps = frozenset(keep_caps)
        self.landlock = landlock
        self.trial = trial
        self.bpf = compile_allowlist(_RET_LOG if trial else DEFAULT_ACTION, cache_dir)
        self.applied = False

    def apply(self, log_fd: int = -1) -> ConfinementReport:
        """Confine the calling (single-threaded) process; write the summary to ``log_fd``."""
        if self.applied:
            raise RuntimeError("confinement applied twice")
        if _thread_count() != 1:
            raise RuntimeError(
                "confine() must run before the sentry starts threads:"
                " capabilities and Landlock bind only the calling thread"
            )
        abi = kernel.landlock_abi_version()
        ruleset = -1
        if self.landlock:
            ruleset, fs_status, allowed_paths = self._landlock_ruleset(abi)
        else:
            allowed_paths = self._private_root()  # needs CAP_SYS_ADMIN: before the drop
            fs_status = "private read-only root"
        try:
            kept, missing, bounding = drop_capabilities(self.keep_caps)
            kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
            kernel.prctl(kernel.PR_SET_DUMPABLE, 0)
            if ruleset >= 0:
                kernel.landlock_restrict_self(ruleset)
                fs_status = "landlock"
        finally:
            if ruleset >= 0:
                os.close(ruleset)
        kernel.seccomp_load_bpf(self.bpf)
        self.applied = True
        report = ConfinementReport(
            capabilities=tuple(kernel.CAPABILITIES[c] for c in sorted(kept)),
            missing_capabilities=tuple(kernel.CAPABILITIES[c] for c in sorted(missing)),
            bounding_dropped=bounding,
            landlock_abi=abi,
            filesystem=fs_status,
            read_paths=allowed_paths,
            seccomp_syscalls=len(set(ALLOWED) | {n for n, _w, _a in CONSTRAINED}),
            seccomp_action="log" if self.trial else "kill_process",
        )
        if log_fd >= 0:
            try:
                os.write(log_fd, (report.summary() + "\n").encode())
            except OSError:
                pass
        return report

    def _private_root(self) -> tuple[str, ...]:
        """A mount namespace of the sentry's own whose root holds only the read paths.

        gVisor's sandbox does the same (an empty root with /proc). The new root
        is a tmpfs (mounted over /tmp of the new namespace: nothing on the host
        changes); each read path is bind-mounted at its own name, read-only,
        nosuid, nodev, noexec; the old root is detached. Paths that do not
        exist are skipped. Returns the paths that were mounted.
        """
        k = kernel
        new_root = "/tmp"
        hidden = k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC
        k.unshare(k.CLONE_NEWNS)
        k.mount(None, "/", None, k.MS_REC | k.MS_PRIVATE)
        # The sources are opened before the tmpfs may hide one (a path under
        # /tmp), and after the unshare: a bind source must be a mount of ours.
        sources: list[tuple[str, int]] = []
        try:
            for path in self.read_paths:
                try:
                    sources.append((path, os.open(path, os.O_PATH | os.O_CLOEXEC)))
                except FileNotFoundError:
                    continue
            k.mount("sentry-root", new_root, "tmpfs", hidden, "mode=0555")
            for path, fd in sources:
                target = new_root + path
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.makedirs(target, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o400))
                k.mount(f"/proc/self/fd/{fd}", target, None, k.MS_BIND | k.MS_REC)
                k.mount(None, target, None, k.MS_REMOUNT | k.MS_BIND | k.MS_RDONLY | hidden)
        finally:
            for _path, fd in sources:
                os.close(fd)
        pivot_into(new_root)
        return tuple(path for path, _fd in sources)

    def _landlock_ruleset(self, abi: int) -> tuple[int, str, tuple[str, ...]]:
        """(ruleset fd or -1, status, paths with a rule)."""
        if abi <= 0:
            return -1, "unconfined (no Landlock on this kernel)", ()
        fs, net, scoped = _landlock_rights(abi)
        ruleset = kernel.landlock_create_ruleset(fs, net, scoped)
        allowed: list[str] = []
        try:
            for path in self.read_paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue  # nothing there to read: nothing to allow
                try:
                    is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
                    rights = _READ_DIR_RIGHTS if is_dir else _READ_FILE_RIGHTS
                    kernel.landlock_add_path_beneath(ruleset, fd, rights)
                finally:
                    os.close(fd)
                allowed.append(path)
        except BaseException:
            os.close(ruleset)
            raise
        return ruleset, "landlock (prepared)", tuple(allowed)


def pivot_into(new_root: str) -> None:
    """Make ``new_root`` (a mount of a private mount namespace) the root, detach
    the old one, and make the new root read-only, nosuid, nodev, noexec. The
    sentry's and the gofer's."""
    k = kernel
    os.mkdir(new_root + "/.old")
    k.pivot_root(new_root, new_root + "/.old")
    os.chdir("/")
    k.umount2("/.old", k.MNT_DETACH)
    os.rmdir("/.old")
    flags = k.MS_REMOUNT | k.MS_RDONLY | k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC
    k.mount(None, "/", None, flags)


def drop_capabilities(keep_caps: Iterable[int]) -> tuple[set[int], set[int], bool]:
    """Keep only ``keep_caps`` (effective = permitted; inheritable and ambient
    empty), dropping the rest of the bounding set first. Returns (kept, asked
    for but missing, bounding set dropped). The sentry's and the gofer's."""
    _eff, perm, _inh = kernel.capget()
    last = kernel.cap_last_cap()
    keep = {c for c in keep_caps if 0 <= c <= last}
    kept = {c for c in keep if perm >> c & 1}
    missing = keep - kept
    # The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    bounding = True
    for cap in range(last + 1):
        if cap in keep:
            continue
        try:
            kernel.prctl(kernel.PR_CAPBSET_DROP, cap)
        except OSError as e:
            if e.errno != errno.EPERM:
                raise
            bounding = False  # no CAP_SETPCAP: moot without execve, which seccomp refuses
            break
    kernel.prctl(kernel.PR_CAP_AMBIENT, kernel.PR_CAP_AMBIENT_CLEAR_ALL)
    mask = sum(1 << c for c in kept)
    kernel.capset(mask, mask, 0)
    return kept, missing, bounding


def confine(
    *,
    read_paths: Sequence[str],
    log_fd: int = -1,
    keep_caps: Iterable[int] = SENTRY_CAPABILITIES,
    landlock: bool = False,
) -> ConfinementReport:
    """Prepare and apply the sentry's confinement in one go (see :class:`Confinement`)."""
    return Confinement(read_paths=read_paths, keep_caps=keep_caps, landlock=landlock).apply(log_fd)
