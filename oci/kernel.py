"""Raw Linux bindings: the one module that talks to the kernel below the stdlib.

Everything that needs a syscall number, a struct layout, an ioctl or a libc
entry point the stdlib lacks lives here (x86_64 only). Callers get small typed
functions that raise OSError with the kernel's errno, like the os module does.
"""

from __future__ import annotations

import _signal as _csignal  # type: ignore[import-not-found]  # signal's C core: no enums
import ctypes
import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Final

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

# --- syscall numbers (x86_64) ------------------------------------------------
SYS_PERSONALITY: Final = 135
SYS_PIVOT_ROOT: Final = 155
SYS_CAPGET: Final = 125
SYS_CAPSET: Final = 126
SYS_UNSHARE: Final = 272
SYS_SETNS: Final = 308
SYS_SECCOMP: Final = 317
SYS_PIDFD_SEND_SIGNAL: Final = 424
SYS_CLOSE_RANGE: Final = 436
SYS_OPENAT2: Final = 437

# --- namespaces --------------------------------------------------------------
CLONE_NEWTIME: Final = 0x00000080
CLONE_NEWNS: Final = 0x00020000
CLONE_NEWCGROUP: Final = 0x02000000
CLONE_NEWUTS: Final = 0x04000000
CLONE_NEWIPC: Final = 0x08000000
CLONE_NEWUSER: Final = 0x10000000
CLONE_NEWPID: Final = 0x20000000
CLONE_NEWNET: Final = 0x40000000

# OCI namespace type -> (clone flag, /proc/PID/ns entry name)
NAMESPACES: Final[dict[str, tuple[int, str]]] = {
    "pid": (CLONE_NEWPID, "pid"),
    "network": (CLONE_NEWNET, "net"),
    "mount": (CLONE_NEWNS, "mnt"),
    "ipc": (CLONE_NEWIPC, "ipc"),
    "uts": (CLONE_NEWUTS, "uts"),
    "user": (CLONE_NEWUSER, "user"),
    "cgroup": (CLONE_NEWCGROUP, "cgroup"),
    "time": (CLONE_NEWTIME, "time"),
}

# --- mounts ------------------------------------------------------------------
MS_RDONLY: Final = 0x1
MS_NOSUID: Final = 0x2
MS_NODEV: Final = 0x4
MS_NOEXEC: Final = 0x8
MS_SYNCHRONOUS: Final = 0x10
MS_REMOUNT: Final = 0x20
MS_MANDLOCK: Final = 0x40
MS_DIRSYNC: Final = 0x80
MS_NOSYMFOLLOW: Final = 0x100
MS_NOATIME: Final = 0x400
MS_NODIRATIME: Final = 0x800
MS_BIND: Final = 0x1000
MS_MOVE: Final = 0x2000
MS_REC: Final = 0x4000
MS_SILENT: Final = 0x8000
MS_UNBINDABLE: Final = 1 << 17
MS_PRIVATE: Final = 1 << 18
MS_SLAVE: Final = 1 << 19
MS_SHARED: Final = 1 << 20
MS_RELATIME: Final = 1 << 21
MS_STRICTATIME: Final = 1 << 24
MS_LAZYTIME: Final = 1 << 25
MNT_DETACH: Final = 2

# --- prctl -------------------------------------------------------------------
PR_SET_PDEATHSIG: Final = 1
PR_SET_KEEPCAPS: Final = 8
PR_SET_NAME: Final = 15
PR_CAPBSET_READ: Final = 23
PR_CAPBSET_DROP: Final = 24
PR_SET_CHILD_SUBREAPER: Final = 36
PR_SET_NO_NEW_PRIVS: Final = 38
PR_GET_NO_NEW_PRIVS: Final = 39
PR_CAP_AMBIENT: Final = 47
PR_CAP_AMBIENT_RAISE: Final = 2
PR_CAP_AMBIENT_CLEAR_ALL: Final = 4

# --- capabilities ------------------------------------------------------------
# The numbers the runtime's own code names (the full list is CAPABILITIES).
CAP_CHOWN: Final = 0
CAP_DAC_OVERRIDE: Final = 1
CAP_DAC_READ_SEARCH: Final = 2
CAP_FOWNER: Final = 3
CAP_FSETID: Final = 4
CAP_KILL: Final = 5
CAP_SETGID: Final = 6
CAP_SETUID: Final = 7
CAP_SETPCAP: Final = 8
CAP_SYS_PTRACE: Final = 19
CAP_SYS_ADMIN: Final = 21
CAP_SYS_RESOURCE: Final = 24
CAP_SYS_NICE: Final = 23
CAP_MKNOD: Final = 27
CAP_SETFCAP: Final = 31
CAPABILITIES: Final[tuple[str, ...]] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
_CAP_VERSION_3: Final = 0x20080522


def cap_last_cap() -> int:
    """The highest capability number this kernel knows."""
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except OSError:
        return len(CAPABILITIES) - 1


def cap_number(name: str) -> int:
    """CAP_SYS_ADMIN -> 21; raises ValueError for unknown names."""
    return CAPABILITIES.index(name.upper())


# --- personality -------------------------------------------------------------
PER_LINUX: Final = 0x0000
PER_LINUX32: Final = 0x0008


