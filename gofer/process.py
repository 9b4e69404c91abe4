"""Starting a gofer: fork a child that confines itself and serves a socketpair end.

:func:`start` returns once the gofer is confined and serving (it reports so
on the socketpair), with the other end for a :class:`~pysandbox.gofer.client.GoferClient`.
The gofer exits when that end is closed (the sentry exited or died).

What the confined gofer is left with (DESIGN.md rule 3), in the order
:func:`_confine` applies it:

1. **Its own pid namespace**, where it is pid 1 and alone: it can see and
   signal no other process, and the procfs it mounts (``subset=pid``) holds
   nothing but itself. It needs that /proc for ``/proc/self/fd/N``, the
   race-free way to act on an fd it resolved (see gofer/server.py). From the
   host only SIGKILL reaches it (the kernel shields a namespace's init).
2. **Its own mount namespace** whose root is an empty read-only tmpfs
   holding ``/root`` (the container's rootfs, bind-mounted, not recursively:
   the gofer serves that one file system; the extra sources, the container's
   binds, are ``/mounts/N``, a file one as ``/mounts/N/f``), that /proc, and
   nothing of the host; it is read-only once they are bound. Where a user
   namespace locks the container's mounts together the bind has to be
   recursive; either way the gofer never serves what is mounted on the
   root: a path into one of ``kernel_mounts`` (or onto any other mount) is
   answered KERNEL_SERVED, for the kernel to serve (gofer/walk.py).
   The binds are ``nodev``: a device node in the rootfs cannot be opened
   through the gofer (EACCES) until the sentry checks linux.devices.
   ``readonly`` sources are bound read-only (EROFS, from the kernel).
3. **Its own network namespace**: no interface but a down loopback.
4. **Capabilities**: :data:`GOFER_CAPABILITIES` only (effective = permitted
   = bounding), ambient and inheritable empty; no_new_privs; not dumpable.
5. **seccomp**: :data:`ALLOWED` and :data:`CONSTRAINED`, anything else kills
   the gofer (the action the sentry's own allowlist uses; see
   sentry/confine.py for why KILL_PROCESS rather than an errno). The BPF is
   compiled once per process (and kept in ``cache_dir`` when given).

``confine=False`` skips all of that (the gofer then resolves in the host's
namespaces): the tests use it to check that openat2 alone keeps every path
inside the root, with a host file right outside to catch an escape.
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import os
import stat
import time

from pysandbox.oci import kernel
from pysandbox.oci.kernel import CAP_SETGID, CAP_SETUID
from pysandbox.oci.records import NamedTuple
from pysandbox.sentry.confine import DEFAULT_ACTION, drop_capabilities, pivot_into

from .client import GoferClient
from .protocol import Credentials
from .server import FILE_CAPABILITIES, Server
from .walk import FILE_NAME, normalize_mounts

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType
    from typing import Final

__all__ = ["ALLOWED", "CONSTRAINED", "GOFER_CAPABILITIES", "Gofer", "MountSource", "start"]

# Why each capability stays (the caller is lent the file ones per request, and
# only those it holds itself: gofer/server.py, CredentialSwitch):
# * CAP_CHOWN: chown for callers that hold it (root in the container).
# * CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH: the permission bypass of callers that
#   hold them; without them in the gofer, root in the container could not open
#   a 0600 file of another user, as it can under runc.
# * CAP_FOWNER: chmod, utimes, xattrs, sticky directories on others' files, for
#   callers that hold it.
# * CAP_FSETID: keeping setgid bits on chmod/chown, for callers that hold it.
# * CAP_SETFCAP: security.capability xattrs (setcap, dpkg postinst scripts), for
#   callers that hold it (docker's default set does).
# * CAP_SETUID, CAP_SETGID: the gofer's own, never lent: setfsuid/setfsgid,
#   setgroups and (for connect) setresuid/setresgid to take on a caller's ids.
# * CAP_MKNOD: device nodes, for callers that hold it (never opened through the
#   gofer: its mount is nodev; the kernel opens them, under the container's
#   device cgroup).
# Not kept: CAP_SYS_ADMIN (the mounts are made before the drop; trusted.*
# xattrs are refused), CAP_SETPCAP (only to shrink the bounding set, which
# happens before it goes), everything else.
GOFER_CAPABILITIES: Final = FILE_CAPABILITIES | {CAP_SETUID, CAP_SETGID}

# Every call the gofer makes once confined, and why (x86_64 names): what
# tests/integration/test_gofer.py makes it do under ``strace -ff``, plus the
# other entry point glibc may use for the same call and malloc's calls.
ALLOWED: Final[dict[str, str]] = {
    # --- the loop
    "recvmsg": "requests (recvmsg_into)",
    "sendmsg": "replies with an fd (SCM_RIGHTS)",
    "sendto": "replies without one (socket.send)",
    "close": "fds the gofer opened and handed over",
    "write": "the log (fd 2)",
    # --- resolution and the operations
    "openat2": "every lookup (RESOLVE_IN_ROOT), each step of a walk (gofer/walk.py)",
    "newfstatat": 'stat, walk: os.fstat (glibc\'s fstat is fstatat(fd, "", AT_EMPTY_PATH))',
    "fstat": "os.fstat on a glibc older than 2.33",
    "fcntl": "open: F_SETFL to clear the gofer's own O_NONBLOCK",
    "mkdirat": "mkdir",
    "mknodat": "mknod (fifos, sockets, files: the gofer checks the type first)",
    "unlinkat": "unlink, rmdir",
    "renameat2": "rename",
    "linkat": "link",
    "symlinkat": "symlink",
    "readlinkat": "readlink; a walk reads the symlinks it follows (gofer/walk.py)",
    "faccessat2": "access: AT_EACCESS | AT_EMPTY_PATH on the resolved fd",
    "chmod": "chmod through /proc/self/fd/N",
    "fchmodat": "chmod's other entry point in glibc",
    "chown": "chown through /proc/self/fd/N",
    "fchownat": "chown's other entry point in glibc",
    "utimensat": "utimens through /proc/self/fd/N",
    "truncate": "truncate through /proc/self/fd/N",
    "fstatfs": "statfs (O_PATH fds allowed)",
    "getxattr": "getxattr through /proc/self/fd/N",
    "setxattr": "setxattr through /proc/self/fd/N",
    "listxattr": "listxattr through /proc/self/fd/N",
    "removexattr": "removexattr through /proc/self/fd/N",
    "bind": "bind of an AF_UNIX socket (socket() is constrained below)",
    "connect": "connect of an AF_UNIX socket",
    "fchdir": "bind: into the parent directory and back (bind takes no dirfd)",
    "umask": "bind: the caller's umask decides the socket file's mode",
    # --- credentials, per request
    "setfsuid": "the caller's uid for permission checks",
    "setfsgid": "the caller's gid",
    "setgroups": "the caller's supplementary groups",
    "setresuid": "connect: the caller's euid, which the peer's SO_PEERCRED reports",
    "setresgid": "connect: the caller's egid",
    "capset": "the caller's file capabilities (within the gofer's)",
    "getuid": "connect: back to the gofer's own euid",
    "getgid": "connect: back to the gofer's own egid",
    # --- the CPython runtime and glibc (single-threaded, no signal handlers, no clock)
    "brk": "malloc",
    "munmap": "free of large blocks",
    "mremap": "realloc of large blocks",
    "madvise": "glibc returns freed memory",
    "exit_group": "the gofer ends",
}

_PROT_EXEC: Final = 0x4
_U32: Final = 0xFFFFFFFF
_FIONBIO: Final = 0x5421
_AF_UNIX: Final = 1
Conditions = list[tuple[int, int, int]]
# (name, why, alternatives): each alternative is a list of (arg index, mask,
# value) that must all hold (arg & mask == value); any alternative allows.
CONSTRAINED: Final[list[tuple[str, str, list[Conditions]]]] = [
    ("socket", "AF_UNIX only (bind, connect)", [[(0, _U32, _AF_UNIX)]]),
    ("ioctl", "FIONBIO only: socket.setblocking after connect", [[(1, _U32, _FIONBIO)]]),
    ("mmap", "no executable mappings", [[(2, _PROT_EXEC, 0)]]),
    ("mprotect", "no executable pages", [[(2, _PROT_EXEC, 0)]]),
]
_RET_ALLOW: Final = 0x7FFF0000

_bpf_cache: list[bytes] = []


def compile_allowlist(cache_dir: str | None = None) -> bytes:
    """The gofer's seccomp program (classic BPF): compiled by libseccomp once per
    process, and kept in ``cache_dir`` (keyed by the allowlist) when given."""
    if _bpf_cache:
        return _bpf_cache[0]
    path = prog = None
    if cache_dir is not None:
        from pysandbox.oci.jsonio import sha256_hex
        from pysandbox.oci.seccomp import read_cached_bpf

        key = sha256_hex(repr((sorted(ALLOWED), CONSTRAINED, DEFAULT_ACTION)).encode())
        path = os.path.join(cache_dir, f"gofer-allowlist-{key}.bpf")
        prog = read_cached_bpf(path)
    if prog is None:
        prog = _compile()
        if path is not None:
            from pysandbox.oci.seccomp import write_cached_bpf

            write_cached_bpf(path, prog)
    _bpf_cache.append(prog)
    return prog


def _compile() -> bytes:
    import tempfile

    import pyseccomp

    filt = pyseccomp.SyscallFilter(DEFAULT_ACTION)
    filt.set_attr(pyseccomp.Attr.CTL_NNP, 0)  # set by us, with the other prctls
    filt.set_attr(pyseccomp.Attr.ACT_BADARCH, DEFAULT_ACTION)
    with contextlib.suppress(OSError):
        filt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    for name in ALLOWED:
        filt.add_rule(_RET_ALLOW, name)
    for name, _why, alternatives in CONSTRAINED:
        for alt in alternatives:
            args = [pyseccomp.Arg(i, pyseccomp.MASKED_EQ, mask, value) for i, mask, value in alt]
            filt.add_rule(_RET_ALLOW, name, *args)
    with tempfile.TemporaryFile() as buf:
        filt.export_bpf(buf)
        buf.seek(0)
        return buf.read()


class MountSource(NamedTuple):
    """An extra directory the gofer serves, as mount N: a host directory (the
    tests), or a mount of the container (``path`` as the container names
    it), served also as the part of mount 0 below ``point`` (gofer/walk.py).
    ``file``: the mount is a single file (a bind of /etc/hosts), served in a
    directory of the gofer's own. ``flags``: MS_* flags its bind keeps
    (noexec, nosuid, the atime rule: gofer/mounts.py)."""

    path: str
    readonly: bool = False
    point: str = ""
    file: bool = False
    flags: int = 0


class Gofer:
    """A running gofer: its host pid, the client's end of the socketpair, and
    what it reported when it started serving (its confinement)."""

    def __init__(self, pid: int, sock: _socket.socket, report: str) -> None:
        self.pid = pid
        self.sock = sock
        self.report = report
        self.status: int | None = None

    def client(self, cred: Credentials) -> GoferClient:
        """A client on this gofer's socket (one gofer, one client: requests are serial)."""
        return GoferClient(self.sock, cred)

    def stop(self, timeout: float = 5.0) -> int:
        """Hang up (the gofer exits on EOF), reap it; SIGKILL after ``timeout``.
        Returns its wait status."""
        if self.status is not None:
            return self.status
        self.sock.close()
        deadline = time.monotonic() + timeout
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, kernel.SIGKILL)
                _pid, status = os.waitpid(self.pid, 0)
                break
            time.sleep(0.005)
        self.status = status
        return status

    def __enter__(self) -> Gofer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start(
    rootfs: str,
    *,
    mounts: Sequence[MountSource] = (),
    readonly: bool = False,
    confine: bool = True,
    log_fd: int = 2,
    cache_dir: str | None = None,
    timeout: float = 10.0,
    restore_after_request: bool = False,
    mount_ns_of: int | None = None,
    readonly_view: bool = False,
    kernel_mounts: Sequence[str] = (),
) -> Gofer:
    """Fork a gofer serving ``rootfs`` (mount 0) and ``mounts`` (1..); return once
    it serves. ``log_fd`` becomes its stderr (its log). ``restore_after_request``:
    see gofer/server.py, "Credentials". ``mount_ns_of``: a container's init (host
    pid); the gofer joins its mount namespace first, so the paths name what the
    workload sees (its overlay root, ``"/"``, and its binds), not the bundle.
    ``kernel_mounts``: absolute paths, as the container names them, of its
    mount points other than its root (/proc, /dev/pts, /etc/hosts, ...):
    mounts the gofer does not serve. A path of mount 0 that leads into one,
    plainly or through symlinks and ``..``, is answered KERNEL_SERVED
    (gofer/walk.py); the other sources (1..) ignore them.
    ``readonly_view`` (with ``mount_ns_of``): once the gofer has its own
    (writable) copy of that namespace, the container's mount of its root is
    made read-only, so from then on the workload writes its root only
    through the gofer (syscalls/files.py).
    Raises RuntimeError (after reaping it) when it could not confine itself,
    ValueError for a kernel mount point that is not absolute, has ``..`` or
    is the root."""
    points = normalize_mounts(kernel_mounts)
    mnt_ns = -1
    if mount_ns_of is not None:
        mnt_ns = os.open(f"/proc/{mount_ns_of}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    else:
        for path in (rootfs, *(m.path for m in mounts if not m.file)):
            if not os.path.isdir(path):
                raise NotADirectoryError(errno.ENOTDIR, "a gofer serves directories", path)
    if not confine and any(m.file for m in mounts):
        raise ValueError("a file mount needs the confined gofer's own root to be bound in")
    sources = [MountSource(rootfs, readonly), *mounts]
    try:
        bpf = compile_allowlist(cache_dir) if confine else b""
        ours, theirs = _socket.socketpair(
            _socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC
        )
    except BaseException:
        if mnt_ns >= 0:
            os.close(mnt_ns)
        raise
    try:
        pid = _fork(confine)
    except BaseException:
        ours.close()
        theirs.close()
        if mnt_ns >= 0:
            os.close(mnt_ns)
        raise
    if pid == 0:  # the gofer: never returns
        code = 1
        try:
            server_options = {"restore_after_request": restore_after_request}
            code = _main(
                theirs,
                ours,
                sources,
                confine,
                log_fd,
                bpf,
                server_options,
                mnt_ns,
                readonly_view,
                points,
            )
        except BaseException as e:
            with contextlib.suppress(Exception):
                os.write(2, f"gofer: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(code)
    theirs.close()
    if mnt_ns >= 0:
        os.close(mnt_ns)
    gofer = Gofer(pid, ours, "")
    try:
        ours.settimeout(timeout)
        msg = ours.recv(4096)
        ours.settimeout(None)
    except OSError as e:
        gofer.stop(timeout=0)
        raise RuntimeError(f"gofer did not start: {e}") from None
    if not msg.startswith(b"R"):
        gofer.stop()
        why = msg[1:].decode(errors="replace") or f"exited, wait status {gofer.status}"
        raise RuntimeError(f"gofer did not start: {why}")
    gofer.report = msg[1:].decode(errors="replace")
    return gofer


def _fork(new_pid_namespace: bool) -> int:
    """fork(), the child as pid 1 of a new pid namespace when asked. Only the
    calling thread's namespace for children changes, and only until the fork."""
    if not new_pid_namespace:
        return os.fork()
    ours = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        kernel.unshare(kernel.CLONE_NEWPID)
        try:
            pid = os.fork()
        except BaseException:
            kernel.setns(ours, kernel.CLONE_NEWPID)
            raise
        if pid:  # the parent: its next children are born where it lives again
            kernel.setns(ours, kernel.CLONE_NEWPID)
        return pid
    finally:
        os.close(ours)


def _main(
    sock: _socket.socket,
    other_end: _socket.socket,
    sources: Sequence[MountSource],
    confine: bool,
    log_fd: int,
    bpf: bytes,
    server_options: dict[str, bool],
    mnt_ns: int = -1,
    readonly_view: bool = False,
    kernel_mounts: frozenset[bytes] = frozenset(),
) -> int:
    import gc

    # Objects inherited from the parent may wrap fd numbers this process is about
    # to close and reuse: they must never be finalised here.
    gc.freeze()
    other_end.detach()  # its number is closed below, with everything else
    os.setsid()  # out of the caller's session: no terminal signals, no tty
    kernel.set_name("gofer")
    for sig in (
        kernel.SIGINT,
        kernel.SIGTERM,
        kernel.SIGHUP,
        kernel.SIGQUIT,
        kernel.SIGUSR1,
        kernel.SIGUSR2,
        kernel.SIGPIPE,
        kernel.SIGTSTP,
        kernel.SIGTTIN,
        kernel.SIGTTOU,
    ):
        kernel.ignore_signal(sig)
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log_fd if log_fd >= 0 else null, 2)
    keep = {0, 1, 2, sock.fileno(), mnt_ns}
    for name in os.listdir("/proc/self/fd"):
        if int(name) not in keep:
            with contextlib.suppress(OSError):
                os.close(int(name))
    try:
        if mnt_ns >= 0:
            # Into the container's mount namespace (root and cwd become its
            # root) while still privileged; the sources are its paths now.
            kernel.setns(mnt_ns, kernel.CLONE_NEWNS)
            # The container's /proc belongs to its pid namespace, where this
            # process is not: /proc/self would not resolve. A private copy of
            # the namespace gets a procfs of our own over it. Slave, not
            # private: what the host mounts under a bind later reaches the
            # container (rslave), and must reach our copy too, where the walk
            # sees it as a mount and leaves it to the kernel (gofer/walk.py);
            # a private copy would show the directory underneath instead.
            kernel.unshare(kernel.CLONE_NEWNS)
            kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_SLAVE)
            kernel.mount("proc", "/proc", "proc", kernel.MS_NOSUID | kernel.MS_NODEV, "subset=pid")
            if readonly_view:
                _make_view_readonly(mnt_ns, [m.point for m in sources[1:] if m.point])
            os.close(mnt_ns)
        if confine:
            roots = _confine(sources)
            report = (
                "gofer: confined: caps="
                + ",".join(kernel.CAPABILITIES[c] for c in sorted(GOFER_CAPABILITIES))
                + f" root={sources[0].path} mounts={len(sources) - 1}"
                + f" seccomp={len(ALLOWED) + len(CONSTRAINED)}"
                " calls, else kill_process"
            )
        else:
            roots = [os.open(s.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for s in sources]
            report = f"gofer: unconfined: root={sources[0].path}"
        served = {
            os.fsencode(m.point): (number, m.file)
            for number, m in enumerate(sources)
            if number and m.point
        }
        server = Server(
            sock, roots, log_fd=2, kernel_mounts=kernel_mounts, served=served, **server_options
        )
        if confine:
            kernel.seccomp_load_bpf(bpf)  # last: it forbids mount, capset's raise, prctl
    except BaseException as e:
        with contextlib.suppress(OSError):
            sock.send(b"E" + f"{type(e).__name__}: {e}".encode(errors="replace"))
        raise
    os.write(2, report.encode() + b"\n")
    sock.send(b"R" + report.encode())
    server.serve()
    return 0


def _scratch_dir() -> str:
    """A directory of ours to mount the private root's tmpfs on. In a
    container's namespace (a private copy: nothing of the container changes)
    /tmp may be missing, as in images built FROM scratch; any directory will
    do but /proc, through which the sources are still bound."""
    for path in ("/tmp", "/dev", "/run", "/mnt", "/var", "/etc", "/home", "/usr"):
        if os.path.isdir(path) and not os.path.islink(path):
            return path
    raise FileNotFoundError(errno.ENOENT, "no directory to build the gofer's root on")


def _make_view_readonly(container_ns: int, points: Sequence[str] = ()) -> None:
    """Make the container's own mounts of its root and of ``points`` (the
    mounts served besides it) read-only, from inside its namespace, and come
    back to ours: our copy's mounts are other mount objects, they stay
    writable. Only the read-only attribute changes (its nosuid/nodev/atime
    flags may be locked in a user namespace)."""
    ours = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        kernel.setns(container_ns, kernel.CLONE_NEWNS)
        try:
            for point in ("/", *points):
                kernel.mount_setattr(point, kernel.MOUNT_ATTR_RDONLY)
        finally:
            kernel.setns(ours, kernel.CLONE_NEWNS)
    finally:
        os.close(ours)


def _confine(sources: Sequence[MountSource]) -> list[int]:
    """Namespaces, private root, capabilities, no_new_privs (seccomp comes after the
    server is built). Returns O_PATH fds of the sources' roots in the new root."""
    k = kernel
    k.unshare(k.CLONE_NEWNS | k.CLONE_NEWNET)
    k.mount(None, "/", None, k.MS_REC | k.MS_SLAVE)  # receives, never sends (see _main)
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("-999")  # the OOM killer should pick the workload, not its files
    new_root = _scratch_dir()
    hidden = k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC
    # Opened after the unshare (a bind source must be a mount of ours) and
    # before the tmpfs, which would hide a source under /tmp.
    fds = [
        os.open(s.path, os.O_PATH | os.O_CLOEXEC | (0 if s.file else os.O_DIRECTORY))
        for s in sources
    ]
    try:
        k.mount(
            "gofer-root", new_root, "tmpfs", k.MS_NOSUID | k.MS_NODEV | k.MS_NOEXEC, "mode=0555"
        )
        # A file mount is bound on FILE_NAME in a directory of its own, which
        # stands for its root (gofer/walk.py, Walker.place).
        dirs = ["/root", *(f"/mounts/{i}" for i in range(1, len(sources)))]
        for source, fd, root in zip(sources, fds, dirs, strict=True):
            os.makedirs(new_root + root, 0o555)
            target = new_root + root
            if source.file:
                target += "/" + os.fsdecode(FILE_NAME)
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0))
            try:
                k.mount(f"/proc/self/fd/{fd}", target, None, k.MS_BIND)
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                # A copy of a namespace owned by another user namespace (a
                # container's, joined) has its mounts locked together: the root
                # cannot be bound without what is mounted on it.
                k.mount(f"/proc/self/fd/{fd}", target, None, k.MS_BIND | k.MS_REC)
            flags = k.MS_REMOUNT | k.MS_BIND | k.MS_NODEV | source.flags
            k.mount(None, target, None, flags | (k.MS_RDONLY * source.readonly))
    finally:
        for fd in fds:
            os.close(fd)
    os.mkdir(new_root + "/proc")
    k.mount("proc", new_root + "/proc", "proc", hidden | k.MS_RDONLY, "subset=pid")
    pivot_into(new_root)
    roots = [os.open(t, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for t in dirs]
    for fd in roots:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise NotADirectoryError(errno.ENOTDIR, "mount source is not a directory")
    drop_capabilities(GOFER_CAPABILITIES)
    k.prctl(k.PR_SET_NO_NEW_PRIVS, 1)
    k.prctl(k.PR_SET_DUMPABLE, 0)
    return roots
