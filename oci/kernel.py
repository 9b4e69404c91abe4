"""Raw Linux bindings: the one module that talks to the kernel below the stdlib.

Everything that needs a syscall number, a struct layout, an ioctl or a libc
entry point the stdlib lacks lives here (x86_64 only). Callers get small typed
functions that raise OSError with the kernel's errno, like the os module does.
"""

from __future__ import annotations

import ctypes
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
    _check(_syscall(SYS_PIDFD_SEND_SIGNAL, ctypes.c_int(pidfd), ctypes.c_int(sig), None, 0))


def close_range(first: int, last: int = 0xFFFFFFFF, flags: int = 0) -> None:
    _check(
        _syscall(SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(last), ctypes.c_uint(flags))
    )


CLOSE_RANGE_CLOEXEC: Final = 1 << 2


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat2(2): open path relative to dirfd with RESOLVE_* rules; returns the fd."""
    how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, resolve)
    ret = _syscall(
        SYS_OPENAT2,
        ctypes.c_int(dirfd),
        path.encode(),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    return _check_path(ret, path)


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


# --- inotify (cgroups v2 OOM events) -----------------------------------------
IN_MODIFY: Final = 0x00000002
IN_CLOEXEC: Final = 0o2000000
IN_NONBLOCK: Final = 0o4000


def inotify_init1(flags: int = IN_CLOEXEC) -> int:
    """inotify_init1(2): a new inotify instance; returns its fd."""
    return _check(_libc.inotify_init1(ctypes.c_int(flags)))


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
SIGWINCH: Final = 28


def set_signal_handler(signum: int, handler: Callable[[int, object], None] | None) -> None:
    """Install a Python handler, or the default disposition for None."""
    import _signal  # type: ignore[import-not-found]  # the enum-free core of `signal`

    _signal.signal(signum, _signal.SIG_DFL if handler is None else handler)