# --- openat2 -----------------------------------------------------------------
RESOLVE_NO_XDEV: Final = 0x01
RESOLVE_NO_MAGICLINKS: Final = 0x02
RESOLVE_NO_SYMLINKS: Final = 0x04
RESOLVE_BENEATH: Final = 0x08
RESOLVE_IN_ROOT: Final = 0x10


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def _check(ret: int) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def _check_path(ret: int, path: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return ret


def unshare(flags: int) -> None:
    _check(_syscall(SYS_UNSHARE, ctypes.c_int(flags)))


def setns(fd: int, nstype: int = 0) -> None:
    _check(_syscall(SYS_SETNS, ctypes.c_int(fd), ctypes.c_int(nstype)))


def pivot_root(new_root: str, put_old: str) -> None:
    _check_path(_syscall(SYS_PIVOT_ROOT, new_root.encode(), put_old.encode()), new_root)


def mount(
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    ret = _libc.mount(
        source.encode() if source is not None else None,
        target.encode(),
        fstype.encode() if fstype is not None else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check_path(ret, target)


def umount2(target: str, flags: int = 0) -> None:
    _check_path(_libc.umount2(target.encode(), ctypes.c_int(flags)), target)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(
        _libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(arg2),
            ctypes.c_ulong(arg3),
            ctypes.c_ulong(arg4),
            ctypes.c_ulong(arg5),
        )
    )


def set_name(name: str) -> None:
    """Set this thread's comm (what ps shows); at most 15 bytes are kept."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _check(_libc.prctl(ctypes.c_int(PR_SET_NAME), buf, 0, 0, 0))


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))))


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))))


def personality(persona: int) -> int:
    return _check(_syscall(SYS_PERSONALITY, ctypes.c_ulong(persona)))


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set this thread's capability sets (bit masks of capability numbers)."""
    hdr = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_syscall(SYS_CAPSET, ctypes.byref(hdr), data))


def capget(pid: int = 0) -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of a thread, as bit masks."""
    hdr = _CapHeader(_CAP_VERSION_3, pid)
    data = (_CapData * 2)()
    _check(_syscall(SYS_CAPGET, ctypes.byref(hdr), data))
    eff = data[0].effective | (data[1].effective << 32)
    perm = data[0].permitted | (data[1].permitted << 32)
    inh = data[0].inheritable | (data[1].inheritable << 32)
    return eff, perm, inh


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    """pidfd_send_signal(2) without siginfo or flags; OSError as the kernel says.
    The C core of `signal` (no enum import; no ctypes call on the sentry's hot path)."""
    _csignal.pidfd_send_signal(pidfd, sig)


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    _check(
        _syscall(SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags))
    )


CLOSE_RANGE_CLOEXEC: Final = 1 << 2


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): open path relative to dirfd with RESOLVE_* rules; returns the fd."""
    try:
        return openat2_bytes(
            dirfd, path.encode(), flags, mode if flags & os.O_CREAT else 0, resolve
        )
    except OSError as e:
        raise OSError(e.errno, e.strerror, path) from None


def seccomp_load_bpf(prog: bytes, flags: int = 0) -> int:
    """Install a raw classic-BPF program with seccomp(SECCOMP_SET_MODE_FILTER).

    Returns what the kernel returns (a listener fd with the NEW_LISTENER flag).
    """

    class _SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]

    fprog = _SockFprog(len(prog) // 8, prog)
    return _check(
        _syscall(SYS_SECCOMP, ctypes.c_uint(1), ctypes.c_uint(flags), ctypes.byref(fprog))
    )


def seccomp_load_listener(prog: bytes) -> int:
    """Install the sandbox's filter; return its listener fd (NEW_LISTENER).

    With WAIT_KILLABLE_RECV (Linux 5.19) where the kernel has it: once the
    sentry has received a call, only a fatal signal interrupts the caller's
    wait, and other signals wait for the answer, as they wait for a call the
    kernel serves. Without it a signal arriving meanwhile (a SIGCHLD) made
    kill(2), stat(2), open(2)... fail with EINTR, which Linux never gives for
    them. A signal that comes before the sentry has received the call still
    interrupts it (the kernel's rule: -ERESTARTSYS, EINTR for a handler
    without SA_RESTART): a window of the wake-up's length.
    """
    flags = SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV
    try:
        return seccomp_load_bpf(prog, flags)
    except OSError as e:
        if e.errno != errno.EINVAL:  # EINVAL: a kernel before 5.19
            raise
    return seccomp_load_bpf(prog, SECCOMP_FILTER_FLAG_NEW_LISTENER)


# --- network interfaces ------------------------------------------------------
_SIOCGIFFLAGS: Final = 0x8913
_SIOCSIFFLAGS: Final = 0x8914
_IFF_UP: Final = 0x1


def set_link_up(name: str) -> None:
    """Bring an interface of the current network namespace up (runc does this for lo)."""
    import _socket  # the C core: the socket module's enums cost a millisecond here
    import fcntl
    import struct

    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH14x", name.encode(), 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, req))[1]
        up = struct.pack("16sH14x", name.encode(), flags | _IFF_UP)
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, up)
    finally:
        s.close()


# --- inotify (cgroups v2 OOM events; the sentry's cached directory modes) ----
IN_MODIFY: Final = 0x00000002
IN_ATTRIB: Final = 0x00000004
IN_MOVE_SELF: Final = 0x00000800
IN_DELETE_SELF: Final = 0x00000400
IN_UNMOUNT: Final = 0x00002000
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000
IN_CLOEXEC: Final = 0o2000000
IN_NONBLOCK: Final = 0o4000


def inotify_init1(flags: int = IN_CLOEXEC) -> int:
    """inotify_init1(2): a new inotify instance; returns its fd."""
    return _check(_libc.inotify_init1(ctypes.c_int(flags)))


def inotify_rm_watch(fd: int, wd: int) -> None:
    """inotify_rm_watch(2): stop the watch ``wd`` (an IN_IGNORED event follows).
    Unlike closing the instance, this does not wait for an SRCU grace period."""
    _check(_libc.inotify_rm_watch(ctypes.c_int(fd), ctypes.c_int(wd)))


def inotify_add_watch(fd: int, path: str, mask: int) -> int:
    """inotify_add_watch(2): watch path for the events in mask; returns the watch descriptor."""
    return _check_path(
        _libc.inotify_add_watch(ctypes.c_int(fd), path.encode(), ctypes.c_uint32(mask)), path
    )


# --- console ---
# pty ioctls the termios module lacks (asm-generic/ioctls.h, x86_64).
TIOCGPTN: Final = 0x80045430  # _IOR('T', 0x30, unsigned int): pty number of a master
TIOCSPTLCK: Final = 0x40045431  # _IOW('T', 0x31, int): (un)lock the slave
TIOCGPTPEER: Final = 0x5441  # _IO('T', 0x41): open the slave from the master (4.13+)


# --- signals -------------------------------------------------------------------
# Numbers (x86_64) and dispositions without the `signal` module, whose enum
# wrappers cost more at start-up than everything else in this file.
SIGHUP: Final = 1
SIGINT: Final = 2
SIGQUIT: Final = 3
SIGKILL: Final = 9
SIGUSR1: Final = 10
SIGUSR2: Final = 12
SIGPIPE: Final = 13
SIGTERM: Final = 15
SIGCHLD: Final = 17
SIGXFSZ: Final = 25
SIGALRM: Final = 14
SIGTSTP: Final = 20
SIGTTIN: Final = 21
SIGTTOU: Final = 22
SIGURG: Final = 23
SIGWINCH: Final = 28
# Dispositions as `_signal` reports them (the `signal` module wraps them in an
# IntEnum that compares equal).
SIG_DFL: Final = 0
SIG_IGN: Final = 1


def set_signal_handler(signum: int, handler: Callable[[int, object], None] | None) -> None:
    """Install a Python handler, or the default disposition for None."""
    _csignal.signal(signum, _csignal.SIG_DFL if handler is None else handler)


def ignore_signal(signum: int) -> None:
    """SIG_IGN for ``signum`` (main thread only, as for every Python disposition)."""
    _csignal.signal(signum, _csignal.SIG_IGN)


def get_signal_handler(signum: int) -> object:
    """The Python-level disposition: a callable, SIG_DFL, SIG_IGN, or None when
    the handler was installed outside Python."""
    handler: object = _csignal.getsignal(signum)
    return handler


def pthread_kill(thread_id: int, signum: int) -> None:
    """Send ``signum`` to one thread of this process (its threading ident)."""
    _csignal.pthread_kill(thread_id, signum)


# --- bpf (cgroup v2 device filter) ---------------------------------------------
# bpf(2) commands, program/attach types and flags from include/uapi/linux/bpf.h.
SYS_BPF: Final = 321
BPF_PROG_LOAD: Final = 5
BPF_PROG_ATTACH: Final = 8
BPF_PROG_DETACH: Final = 9
BPF_PROG_GET_FD_BY_ID: Final = 13
BPF_OBJ_GET_INFO_BY_FD: Final = 15
BPF_PROG_QUERY: Final = 16
BPF_PROG_TYPE_CGROUP_DEVICE: Final = 15
BPF_CGROUP_DEVICE: Final = 6  # enum bpf_attach_type
BPF_F_ALLOW_OVERRIDE: Final = 1 << 0
BPF_F_ALLOW_MULTI: Final = 1 << 1
BPF_F_REPLACE: Final = 1 << 2
BPF_OBJ_NAME_LEN: Final = 16
_BPF_LOG_LEVEL_VERBOSE: Final = 1
_BPF_LOG_SIZE: Final = 1 << 20


class _BpfProgLoadAttr(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * BPF_OBJ_NAME_LEN),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
    ]


class _BpfAttachAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
    ]


class _BpfQueryAttr(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("query_flags", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("prog_ids", ctypes.c_uint64),
        ("prog_cnt", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


class _BpfGetFdByIdAttr(ctypes.Structure):
    _fields_ = [
        ("prog_id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


class _BpfInfoAttr(ctypes.Structure):
    _fields_ = [
        ("bpf_fd", ctypes.c_uint32),
        ("info_len", ctypes.c_uint32),
        ("info", ctypes.c_uint64),
    ]


class _BpfProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info (the kernel fills what fits)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * BPF_OBJ_NAME_LEN),
    ]


class BpfLoadError(OSError):
    """BPF_PROG_LOAD failed; ``verifier_log`` holds what the verifier said (may be empty)."""

    verifier_log: str = ""


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    return _check(
        _syscall(SYS_BPF, ctypes.c_int(cmd), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr)))
    )


def bpf_prog_load(
    prog_type: int,
    insns: bytes,
    license: str = "Apache-2.0",
    name: str = "",
    expected_attach_type: int = 0,
) -> int:
    """Load an eBPF program (raw 8-byte instructions); returns its fd (close-on-exec).

    On failure the load is retried with the verifier log on, and the error
    raised is a :class:`BpfLoadError` whose message ends with the log.
    """
    if len(insns) % 8:
        raise ValueError("eBPF program length is not a multiple of 8 bytes")
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())
    attr = _BpfProgLoadAttr()
    attr.prog_type = prog_type
    attr.insn_cnt = len(insns) // 8
    attr.insns = ctypes.addressof(code)
    attr.license = ctypes.addressof(lic)
    attr.prog_name = name.encode()[: BPF_OBJ_NAME_LEN - 1]
    attr.expected_attach_type = expected_attach_type
    ret = _syscall(
        SYS_BPF, ctypes.c_int(BPF_PROG_LOAD), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr))
    )
    if ret >= 0:
        return int(ret)
    err = ctypes.get_errno()
    log = ctypes.create_string_buffer(_BPF_LOG_SIZE)
    attr.log_level = _BPF_LOG_LEVEL_VERBOSE
    attr.log_size = _BPF_LOG_SIZE
    attr.log_buf = ctypes.addressof(log)
    ret = _syscall(
        SYS_BPF, ctypes.c_int(BPF_PROG_LOAD), ctypes.byref(attr), ctypes.c_uint(ctypes.sizeof(attr))
    )
    if ret >= 0:  # loads with the log on after all: keep this one
        return int(ret)
    text = log.value.decode(errors="replace").strip()
    exc = BpfLoadError(err, os.strerror(err) + (f"; verifier log:\n{text}" if text else ""))
    exc.verifier_log = text
    raise exc


def bpf_prog_attach(
    target_fd: int, prog_fd: int, attach_type: int, flags: int = 0, replace_fd: int = 0
) -> None:
    """BPF_PROG_ATTACH: attach prog_fd to target_fd (a cgroup directory fd)."""
    attr = _BpfAttachAttr(target_fd, prog_fd, attach_type, flags, replace_fd)
    _bpf(BPF_PROG_ATTACH, attr)


def bpf_prog_detach(target_fd: int, prog_fd: int, attach_type: int) -> None:
    """BPF_PROG_DETACH: detach prog_fd (0: the only program) from target_fd."""
    attr = _BpfAttachAttr(target_fd, prog_fd, attach_type, 0, 0)
    _bpf(BPF_PROG_DETACH, attr)


def bpf_prog_query(target_fd: int, attach_type: int) -> tuple[int, list[int]]:
    """BPF_PROG_QUERY: (attach flags, ids of the programs attached directly to target_fd)."""
    import errno

    cap = 64
    while True:
        ids = (ctypes.c_uint32 * cap)()
        attr = _BpfQueryAttr()
        attr.target_fd = target_fd
        attr.attach_type = attach_type
        attr.prog_ids = ctypes.addressof(ids)
        attr.prog_cnt = cap
        try:
            _bpf(BPF_PROG_QUERY, attr)
        except OSError as e:
            if e.errno == errno.ENOSPC and attr.prog_cnt > cap:  # more than fit: grow
                cap = attr.prog_cnt
                continue
            raise
        return int(attr.attach_flags), [int(ids[i]) for i in range(attr.prog_cnt)]


def bpf_prog_get_fd_by_id(prog_id: int) -> int:
    """BPF_PROG_GET_FD_BY_ID: an fd for a loaded program (close-on-exec)."""
    return _bpf(BPF_PROG_GET_FD_BY_ID, _BpfGetFdByIdAttr(prog_id, 0, 0))


def bpf_prog_info(prog_fd: int) -> tuple[int, int, str]:
    """(program type, program id, name) of a loaded program."""
    info = _BpfProgInfo()
    attr = _BpfInfoAttr(prog_fd, ctypes.sizeof(info), ctypes.addressof(info))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, attr)
    return int(info.type), int(info.id), info.name.decode(errors="replace")


# --- seccomp user notification -------------------------------------------------
# seccomp(2) operations, ioctls and struct layouts from include/uapi/linux/seccomp.h
# (x86_64), plus the calls the sentry uses to reach into a tracee: pidfd_getfd,
# process_vm_readv/writev. The structs are handled as fixed byte layouts through
# precompiled struct.Struct objects and fcntl.ioctl (a C call that releases the
# GIL), not ctypes: every notification crosses RECV and SEND, and ctypes' call
# and attribute overhead was most of the Python surplus measured in
# reference/SECCOMP-NOTIFY-FINDINGS.md. What has to go through ctypes
# (process_vm_*) reuses objects made once at import.
import fcntl as _fcntl  # noqa: E402 - this section is appended, see above
import struct as _struct  # noqa: E402

SYS_IOCTL: Final = 16
SYS_SYSINFO: Final = 99
SYS_UNAME: Final = 63
SYS_GETPPID: Final = 110
SYS_ADJTIMEX: Final = 159
SYS_SETTIMEOFDAY: Final = 164
SYS_SETHOSTNAME: Final = 170
SYS_SETDOMAINNAME: Final = 171
SYS_CLOCK_SETTIME: Final = 227
SYS_OPEN: Final = 2
O_LARGEFILE: Final = 0o100000  # the kernel's value; Python's os.O_LARGEFILE is 0 on 64-bit
SYS_OPENAT: Final = 257
SYS_CLOCK_ADJTIME: Final = 305
SYS_GETCPU: Final = 309
SYS_PROCESS_VM_READV: Final = 310
SYS_PROCESS_VM_WRITEV: Final = 311
SYS_PIDFD_OPEN: Final = 434
PIDFD_THREAD: Final = os.O_EXCL  # linux/pidfd.h (6.9+): a pidfd of this thread, not its process
SYS_PIDFD_GETFD: Final = 438

SECCOMP_SET_MODE_STRICT: Final = 0
SECCOMP_SET_MODE_FILTER: Final = 1
SECCOMP_GET_ACTION_AVAIL: Final = 2
SECCOMP_GET_NOTIF_SIZES: Final = 3
SECCOMP_FILTER_FLAG_TSYNC: Final = 1 << 0
SECCOMP_FILTER_FLAG_NEW_LISTENER: Final = 1 << 3
SECCOMP_FILTER_FLAG_TSYNC_ESRCH: Final = 1 << 4
SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: Final = 1 << 5
# TSYNC, LOG, SPEC_ALLOW, NEW_LISTENER, TSYNC_ESRCH, WAIT_KILLABLE_RECV
SECCOMP_FILTER_FLAG_MASK: Final = 0x3F
PR_SET_SECCOMP: Final = 22
SECCOMP_MODE_STRICT: Final = 1  # prctl(PR_SET_SECCOMP) modes
SECCOMP_MODE_FILTER: Final = 2
SECCOMP_RET_USER_NOTIF: Final = 0x7FC00000
SECCOMP_USER_NOTIF_FLAG_CONTINUE: Final = 1
SECCOMP_ADDFD_FLAG_SETFD: Final = 1 << 0
SECCOMP_ADDFD_FLAG_SEND: Final = 1 << 1
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: Final = 1
AUDIT_ARCH_X86_64: Final = 0xC000003E

# _IOWR/_IOW('!', n, type): direction << 30 | size << 16 | '!' << 8 | n
SECCOMP_IOCTL_NOTIF_RECV: Final = 0xC0502100  # _IOWR(.., 0, struct seccomp_notif)
SECCOMP_IOCTL_NOTIF_SEND: Final = 0xC0182101  # _IOWR(.., 1, struct seccomp_notif_resp)
SECCOMP_IOCTL_NOTIF_ID_VALID: Final = 0x40082102  # _IOW(.., 2, __u64)
SECCOMP_IOCTL_NOTIF_ADDFD: Final = 0x40182103  # _IOW(.., 3, struct seccomp_notif_addfd)
SECCOMP_IOCTL_NOTIF_SET_FLAGS: Final = 0x40082104  # _IOW(.., 4, __u64)

# struct seccomp_notif { u64 id; u32 pid; u32 flags;
#   struct seccomp_data { s32 nr; u32 arch; u64 instruction_pointer; u64 args[6]; } data; }
SECCOMP_NOTIF: Final = _struct.Struct("=QIIiIQ6Q")
# struct seccomp_notif_resp { u64 id; s64 val; s32 error; u32 flags; }
SECCOMP_NOTIF_RESP: Final = _struct.Struct("=QqiI")
# struct seccomp_notif_addfd { u64 id; u32 flags; u32 srcfd; u32 newfd; u32 newfd_flags; }
SECCOMP_NOTIF_ADDFD: Final = _struct.Struct("=QIIII")
_U64: Final = _struct.Struct("=Q")


class _SeccompNotifSizes(ctypes.Structure):
    _fields_ = [
        ("seccomp_notif", ctypes.c_uint16),
        ("seccomp_notif_resp", ctypes.c_uint16),
        ("seccomp_data", ctypes.c_uint16),
    ]


def seccomp_notif_sizes() -> tuple[int, int, int]:
    """SECCOMP_GET_NOTIF_SIZES: the kernel's (seccomp_notif, seccomp_notif_resp, seccomp_data)."""
    sizes = _SeccompNotifSizes()
    _check(
        _syscall(
            SYS_SECCOMP,
            ctypes.c_uint(SECCOMP_GET_NOTIF_SIZES),
            ctypes.c_uint(0),
            ctypes.byref(sizes),
        )
    )
    return int(sizes.seccomp_notif), int(sizes.seccomp_notif_resp), int(sizes.seccomp_data)


def seccomp_action_available(action: int) -> bool:
    """SECCOMP_GET_ACTION_AVAIL: does this kernel know the filter return action?"""
    value = ctypes.c_uint32(action)
    ret = _syscall(
        SYS_SECCOMP, ctypes.c_uint(SECCOMP_GET_ACTION_AVAIL), ctypes.c_uint(0), ctypes.byref(value)
    )
    return bool(ret == 0)


class NotifIoctls:
    """RECV / SEND / ID_VALID with argument buffers made once (one instance per serving thread).

    fcntl.ioctl with a preallocated bytearray and mutate=True is the cheapest
    way to make these calls from Python (~0.4 us; a bytes argument or ctypes
    costs 0.55-0.7 us). The RECV buffer is re-zeroed before every call (a dirty
    one is EINVAL) and sized from SECCOMP_GET_NOTIF_SIZES, so a kernel whose
    struct seccomp_notif grew cannot write past it.
    """

    __slots__ = ("_id_buf", "_recv_buf", "_recv_zero", "_send_buf")

    def __init__(self) -> None:
        size = max(seccomp_notif_sizes()[0], SECCOMP_NOTIF.size)
        self._recv_zero = bytes(size)
        self._recv_buf = bytearray(size)
        self._send_buf = bytearray(max(seccomp_notif_sizes()[1], SECCOMP_NOTIF_RESP.size))
        self._id_buf = bytearray(_U64.size)

    def recv(self, fd: int) -> tuple[int, ...]:
        """SECCOMP_IOCTL_NOTIF_RECV (blocking): (id, pid, flags, nr, arch, ip, arg0..arg5).

        Raises OSError ENOENT when the notification vanished (the caller was
        interrupted) or no task uses the filter any more.
        """
        buf = self._recv_buf
        buf[:] = self._recv_zero
        _ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, buf, True)
        return _unpack_notif(buf)

    def send(self, fd: int, notif_id: int, val: int, error: int, flags: int = 0) -> None:
        """SECCOMP_IOCTL_NOTIF_SEND; ``error`` is the kernel's convention: 0 or -errno."""
        buf = self._send_buf
        _pack_resp(buf, 0, notif_id, val, error, flags)
        _ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, buf, True)

    def id_valid(self, fd: int, notif_id: int) -> bool:
        """SECCOMP_IOCTL_NOTIF_ID_VALID: is the task still waiting in that notification?"""
        buf = self._id_buf
        _pack_u64(buf, 0, notif_id)
        try:
            _ioctl(fd, SECCOMP_IOCTL_NOTIF_ID_VALID, buf, True)
        except OSError as e:
            if e.errno == 2:  # ENOENT
                return False
            raise
        return True


_ioctl = _fcntl.ioctl
_unpack_notif = SECCOMP_NOTIF.unpack_from
_pack_resp = SECCOMP_NOTIF_RESP.pack_into
_pack_u64 = _U64.pack_into
_default_ioctls: NotifIoctls | None = None


def _ioctls() -> NotifIoctls:
    global _default_ioctls
    if _default_ioctls is None:
        _default_ioctls = NotifIoctls()
    return _default_ioctls


def notif_recv(fd: int) -> tuple[int, ...]:
    """One-off RECV with shared buffers (not thread-safe; a serving loop owns a NotifIoctls)."""
    return _ioctls().recv(fd)


def notif_send(fd: int, notif_id: int, val: int, error: int, flags: int = 0) -> None:
    """One-off SEND; ``error`` is 0 or -errno."""
    _ioctls().send(fd, notif_id, val, error, flags)


def notif_id_valid(fd: int, notif_id: int) -> bool:
    """One-off NOTIF_ID_VALID."""
    return _ioctls().id_valid(fd, notif_id)


def notif_addfd(
    fd: int, notif_id: int, srcfd: int, flags: int, newfd: int = 0, newfd_flags: int = 0
) -> int:
    """SECCOMP_IOCTL_NOTIF_ADDFD: install srcfd in the target; returns its fd number there.

    With SECCOMP_ADDFD_FLAG_SEND the number is also the call's return value and
    the notification is answered (atomically). newfd_flags: 0 or O_CLOEXEC.
    """
    arg = bytearray(SECCOMP_NOTIF_ADDFD.pack(notif_id, flags, srcfd, newfd, newfd_flags))
    return int(_fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_ADDFD, arg, True))


def notif_set_flags(fd: int, flags: int) -> None:
    """SECCOMP_IOCTL_NOTIF_SET_FLAGS (6.6+): e.g. SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP."""
    # The kernel takes the flags as the ioctl argument itself, not via a pointer.
    _fcntl.ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, flags)


def pidfd_open(pid: int, flags: int = 0) -> int:
    return _check(_syscall(SYS_PIDFD_OPEN, ctypes.c_int(pid), ctypes.c_uint(flags)))


def connect_unix(fd: int, path: bytes) -> None:
    """connect(2) of the socket ``fd`` to the AF_UNIX path ``path`` (at most 107
    bytes), without a Python socket object: making one from a bare fd asks the
    kernel getsockname, which the gofer's allowlist has no need for."""
    if len(path) >= 108 or b"\0" in path:
        raise OSError(errno.EINVAL, "bad AF_UNIX path")
    addr = (1).to_bytes(2, "little") + path + b"\0"  # sa_family AF_UNIX, sun_path
    buf = ctypes.create_string_buffer(addr, len(addr))
    _check(_libc.connect(ctypes.c_int(fd), buf, ctypes.c_uint(len(addr))))


def pidfd_getfd(pidfd: int, targetfd: int, flags: int = 0) -> int:
    """pidfd_getfd(2): a duplicate (close-on-exec) of another process's fd."""
    return _check(
        _syscall(SYS_PIDFD_GETFD, ctypes.c_int(pidfd), ctypes.c_int(targetfd), ctypes.c_uint(flags))
    )


# No argtypes: converting six arguments through argtypes costs ~0.4 us more per
# call than passing ready-made objects. The pid and the iovec counts are Python
# ints, which ctypes passes as C ints (pid_t exactly; libffi widens the counts to
# the unsigned long registers); the iovecs go by byref, the cheapest pointer
# argument ctypes has.
_pvm_readv = _libc.process_vm_readv
_pvm_readv.restype = ctypes.c_ssize_t
_pvm_writev = _libc.process_vm_writev
_pvm_writev.restype = ctypes.c_ssize_t
_get_errno = ctypes.get_errno

VM_BUF_SIZE: Final = 1 << 16  # one transfer; larger requests are split
_vm_buf = ctypes.create_string_buffer(VM_BUF_SIZE)
_vm_view = memoryview(_vm_buf).cast("B")
# Two struct iovec, local then remote, in one buffer: {base, len} {base, len}.
# local.base is always _vm_buf; one pack_into at offset 8 sets the other three
# fields (cheaper than three ctypes attribute stores).
_vm_iovs = bytearray(32)
_U64.pack_into(_vm_iovs, 0, ctypes.addressof(_vm_buf))
_vm_iovs_c = (ctypes.c_char * 32).from_buffer(_vm_iovs)
_vm_local_ref = ctypes.byref(_vm_iovs_c)
_vm_remote_ref = ctypes.byref(_vm_iovs_c, 16)
_vm_set = _struct.Struct("=QQQ").pack_into  # local.len, remote.base, remote.len
EFAULT: Final = 14


def process_vm_readv(pid: int, addr: int, size: int) -> bytes:
    """Read size bytes at addr of process pid; OSError(EFAULT) if any byte is unreadable.

    Not thread-safe (one preallocated transfer buffer): the sentry's loop is
    single-threaded; a second thread would need its own copy of this state.
    """
    if size > VM_BUF_SIZE:
        return b"".join(
            process_vm_readv(pid, addr + off, min(VM_BUF_SIZE, size - off))
            for off in range(0, size, VM_BUF_SIZE)
        )
    _vm_set(_vm_iovs, 8, size, addr, size)
    n = _pvm_readv(pid, _vm_local_ref, 1, _vm_remote_ref, 1, 0)
    if n != size:
        err = _get_errno() if n < 0 else EFAULT  # short: ran into an unmapped page
        raise OSError(err, os.strerror(err))
    return _vm_view[:size].tobytes()


def process_vm_writev(pid: int, addr: int, data: bytes) -> None:
    """Write data at addr of process pid, honouring page protections (unlike /proc/PID/mem).

    OSError(EFAULT) if the range is not wholly writable; a short write may
    have changed a prefix of the range, as the kernel's own copy_to_user can.
    Not thread-safe, like process_vm_readv.
    """
    size = len(data)
    if size > VM_BUF_SIZE:
        for off in range(0, size, VM_BUF_SIZE):
            process_vm_writev(pid, addr + off, data[off : off + VM_BUF_SIZE])
        return
    _vm_view[:size] = data
    _vm_set(_vm_iovs, 8, size, addr, size)
    n = _pvm_writev(pid, _vm_local_ref, 1, _vm_remote_ref, 1, 0)
    if n != size:
        err = _get_errno() if n < 0 else EFAULT
        raise OSError(err, os.strerror(err))


# struct sysinfo (x86_64): long uptime; unsigned long loads[3], totalram, freeram,
# sharedram, bufferram, totalswap, freeswap; u16 procs, pad; unsigned long
# totalhigh, freehigh; u32 mem_unit; char _f[0] (padded to 112 bytes)
SYSINFO: Final = _struct.Struct("=q3Q6QHH4xQQI4x")


def sysinfo() -> tuple[int, ...]:
    """sysinfo(2) of the caller: the fields of SYSINFO in order (pad included)."""
    buf = ctypes.create_string_buffer(SYSINFO.size)
    _check(_libc.sysinfo(buf))
    return SYSINFO.unpack(buf.raw)


TIMEX_SIZE: Final = 208  # sizeof(struct timex) on x86_64; `modes` is its first u32


def adjtimex(timex: bytearray) -> int:
    """adjtimex(2) on a raw struct timex buffer (updated in place); returns the clock state."""
    if len(timex) != TIMEX_SIZE:
        raise ValueError("struct timex is 208 bytes")
    buf = (ctypes.c_char * TIMEX_SIZE).from_buffer(timex)
    return _check(_libc.adjtimex(buf))


# --- sentry self-confinement: Landlock, dumpable ---------------------------------
# include/uapi/linux/landlock.h. The sentry (sentry/confine.py) restricts itself
# to reading what it was handed; the rights a kernel knows grow with its ABI
# version, and a ruleset may only name rights the running kernel knows.
SYS_LANDLOCK_CREATE_RULESET: Final = 444
SYS_LANDLOCK_ADD_RULE: Final = 445
SYS_LANDLOCK_RESTRICT_SELF: Final = 446
LANDLOCK_CREATE_RULESET_VERSION: Final = 1 << 0
LANDLOCK_RULE_PATH_BENEATH: Final = 1
LANDLOCK_ACCESS_FS_EXECUTE: Final = 1 << 0
LANDLOCK_ACCESS_FS_WRITE_FILE: Final = 1 << 1
LANDLOCK_ACCESS_FS_READ_FILE: Final = 1 << 2
LANDLOCK_ACCESS_FS_READ_DIR: Final = 1 << 3
LANDLOCK_ACCESS_FS_REMOVE_DIR: Final = 1 << 4
LANDLOCK_ACCESS_FS_REMOVE_FILE: Final = 1 << 5
LANDLOCK_ACCESS_FS_MAKE_CHAR: Final = 1 << 6
LANDLOCK_ACCESS_FS_MAKE_DIR: Final = 1 << 7
LANDLOCK_ACCESS_FS_MAKE_REG: Final = 1 << 8
LANDLOCK_ACCESS_FS_MAKE_SOCK: Final = 1 << 9
LANDLOCK_ACCESS_FS_MAKE_FIFO: Final = 1 << 10
LANDLOCK_ACCESS_FS_MAKE_BLOCK: Final = 1 << 11
LANDLOCK_ACCESS_FS_MAKE_SYM: Final = 1 << 12
LANDLOCK_ACCESS_FS_REFER: Final = 1 << 13  # ABI 2
LANDLOCK_ACCESS_FS_TRUNCATE: Final = 1 << 14  # ABI 3
LANDLOCK_ACCESS_FS_IOCTL_DEV: Final = 1 << 15  # ABI 5
LANDLOCK_ACCESS_NET_BIND_TCP: Final = 1 << 0  # ABI 4
LANDLOCK_ACCESS_NET_CONNECT_TCP: Final = 1 << 1  # ABI 4
LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET: Final = 1 << 0  # ABI 6
LANDLOCK_SCOPE_SIGNAL: Final = 1 << 1  # ABI 6
PR_GET_DUMPABLE: Final = 3
PR_SET_DUMPABLE: Final = 4


class _LandlockRulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),  # ABI 4
        ("scoped", ctypes.c_uint64),  # ABI 6
    ]


class _LandlockPathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # __attribute__((packed)): 12 bytes
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi_version() -> int:
    """The kernel's Landlock ABI version; 0 if Landlock is missing or disabled at boot."""
    ret = _syscall(
        SYS_LANDLOCK_CREATE_RULESET,
        None,
        ctypes.c_size_t(0),
        ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION),
    )
    return int(ret) if ret > 0 else 0


def landlock_create_ruleset(handled_fs: int, handled_net: int = 0, scoped: int = 0) -> int:
    """landlock_create_ruleset(2); returns the ruleset fd (close-on-exec).

    The struct is passed as long as the newest field that is set needs, so an
    older kernel (which rejects a size it does not know unless the tail is
    zero) gets only what it understands.
    """
    attr = _LandlockRulesetAttr(handled_fs, handled_net, scoped)
    size = 24 if scoped else 16 if handled_net else 8
    return _check(
        _syscall(
            SYS_LANDLOCK_CREATE_RULESET,
            ctypes.byref(attr),
            ctypes.c_size_t(size),
            ctypes.c_uint32(0),
        )
    )


def landlock_add_path_beneath(ruleset_fd: int, parent_fd: int, allowed_access: int) -> None:
    """landlock_add_rule(2), LANDLOCK_RULE_PATH_BENEATH: allow rights beneath parent_fd."""
    attr = _LandlockPathBeneathAttr(allowed_access, parent_fd)
    _check(
        _syscall(
            SYS_LANDLOCK_ADD_RULE,
            ctypes.c_int(ruleset_fd),
            ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH),
            ctypes.byref(attr),
            ctypes.c_uint32(0),
        )
    )


def landlock_restrict_self(ruleset_fd: int, flags: int = 0) -> None:
    """landlock_restrict_self(2): enforce the ruleset on the calling thread (and its
    future children/threads). Needs no_new_privs (or CAP_SYS_ADMIN)."""
    _check(_syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset_fd), ctypes.c_uint32(flags)))


# --- process and signal calls served by the sentry (syscalls/process.py, signal.py) ---
SYS_KILL: Final = 62
SYS_GETRLIMIT: Final = 97
SYS_GETRUSAGE: Final = 98
SYS_TIMES: Final = 100
SYS_PTRACE: Final = 101
SYS_RT_SIGQUEUEINFO: Final = 129
SYS_PRCTL: Final = 157
SYS_SETRLIMIT: Final = 160
SYS_TKILL: Final = 200
SYS_TGKILL: Final = 234
SYS_RT_TGSIGQUEUEINFO: Final = 297
SYS_PRLIMIT64: Final = 302
NS_GET_PARENT: Final = 0xB702  # _IO(0xb7, 0x2): fd of the parent pid/user namespace
SIGINFO_SIZE: Final = 128


def ns_get_parent(ns_fd: int) -> int:
    """NS_GET_PARENT: a new fd for the parent of a pid (or user) namespace.

    OSError EPERM when the parent is outside the caller's namespace (or there
    is none: the initial namespace).
    """
    return int(_fcntl.ioctl(ns_fd, NS_GET_PARENT))


def pidfd_send_signal_info(pidfd: int, sig: int, info: bytes | None, flags: int = 0) -> None:
    """pidfd_send_signal(2) with an optional raw siginfo_t (128 bytes; the stdlib takes none)."""
    if info is not None and len(info) != SIGINFO_SIZE:
        raise ValueError("siginfo_t is 128 bytes")
    buf = ctypes.create_string_buffer(info, SIGINFO_SIZE) if info is not None else None
    _check(
        _syscall(
            SYS_PIDFD_SEND_SIGNAL, ctypes.c_int(pidfd), ctypes.c_int(sig), buf, ctypes.c_uint(flags)
        )
    )


SYS_SCHED_GETAFFINITY: Final = 204


def cpumask_size() -> int:
    """What the raw sched_getaffinity returns for a large buffer: the kernel's
    cpumask size in bytes (NR_CPUS or nr_cpu_ids bits, by kernel config),
    which glibc's wrapper hides."""
    buf = ctypes.create_string_buffer(1024)
    return _check(_syscall(ctypes.c_long(SYS_SCHED_GETAFFINITY), 0, 1024, buf))


# --- gofer ---------------------------------------------------------------------
# Calls the gofer (gofer/server.py) makes per request, on its single thread.
# The credential calls are raw syscalls on purpose: glibc's set*id wrappers
# broadcast a change to every thread of the process, and the stdlib has no
# setfsuid/setfsgid at all; the gofer switches only its own thread, per request.
SYS_SETRESUID: Final = 117
SYS_SETRESGID: Final = 119
SYS_SETGROUPS: Final = 116
SYS_SETFSUID: Final = 122
SYS_SETFSGID: Final = 123
SYS_UTIMENSAT: Final = 280
SYS_RENAMEAT2: Final = 316
AT_FDCWD: Final = -100
AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_REMOVEDIR: Final = 0x200
AT_SYMLINK_FOLLOW: Final = 0x400
AT_EMPTY_PATH: Final = 0x1000
RENAME_NOREPLACE: Final = 1 << 0
RENAME_EXCHANGE: Final = 1 << 1
RENAME_WHITEOUT: Final = 1 << 2
UTIME_NOW: Final = (1 << 30) - 1
UTIME_OMIT: Final = (1 << 30) - 2
NGROUPS_MAX: Final = 65536
_ID_UNCHANGED: Final = 0xFFFFFFFF  # (uid_t)-1: "leave this id as it is"
# struct statfs (x86_64): f_type, f_bsize (long); f_blocks, f_bfree, f_bavail,
# f_files, f_ffree (u64); f_fsid (int[2]); f_namelen, f_frsize, f_flags,
# f_spare[4] (long). 120 bytes.
STATFS: Final = _struct.Struct("=qq5Q2iqqq32x")
_fstatfs = _libc.fstatfs
_timespec2 = _struct.Struct("=qqqq")


# struct open_how by (flags, mode, resolve), built once: the gofer asks with a
# handful of combinations, and building one costs a third of the call. Never
# mutated once made, so threads may share them; the cache is bounded.
_open_hows: dict[tuple[int, int, int], object] = {}


_EAGAIN_RETRIES: Final = 256


def openat2_bytes(dirfd: int, path: bytes, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2) with a bytes path (any bytes but NUL, as the kernel takes them).

    EAGAIN is retried, as openat2(2) asks of its callers: a scoped lookup
    (RESOLVE_IN_ROOT, RESOLVE_BENEATH) through ``..`` fails with it whenever
    any mount or rename anywhere on the host raced it (~2% of such lookups
    while another process mounts in a loop, measured), which says nothing
    about the path."""
    key = (flags, mode, resolve)
    how = _open_hows.get(key)
    if how is None:
        how = ctypes.byref(_OpenHow(flags, mode, resolve))  # keeps the struct alive
        if len(_open_hows) < 256:
            _open_hows[key] = how
    for _ in range(_EAGAIN_RETRIES):
        ret = _syscall(SYS_OPENAT2, dirfd, path, how, 24)
        if ret >= 0:
            return int(ret)
        err = ctypes.get_errno()
        if err != errno.EAGAIN:
            break
    raise OSError(err, os.strerror(err), path)


def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int = 0) -> None:
    """renameat2(2): rename with RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT."""
    ret = _syscall(
        SYS_RENAMEAT2,
        ctypes.c_int(olddirfd),
        old,
        ctypes.c_int(newdirfd),
        new,
        ctypes.c_uint(flags),
    )
    _check_path(ret, os.fsdecode(old))


def utimensat(dirfd: int, path: bytes, times: tuple[int, int, int, int] | None, flags: int) -> None:
    """utimensat(2); ``times`` is (atime s, ns, mtime s, ns), ns may be UTIME_NOW/UTIME_OMIT;
    None sets both to now."""
    buf = ctypes.create_string_buffer(_timespec2.pack(*times), 32) if times is not None else None
    ret = _syscall(SYS_UTIMENSAT, ctypes.c_int(dirfd), path, buf, ctypes.c_int(flags))
    _check_path(ret, os.fsdecode(path))


def fstatfs(fd: int) -> tuple[int, ...]:
    """fstatfs(2) (works on O_PATH fds): the fields of STATFS in order."""
    buf = ctypes.create_string_buffer(STATFS.size)
    _check(_fstatfs(ctypes.c_int(fd), buf))
    return STATFS.unpack(buf.raw)


def setfsuid(uid: int) -> int:
    """This thread's fsuid (raw setfsuid(2)); returns the previous one. The kernel
    reports no error: pass _ID_UNCHANGED to read it back and compare."""
    return int(_syscall(SYS_SETFSUID, ctypes.c_uint(uid)))


def setfsgid(gid: int) -> int:
    """This thread's fsgid (raw setfsgid(2)); returns the previous one."""
    return int(_syscall(SYS_SETFSGID, ctypes.c_uint(gid)))


current_cpu: Callable[[], int] = _libc.sched_getcpu  # the vDSO's getcpu: no syscall


def current_fsuid() -> int:
    return int(_syscall(SYS_SETFSUID, ctypes.c_uint(_ID_UNCHANGED)))


def current_fsgid() -> int:
    return int(_syscall(SYS_SETFSGID, ctypes.c_uint(_ID_UNCHANGED)))


def setgroups_thread(groups: tuple[int, ...]) -> None:
    """This thread's supplementary groups (raw setgroups(2), no glibc broadcast)."""
    arr = (ctypes.c_uint32 * max(len(groups), 1))(*groups)
    _check(_syscall(SYS_SETGROUPS, ctypes.c_size_t(len(groups)), arr))


def _setres_thread(nr: int, real: int, effective: int, saved: int) -> None:
    ids = (ctypes.c_uint(i & _ID_UNCHANGED) for i in (real, effective, saved))
    _check(_syscall(nr, *ids))


def setresuid_thread(ruid: int, euid: int, suid: int) -> None:
    """This thread's uids (raw setresuid(2)); -1 leaves one unchanged."""
    _setres_thread(SYS_SETRESUID, ruid, euid, suid)


def setresgid_thread(rgid: int, egid: int, sgid: int) -> None:
    """This thread's gids (raw setresgid(2)); -1 leaves one unchanged."""
    _setres_thread(SYS_SETRESGID, rgid, egid, sgid)


# --- the path-taking calls the sentry serves through the gofer (syscalls/files.py)
SYS_STAT: Final = 4
SYS_LSTAT: Final = 6
SYS_ACCESS: Final = 21
SYS_TRUNCATE: Final = 76
SYS_RENAME: Final = 82
SYS_MKDIR: Final = 83
SYS_RMDIR: Final = 84
SYS_CREAT: Final = 85
SYS_LINK: Final = 86
SYS_UNLINK: Final = 87
SYS_SYMLINK: Final = 88
SYS_READLINK: Final = 89
SYS_CHMOD: Final = 90
SYS_CHOWN: Final = 92
SYS_LCHOWN: Final = 94
SYS_UTIME: Final = 132
SYS_MKNOD: Final = 133
SYS_STATFS: Final = 137
SYS_CHROOT: Final = 161
SYS_CONNECT: Final = 42
SYS_GETSOCKNAME: Final = 51
SYS_BIND: Final = 49
SYS_SETXATTR: Final = 188
SYS_LSETXATTR: Final = 189
SYS_GETXATTR: Final = 191
SYS_LGETXATTR: Final = 192
SYS_LISTXATTR: Final = 194
SYS_LLISTXATTR: Final = 195
SYS_REMOVEXATTR: Final = 197
SYS_LREMOVEXATTR: Final = 198
SYS_UTIMES: Final = 235
SYS_MKDIRAT: Final = 258
SYS_MKNODAT: Final = 259
SYS_FCHOWNAT: Final = 260
SYS_FUTIMESAT: Final = 261
SYS_NEWFSTATAT: Final = 262
SYS_UNLINKAT: Final = 263
SYS_RENAMEAT: Final = 264
SYS_LINKAT: Final = 265
SYS_SYMLINKAT: Final = 266
SYS_READLINKAT: Final = 267
SYS_FCHMODAT: Final = 268
SYS_FACCESSAT: Final = 269
SYS_STATX: Final = 332
SYS_FACCESSAT2: Final = 439
SYS_FCHMODAT2: Final = 452
AT_EACCESS: Final = 0x200  # faccessat's; the same bit is unlinkat's AT_REMOVEDIR
AT_NO_AUTOMOUNT: Final = 0x800
AT_STATX_SYNC_TYPE: Final = 0x6000
STATX_SIZE: Final = 256  # struct statx


def statx(dirfd: int, path: bytes, flags: int, mask: int) -> bytes:
    """The raw struct statx (256 bytes) of ``path`` relative to ``dirfd``."""
    buf = ctypes.create_string_buffer(STATX_SIZE)
    _check(
        _syscall(
            SYS_STATX, ctypes.c_int(dirfd), path, ctypes.c_int(flags), ctypes.c_uint(mask), buf
        )
    )
    return buf.raw


SYS_MOUNT_SETATTR: Final = 442
MOUNT_ATTR_RDONLY: Final = 0x1


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(path: str, attr_set: int, attr_clr: int = 0, dirfd: int = AT_FDCWD) -> None:
    """Change only the given attributes of the mount at ``path`` (not recursive):
    unlike a MS_REMOUNT, the others (nosuid, nodev, atime: locked in a user
    namespace) stay as they are."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    _check_path(
        _syscall(
            SYS_MOUNT_SETATTR,
            ctypes.c_int(dirfd),
            path.encode(),
            ctypes.c_uint(0),
            ctypes.byref(attr),
            ctypes.c_size_t(ctypes.sizeof(attr)),
        ),
        path,
    )


def faccessat2(dirfd: int, path: bytes, mode: int, flags: int) -> None:
    """faccessat2(2) itself (glibc may emulate it): AT_EACCESS, AT_EMPTY_PATH."""
    _check(
        _syscall(SYS_FACCESSAT2, ctypes.c_int(dirfd), path, ctypes.c_int(mode), ctypes.c_int(flags))
    )


# asm-generic/socket.h numbers the socket module does not name
SO_TIMESTAMP_OLD: Final = 29
SO_TIMESTAMPNS_OLD: Final = 35
SO_PEEK_OFF: Final = 42
SO_TIMESTAMP_NEW: Final = 63
SO_TIMESTAMPNS_NEW: Final = 64
SO_PASSPIDFD: Final = 76  # 6.5+
SO_PASSRIGHTS: Final = 83  # 6.16+
