"""The path-taking calls, served through the gofer (DESIGN.md "File access").

The workload never reaches the container's root file system by path through
the kernel: every call below is notified to the sentry, which

1. reads the path once (rule 1) and makes it absolute: a relative path is
   joined to the caller's working directory or to the directory its dirfd
   names, both read from /proc/TID (``cwd``, ``fd/N``); the kernel prints
   those links relative to the container's root, since the workload's (and
   the gofer's) mount namespace has nothing above it;
2. reads the caller's credentials and umask from /proc/TID/status, so the
   gofer can act *as* the caller (the kernel's own permission checks judge
   it, see gofer/server.py);
3. checks NOTIF_ID_VALID, then asks the gofer, which resolves the path inside
   the container's root (openat2 RESOLVE_IN_ROOT) and does the operation;
4. answers with the gofer's result: an fd installed with NOTIF_ADDFD (so
   read, write, mmap and getdents on it run at host speed, with no sentry),
   a struct written into the caller, or the kernel's errno, unchanged.

What the kernel still does itself (SECCOMP_USER_NOTIF_FLAG_CONTINUE):

* a path that leads into a mount the gofer does not serve (/proc, /sys,
  /dev, config.json's tmpfs mounts; the binds are the gofer's mounts 1..,
  gofer/mounts.py): the gofer says so (``KernelPath``) and the call goes
  back to the kernel;
* calls on an fd rather than a path (``AT_EMPTY_PATH`` with an empty path,
  ``utimensat(fd, NULL)``, ``readlinkat(fd, "")``), but linkat: an fd (an
  O_TMPFILE file) given a name, with AT_EMPTY_PATH or through the caller's
  /proc/self/fd link, is linked by the gofer (``_link_fd``);
* chdir, chroot, inotify_add_watch, which only read, and execve and execveat
  once the sentry checked them (syscalls/execve.py);
* a FIFO opened without O_NONBLOCK (the open must wait for the other end,
  which the gofer's single thread cannot).

These are the documented exceptions to rule 1 (a path was read, and the
kernel then reads it again): what makes them safe is that the kernel's view
of the container's root is read-only (create remounts it so, after the
gofer took its own writable view; see gofer/process.py). Whatever a racing
thread makes the path name meanwhile, the kernel can at most read there,
as the caller's own credentials allow: everything a write needs goes
through the gofer, and a write the kernel is handed fails with EROFS.

In a user namespace the gofer works with host ids: the caller's ids from
/proc/TID/status are the host's already (the sentry reads them from the
host's namespace), ids the workload passes (chown) are mapped to the host's
with the container's uid_map/gid_map, and ids the gofer returns (stat) back.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
from collections.abc import Callable, Collection

from pysandbox.gofer.client import GoferClient, KernelPath
from pysandbox.gofer.protocol import O_TMPFILE, OPEN_FLAGS, Credentials, Stat, StatFS
from pysandbox.gofer.walk import FILE_NAME, mount_prefix_matcher, normalize_mounts
from pysandbox.oci import kernel as k
from pysandbox.sentry.loop import CONTINUE, Call, Errno, Handler, InstallFd, Result

from .args import s32
from .creds import CHANGE_ANY, CHANGE_OWN, CredCache, Creds, StatusFiles, parse_status, read_creds
from .lookup import Lookup, NotJudged, Who

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

    from .procfs import ProcHandlers

__all__ = [
    "Creds",
    "FileHandlers",
    "IdMap",
    "StatusFiles",
    "fd_cloexec",
    "pack_stat",
    "pack_statfs",
    "parse_status",
    "read_creds",
]

_PATH_MAX: Final = 4096
_XATTR_NAME_MAX: Final = 255
_XATTR_SIZE_MAX: Final = 65536
_U32: Final = 0xFFFFFFFF
_UTIME_NOW: Final = (1 << 30) - 1
_UTIME_OMIT: Final = (1 << 30) - 2
_OVERFLOW_ID: Final = 65534
_STAT: Final = struct.Struct("<QQQIIIiQqqqqqqqqq24x")  # x86_64 struct stat, 144 bytes
_STATFS: Final = struct.Struct("<qqQQQQQiiqqq32x")  # x86_64 struct statfs, 120 bytes
_TIMEVAL2: Final = struct.Struct("<qqqq")
_UTIMBUF: Final = struct.Struct("<qq")
_OPEN_HOW: Final = struct.Struct("<QQQ")
_STATX_UID: Final = struct.Struct("<II")  # stx_uid, stx_gid at offset 20
_STATX_FLAGS: Final = k.AT_SYMLINK_NOFOLLOW | k.AT_NO_AUTOMOUNT | k.AT_EMPTY_PATH
_STATX_RESERVED: Final = 0x80000000
_DELETED: Final = b" (deleted)"
_STATX_MNT_ID: Final = 0x1000
_current_cpu = k.current_cpu
# Who walks the container's root to make a root of a directory (the caller's
# chroot() already passed the kernel's checks on it).
_ROOT_WALKER: Final = Credentials(0, 0, (), 1 << k.CAP_DAC_READ_SEARCH)


class IdMap:
    """A user namespace's uid or gid map: container id <-> host id."""

    def __init__(self, ranges: list[tuple[int, int, int]] | None = None) -> None:
        self.ranges = ranges or []  # (inside, outside, count); empty: identity

    @classmethod
    def of(cls, pid: int, which: str) -> IdMap:
        """The map of ``pid``'s user namespace (``which``: "uid" or "gid")."""
        with open(f"/proc/{pid}/{which}_map", "rb") as f:
            ranges = [tuple(int(v) for v in line.split()) for line in f if line.strip()]
        if ranges == [(0, 0, 0xFFFFFFFF)]:
            return cls()  # the host's own namespace
        return cls([(r[0], r[1], r[2]) for r in ranges])

    def to_host(self, cid: int) -> int:
        """The host id of container id ``cid``; OSError(EINVAL) when it is not mapped."""
        if not self.ranges:
            return cid
        for inside, outside, count in self.ranges:
            if inside <= cid < inside + count:
                return outside + cid - inside
        raise OSError(errno.EINVAL, f"id {cid} is not mapped")

    def maps(self, hid: int) -> bool:
        """Whether host id ``hid`` has a container id."""
        return self._inside(hid) is not None

    def to_container(self, hid: int) -> int:
        """The container id of host id ``hid`` (the overflow id when it is not mapped)."""
        cid = self._inside(hid)
        return _OVERFLOW_ID if cid is None else cid

    def _inside(self, hid: int) -> int | None:
        if not self.ranges:
            return hid
        for inside, outside, count in self.ranges:
            if outside <= hid < outside + count:
                return inside + hid - outside
        return None


def _mount_id(raw_statx: bytes) -> int:
    return int.from_bytes(raw_statx[144:152], "little")  # stx_mnt_id


def pack_stat(st: Stat, uid: int, gid: int) -> bytes:
    """x86_64's struct stat, as stat(2) writes it."""
    return _STAT.pack(
        st.dev,
        st.ino,
        st.nlink,
        st.mode,
        uid,
        gid,
        0,
        st.rdev,
        st.size,
        st.blksize,
        st.blocks,
        st.atime,
        st.atime_nsec,
        st.mtime,
        st.mtime_nsec,
        st.ctime,
        st.ctime_nsec,
    )


def pack_os_stat(st: os.stat_result, uid: int, gid: int) -> bytes:
    """x86_64's struct stat of an ``os.stat_result``, as stat(2) writes it."""
    a_s, a_ns = divmod(st.st_atime_ns, 1_000_000_000)
    m_s, m_ns = divmod(st.st_mtime_ns, 1_000_000_000)
    c_s, c_ns = divmod(st.st_ctime_ns, 1_000_000_000)
    return _STAT.pack(
        st.st_dev,
        st.st_ino,
        st.st_nlink,
        st.st_mode,
        uid,
        gid,
        0,
        st.st_rdev,
        st.st_size,
        st.st_blksize,
        st.st_blocks,
        a_s,
        a_ns,
        m_s,
        m_ns,
        c_s,
        c_ns,
    )


def pack_statfs(s: StatFS) -> bytes:
    """x86_64's struct statfs, as statfs(2) writes it."""
    return _STATFS.pack(
        s.type,
        s.bsize,
        s.blocks,
        s.bfree,
        s.bavail,
        s.files,
        s.ffree,
        s.fsid0,
        s.fsid1,
        s.namelen,
        s.frsize,
        s.flags,
    )


def fd_cloexec(tid: int, fd: int) -> bool:
    """Whether task ``tid``'s ``fd`` is close-on-exec (the O_CLOEXEC bit of
    /proc/TID/fdinfo/FD's flags); EBADF if it has no such fd (any more)."""
    try:
        info = os.open(f"/proc/{tid}/fdinfo/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OSError(errno.EBADF, "no such fd") from None
    try:
        data = os.read(info, 4096)
    finally:
        os.close(info)
    for line in data.splitlines():
        if line.startswith(b"flags:"):
            return bool(int(line.split()[1], 8) & os.O_CLOEXEC)
    return False


def _own_fd_link(path: bytes) -> int | None:
    """N of ``/proc/self/fd/N`` or ``/proc/thread-self/fd/N`` (the caller's own
    fd links), else None."""
    for prefix in (b"/proc/self/fd/", b"/proc/thread-self/fd/"):
        if path.startswith(prefix):
            number = path[len(prefix) :]
            if number.isdigit() and len(number) < 10:
                return int(number)
    return None


# openat2's RESOLVE_ flags the gofer applies itself (RESOLVE_CACHED is the
# kernel's: EAGAIN for any open that may write), and those that scope a lookup.
_RESOLVE_SERVED: Final = (
    k.RESOLVE_NO_XDEV
    | k.RESOLVE_NO_MAGICLINKS
    | k.RESOLVE_NO_SYMLINKS
    | k.RESOLVE_BENEATH
    | k.RESOLVE_IN_ROOT
)
_SCOPED: Final = (k.RESOLVE_BENEATH, k.RESOLVE_IN_ROOT)
_WRITE_FLAGS: Final = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC


def _scoped_write(flags: int, mode: int, resolve: int) -> bool:
    """Whether an openat2 is one the sentry serves: valid, scoped to its
    directory by exactly one of RESOLVE_BENEATH and RESOLVE_IN_ROOT, and able
    to write (a read the kernel's read-only view serves as well)."""
    if flags & ~OPEN_FLAGS or mode & ~0o7777 or resolve & ~_RESOLVE_SERVED:
        return False
    if resolve & (k.RESOLVE_BENEATH | k.RESOLVE_IN_ROOT) not in _SCOPED:
        return False
    creates = flags & os.O_CREAT or flags & O_TMPFILE == O_TMPFILE
    if mode and not creates:
        return False  # EINVAL: the kernel's to say
    return bool(flags & _WRITE_FLAGS or creates) and not flags & os.O_PATH


def _opened(fd: int, flags: int) -> Result:
    """The answer for an fd the gofer opened: installed in the caller, unless
    it is a FIFO the caller's open would wait on (the lookup could not tell
    before): that wait is the kernel's."""
    if not flags & (os.O_NONBLOCK | os.O_PATH) and stat.S_ISFIFO(os.fstat(fd).st_mode):
        os.close(fd)
        return CONTINUE
    return InstallFd(fd, cloexec=bool(flags & os.O_CLOEXEC))


def _waits_for_a_reader(error: OSError, flags: int) -> bool:
    """Whether the gofer's ENXIO is a FIFO's with no reader yet: its open is
    never blocking, but the caller's waits for one (Linux's open of a FIFO
    for writing), so the kernel is to do it, in its read-only view, where a
    FIFO opens as anywhere (a socket file's ENXIO is the kernel's too)."""
    return error.errno == errno.ENXIO and not flags & os.O_NONBLOCK


def _einval() -> Errno:
    return Errno(errno.EINVAL)


class FileHandlers:
    """The path calls of syscalls/x86_64.tsv's ``fs`` area, through a gofer.

    Until :meth:`attach` gives it a gofer (or for a container with no gofer
    of its own: one that shares another's mount namespace) every call is
    handed to the kernel unread. ``proc``: the virtual /proc files, which
    open/openat serve first.
    """

    def __init__(self, proc: ProcHandlers | None = None) -> None:
        self.gofer: GoferClient | None = None
        self.proc = proc
        self.uids = IdMap()
        self.gids = IdMap()
        self.root_uid = 0  # host uid of the container's root (access(2)'s rule)
        # Where the gofer's views of "/" and of the mounts it serves are, as its
        # fds say: (that path, the container's mount point, the mount id).
        self.gofer_views: list[tuple[bytes, bytes, int]] = []
        self.gofer_pid = 0
        # does a path begin with a mount point the kernel serves? (gofer/walk.py)
        self._kernel_mount_at: Callable[[bytes], object] | None = None
        self._mounts: frozenset[bytes] = frozenset()
        self._gofer_cpu = -1  # the CPU the gofer was last pinned to
        self.status = StatusFiles()
        self.creds = CredCache(self.status)  # enabled by use_routing()
        self.creds.enabled = False
        self.lookup: Lookup | None = None  # the sentry's own metadata walks (attach)
        self._who_of: dict[Creds, Who] = {}
        self._overrides_mask = (1 << k.CAP_DAC_READ_SEARCH) | (1 << k.CAP_DAC_OVERRIDE)
        # Set once any task chroot()s: paths are then taken relative to each
        # caller's root (one more readlink per call, only in such containers).
        self.chrooted = False
        # The caller's root when it is not the container's (chroot), as a
        # container path, for the call being served ("" otherwise); the gofer
        # serves it as a root of its own (self.jails: its (dev, ino) -> number).
        self.jail = b""
        self.jails: dict[tuple[int, int], int | None] = {}

    def attach(
        self,
        gofer: GoferClient,
        init_pid: int,
        gofer_pid: int = 0,
        kernel_mounts: list[str] | None = None,
        served: list[tuple[str, bool, bool]] | None = None,
    ) -> None:
        """Serve through ``gofer`` from now on; ``kernel_mounts``: the container's
        mount points the kernel serves; ``served``: (mount point, whether it
        is a file, whether it is read-only) of the mounts the gofer serves
        besides the root, as its mounts 1.. (gofer/mounts.py)."""
        self.gofer_pid = gofer_pid
        served = served or []
        mounts = normalize_mounts(kernel_mounts or ())
        points = normalize_mounts(point for point, _file, _ro in served)
        self._mounts = mounts | points  # every mount point but the root
        self._kernel_mount_at = mount_prefix_matcher(mounts)
        self.uids = IdMap.of(init_pid, "uid")
        self.gids = IdMap.of(init_pid, "gid")
        self.root_uid = self.uids.to_host(0)
        # Where the gofer's fds say they are: the kernel prints a path relative
        # to the root of the namespace the fd's mount lives in, and the gofer
        # keeps the container's root (and each mount it serves) at a directory
        # of its own private root. A file mount's root is a directory of the
        # gofer's holding the file (gofer/walk.py, FILE_NAME).
        roots: list[int] = []
        views: list[tuple[bytes, bytes, int]] = []
        into: dict[bytes, tuple[int, bool]] = {}
        try:
            for number, (point, file) in enumerate(
                [(b"/", False), *((os.fsencode(p), f) for p, f, _ro in served)]
            ):
                fd, _st = gofer.walk(b"/", cred=_ROOT_WALKER, mount=number)
                roots.append(fd)
                if number:
                    into[point] = (fd, file)
                # a file mount's fds are of the file, not of the directory holding it
                seen = gofer.walk(FILE_NAME, cred=_ROOT_WALKER, mount=number)[0] if file else fd
                try:
                    prefix = os.readlink(f"/proc/self/fd/{seen}".encode())
                    mount_id = _mount_id(k.statx(seen, b"", k.AT_EMPTY_PATH, _STATX_MNT_ID))
                finally:
                    if seen != fd:
                        os.close(seen)
                views.append((prefix, point, mount_id))
        except BaseException:
            for fd in roots:
                os.close(fd)
            raise
        self.gofer_views = views
        if self.proc is not None:
            self.proc.writable_mounts |= {p for p, _file, ro in served if not ro}
        # The sentry's own lookups walk the gofer's view of the root (the same
        # files as the container's, see syscalls/lookup.py), keeping these fds.
        userns = bool(self.uids.ranges or self.gids.ranges)
        self.lookup = Lookup(roots[0], mounts, self._mapped if userns else None, served=into)
        self.gofer = gofer

    def use_routing(self, routed: Collection[int]) -> None:
        """Cache credentials only if the profile routes every call that changes
        them to the sentry (syscalls/creds.py: the handlers then forget)."""
        changes = (*CHANGE_OWN.values(), *CHANGE_ANY.values())
        self.creds.enabled = all(nr in routed for nr in changes)

    def _mapped(self, uid: int, gid: int) -> bool:
        return self.uids.maps(uid) and self.gids.maps(gid)

    def routes(self) -> dict[int, Handler]:
        s = self._served
        return {
            k.SYS_OPEN: s(lambda c: self._open(c, k.AT_FDCWD, c.args[0], c.args[1], c.args[2])),
            k.SYS_OPENAT: s(lambda c: self._open(c, c.args[0], c.args[1], c.args[2], c.args[3])),
            k.SYS_CREAT: s(
                lambda c: self._open(
                    c, k.AT_FDCWD, c.args[0], os.O_CREAT | os.O_WRONLY | os.O_TRUNC, c.args[1]
                )
            ),
            k.SYS_OPENAT2: s(self._openat2),
            k.SYS_STAT: s(lambda c: self._stat(c, k.AT_FDCWD, c.args[0], c.args[1], 0)),
            k.SYS_LSTAT: s(
                lambda c: self._stat(c, k.AT_FDCWD, c.args[0], c.args[1], k.AT_SYMLINK_NOFOLLOW)
            ),
            k.SYS_NEWFSTATAT: s(
                lambda c: self._stat(c, c.args[0], c.args[1], c.args[2], c.args[3])
            ),
            k.SYS_STATX: s(self._statx),
            k.SYS_ACCESS: s(lambda c: self._access(c, k.AT_FDCWD, c.args[0], c.args[1], 0)),
            k.SYS_FACCESSAT: s(lambda c: self._access(c, c.args[0], c.args[1], c.args[2], 0)),
            k.SYS_FACCESSAT2: s(
                lambda c: self._access(c, c.args[0], c.args[1], c.args[2], c.args[3])
            ),
            k.SYS_READLINK: s(
                lambda c: self._readlink(c, k.AT_FDCWD, c.args[0], c.args[1], c.args[2])
            ),
            k.SYS_READLINKAT: s(
                lambda c: self._readlink(c, c.args[0], c.args[1], c.args[2], c.args[3])
            ),
            k.SYS_MKDIR: s(lambda c: self._mkdir(c, k.AT_FDCWD, c.args[0], c.args[1])),
            k.SYS_MKDIRAT: s(lambda c: self._mkdir(c, c.args[0], c.args[1], c.args[2])),
            k.SYS_MKNOD: s(lambda c: self._mknod(c, k.AT_FDCWD, c.args[0], c.args[1], c.args[2])),
            k.SYS_MKNODAT: s(lambda c: self._mknod(c, c.args[0], c.args[1], c.args[2], c.args[3])),
            k.SYS_UNLINK: s(lambda c: self._unlink(c, k.AT_FDCWD, c.args[0], 0)),
            k.SYS_RMDIR: s(lambda c: self._unlink(c, k.AT_FDCWD, c.args[0], k.AT_REMOVEDIR)),
            k.SYS_UNLINKAT: s(lambda c: self._unlink(c, c.args[0], c.args[1], c.args[2])),
            k.SYS_RENAME: s(
                lambda c: self._rename(c, k.AT_FDCWD, c.args[0], k.AT_FDCWD, c.args[1], 0)
            ),
            k.SYS_RENAMEAT: s(
                lambda c: self._rename(c, c.args[0], c.args[1], c.args[2], c.args[3], 0)
            ),
            k.SYS_RENAMEAT2: s(
                lambda c: self._rename(c, c.args[0], c.args[1], c.args[2], c.args[3], c.args[4])
            ),
            k.SYS_LINK: s(lambda c: self._link(c, k.AT_FDCWD, c.args[0], k.AT_FDCWD, c.args[1], 0)),
            k.SYS_LINKAT: s(
                lambda c: self._link(c, c.args[0], c.args[1], c.args[2], c.args[3], c.args[4])
            ),
            k.SYS_SYMLINK: s(lambda c: self._symlink(c, c.args[0], k.AT_FDCWD, c.args[1])),
            k.SYS_SYMLINKAT: s(lambda c: self._symlink(c, c.args[0], c.args[1], c.args[2])),
            k.SYS_CHMOD: s(lambda c: self._chmod(c, k.AT_FDCWD, c.args[0], c.args[1], 0)),
            k.SYS_FCHMODAT: s(lambda c: self._chmod(c, c.args[0], c.args[1], c.args[2], 0)),
            k.SYS_FCHMODAT2: s(
                lambda c: self._chmod(c, c.args[0], c.args[1], c.args[2], c.args[3])
            ),
            k.SYS_CHOWN: s(
                lambda c: self._chown(c, k.AT_FDCWD, c.args[0], c.args[1], c.args[2], 0)
            ),
            k.SYS_LCHOWN: s(
                lambda c: self._chown(
                    c, k.AT_FDCWD, c.args[0], c.args[1], c.args[2], k.AT_SYMLINK_NOFOLLOW
                )
            ),
            k.SYS_FCHOWNAT: s(
                lambda c: self._chown(c, c.args[0], c.args[1], c.args[2], c.args[3], c.args[4])
            ),
            k.SYS_UTIME: s(self._utime),
            k.SYS_UTIMES: s(lambda c: self._utimes(c, k.AT_FDCWD, c.args[0], c.args[1])),
            k.SYS_FUTIMESAT: s(lambda c: self._utimes(c, c.args[0], c.args[1], c.args[2])),
            k.SYS_UTIMENSAT: s(self._utimensat),
            k.SYS_TRUNCATE: s(self._truncate),
            k.SYS_STATFS: s(self._statfs),
            k.SYS_GETXATTR: s(lambda c: self._getxattr(c, True)),
            k.SYS_LGETXATTR: s(lambda c: self._getxattr(c, False)),
            k.SYS_SETXATTR: s(lambda c: self._setxattr(c, True)),
            k.SYS_LSETXATTR: s(lambda c: self._setxattr(c, False)),
            k.SYS_LISTXATTR: s(lambda c: self._listxattr(c, True)),
            k.SYS_LLISTXATTR: s(lambda c: self._listxattr(c, False)),
            k.SYS_REMOVEXATTR: s(lambda c: self._removexattr(c, True)),
            k.SYS_LREMOVEXATTR: s(lambda c: self._removexattr(c, False)),
            k.SYS_CHROOT: self._chroot,
            **{nr: self._own_creds_change for nr in CHANGE_OWN.values()},
        }

    # --- the frame every handler runs in -------------------------------------------

    def _served(self, body: Callable[[Call], Result]) -> Handler:
        def handler(call: Call) -> Result:
            if self.gofer is None:
                return CONTINUE  # no gofer: nothing is read, nothing decided
            try:
                return body(call)
            except KernelPath:
                return CONTINUE  # a mount the kernel serves (see the module's docstring)

        return handler

    def _own_creds_change(self, call: Call) -> Result:
        # set*id, setgroups, capset: the kernel changes the caller's credentials
        # once the call goes on (no argument is read or judged here).
        self.creds.forget(call.pid)
        return CONTINUE

    def _chroot(self, call: Call) -> Result:
        # The kernel changes the caller's root (it checks CAP_SYS_CHROOT and the
        # path in its read-only view); from now on paths are taken relative to
        # each caller's root, which the gofer serves as a root (absolute()).
        self.chrooted = True
        return CONTINUE

    def _path(
        self, call: Call, dirfd: int, addr: int, empty_ok: int = 0, kernel_check: bool = True
    ) -> bytes | None:
        """The absolute path (in the container) a (dirfd, path) pair names; None
        for an empty path with ``empty_ok`` (AT_EMPTY_PATH: the call is on dirfd)."""
        path = call.read_cstring(addr, _PATH_MAX)
        if call.tracing:
            call.detail = repr(path)[1:]
        if not path:
            if empty_ok:
                return None
            raise OSError(errno.ENOENT, "empty path")
        return self.absolute(call, dirfd, path, kernel_check)

    def absolute(self, call: Call, dirfd: int, path: bytes, kernel_check: bool = True) -> bytes:
        """The absolute path of ``path`` (already copied from the caller, not
        empty), relative to ``dirfd`` or the caller's cwd; ``KernelPath`` when
        it plainly leads into a mount the kernel serves. For a caller that
        chroot()ed, the path is its root's, and :attr:`jail` and the gofer's
        mount say which root that is (or, where the gofer cannot serve it as a
        root, the path is the container's, prefixed with the caller's root)."""
        jail = self._caller_jail(call) if self.chrooted else b""
        outside = False
        if path[0] != 0x2F:  # relative: to the cwd or the dirfd's directory
            base = self.directory(call, dirfd)
            if jail:
                if base == jail or base.startswith(jail + b"/"):
                    base = base[len(jail) :] or b"/"
                else:
                    outside = True  # a cwd left outside the chroot: the container's path
            path = (base if base != b"/" else b"") + b"/" + path
        mount = 0
        if jail and not outside:
            number = self._jail_mount(call, jail)
            if number is None:
                path, jail = jail + path, b""  # served in the container's root
            else:
                mount = number
        else:
            jail = b""
        self.jail = jail
        if self.gofer is not None:
            self.gofer.mount = mount
        if kernel_check and self._in_kernel_mount(path):
            raise KernelPath(path)
        return path

    def directory(self, call: Call, dirfd: int) -> bytes:
        """The container path of the directory ``dirfd`` (AT_FDCWD: the
        caller's cwd) names, as the kernel prints it from /proc/TID; EBADF,
        ENOTDIR or ENOENT as Linux would answer a path relative to it."""
        dirfd = s32(dirfd)
        if dirfd == k.AT_FDCWD:
            link = f"/proc/{call.pid}/cwd"
        elif dirfd < 0:
            raise OSError(errno.EBADF, "bad dirfd")
        else:
            link = f"/proc/{call.pid}/fd/{dirfd}"
        try:
            base = os.readlink(link.encode())
        except FileNotFoundError:
            raise OSError(errno.EBADF if dirfd >= 0 else errno.ESRCH, "no such fd") from None
        if not base.startswith(b"/"):
            raise OSError(errno.ENOTDIR, "dirfd is not a directory")  # pipe:[..], socket:[..]
        if base.endswith(_DELETED):
            raise OSError(errno.ENOENT, "directory was removed")
        return self._from_gofer(link, base)  # a container path

    def _caller_jail(self, call: Call) -> bytes:
        """The caller's root as a container path, b"" when it is the container's."""
        root = os.readlink(f"/proc/{call.pid}/root".encode())
        return b"" if root == b"/" else root

    def _jail_mount(self, call: Call, jail: bytes) -> int | None:
        """The gofer's number for the caller's root ``jail``; None when it cannot
        be one: a kernel mount lies inside it (the gofer's root would show the
        directory below), or it is not the directory the path names now."""
        st = os.stat(f"/proc/{call.pid}/root")
        key = (st.st_dev, st.st_ino)
        if key in self.jails:
            return self.jails[key]
        number: int | None = None
        prefix = jail + b"/"
        gofer = self.gofer
        if gofer is not None and not any(m.startswith(prefix) for m in self._mounts):
            try:
                number, dev, ino = gofer.add_root(jail, cred=_ROOT_WALKER)
            except OSError:
                number = None
            else:
                if (dev, ino) != key:
                    number = None  # renamed meanwhile: the path names another directory
        if len(self.jails) >= 64:
            self.jails.clear()
        self.jails[key] = number
        return number

    def _current_lookup(self) -> Lookup | None:
        """The sentry's own lookups, for a caller in the container's root only
        (a chroot()ed caller's paths are the gofer's to resolve in its root)."""
        return None if self.jail else self.lookup

    def _in_kernel_mount(self, path: bytes) -> bool:
        """Whether ``path`` plainly names something in a mount the kernel serves
        (/proc/self/status, /dev/null): the gofer need not be asked. A path
        with ``..`` or a symlink on the way is the gofer's to judge."""
        match = self._kernel_mount_at
        if self.jail:
            path = self.jail + path
        if match is None or match(path) is None:
            return False
        return b".." not in path or b".." not in path.split(b"/")

    def _from_gofer(self, link: str, base: bytes) -> bytes:
        """A directory the gofer opened (the workload's fd, or the cwd it
        fchdir'd to) is printed from the gofer's root; its mount id says so
        (the container may have a directory of the same name itself)."""
        for prefix, point, mount_id in self.gofer_views:
            if base != prefix and not base.startswith(prefix + b"/"):
                continue
            if _mount_id(k.statx(k.AT_FDCWD, link.encode(), 0, _STATX_MNT_ID)) != mount_id:
                continue
            return point.rstrip(b"/") + base[len(prefix) :] or b"/"
        return base

    def _cred(self, creds: Creds) -> Credentials:
        return Credentials(creds.fsuid, creds.fsgid, creds.groups, creds.cap_effective)

    def _caller(self, call: Call) -> Credentials:
        """The caller's credentials, verified to be its own (rule 1: after every read)."""
        creds = self.creds.get(call.pid)
        call.verify()
        return self._cred(creds)

    def _caller_creds(self, call: Call) -> Creds:
        """The caller's credentials (umask aside), verified to be its own."""
        creds = self.creds.get(call.pid)
        call.verify()
        return creds

    def _fresh(self, call: Call) -> Creds:
        """The caller's credentials with its umask as it is now, verified."""
        creds = self.creds.fresh(call.pid)
        call.verify()
        return creds

    def who(self, creds: Creds) -> Who:
        """What search permission depends on, for ``creds`` (kept per credentials)."""
        who = self._who_of.get(creds)
        if who is None:
            overrides = bool(creds.cap_effective & self._overrides_mask)
            who = Who(creds.fsuid, creds.fsgid, creds.groups, overrides)
            if len(self._who_of) >= 64:
                self._who_of.clear()
            self._who_of[creds] = who
        return who

    # --- for other areas' handlers that name a path in the root (bind(2)) ----------

    def caller_cred(self, call: Call) -> Credentials:
        """The caller's credentials for the gofer, verified (rule 1)."""
        return self._cred(self._caller_creds(call))

    def caller_and_umask(self, call: Call) -> tuple[Credentials, int]:
        """The caller's credentials for the gofer and its umask, verified (rule 1)."""
        creds = self._fresh(call)
        return self._cred(creds), creds.umask

    def caller_fd(self, call: Call, fd: int) -> int:
        """Our copy of the caller's ``fd`` (pidfd_getfd through a pidfd of the
        calling thread, whose fd table may be its own); EBADF if it has none.
        The notification is checked between the two: the pidfd is the caller's."""
        pidfd = os.pidfd_open(call.pid, k.PIDFD_THREAD)
        try:
            call.verify()
            return k.pidfd_getfd(pidfd, fd)
        finally:
            os.close(pidfd)

    def gofer_open(self, path: bytes, flags: int, cred: Credentials) -> int:
        """An fd of ``path`` opened by the gofer with ``cred`` (execve reads a
        program's first bytes with the gofer's own rights)."""
        return self._g.open(path, flags, 0, cred=cred)

    def inode_mapped(self, uid: int, gid: int) -> bool:
        """Whether an inode's owner and group have container ids (a caller's
        capabilities count for it only then); always, without a user namespace."""
        return self._mapped(uid, gid)

    @property
    def gofer_client(self) -> GoferClient | None:
        """The gofer, pinned to this CPU; None until :meth:`attach`."""
        return None if self.gofer is None else self._g

    @property
    def _g(self) -> GoferClient:
        """The gofer, on this CPU: the sentry runs where the caller runs (the
        kernel's SYNC_WAKE_UP), and a request woken on another, idle CPU costs
        ~50 us more here than one handed over on the same CPU (~10 us)."""
        assert self.gofer is not None
        cpu = _current_cpu()
        if cpu != self._gofer_cpu and self.gofer_pid:
            self._gofer_cpu = cpu
            with contextlib.suppress(OSError):
                os.sched_setaffinity(self.gofer_pid, (cpu,))
        return self.gofer

    # --- open ----------------------------------------------------------------------

    def _open(self, call: Call, dirfd: int, addr: int, flags: int, mode: int) -> Result:
        flags &= OPEN_FLAGS  # open and openat ignore any other bit
        path = self._path(call, dirfd, addr, kernel_check=False)
        assert path is not None
        if self.proc is not None:
            virtual = self.proc.serve_path(call, path, flags)
            if virtual is not None:
                return virtual
        if self._in_kernel_mount(path) or flags & os.O_PATH:
            # O_PATH: NOTIF_ADDFD installs no O_PATH file (the kernel's fget
            # refuses them), and such an fd reads or writes nothing: the kernel
            # opens it in its read-only view.
            return CONTINUE
        creds, mode = self._creds_and_mode(call, flags, mode)
        follow = not flags & os.O_NOFOLLOW
        if not (flags & os.O_CREAT or flags & O_TMPFILE == O_TMPFILE):
            # A path that names nothing costs no round trip to the gofer: its
            # walk's error is the open's (build tools probe many such paths).
            kind = self._walk_check(path, follow, creds)
        elif flags & os.O_EXCL or flags & O_TMPFILE == O_TMPFILE:
            kind = 0  # creates a file: no FIFO's
        else:
            kind = stat.S_IFIFO if self._is_fifo(path, follow, creds) else 0
        if stat.S_ISFIFO(kind) and not flags & os.O_NONBLOCK:
            # The open waits for the other end: the kernel's (its read-only view
            # opens a FIFO as any). The gofer's own open, never blocking, would
            # be that other end for a moment, and a waiting peer would take it.
            return CONTINUE
        try:
            fd = self._g.open(path, flags, mode, cred=self._cred(creds))
        except PermissionError:
            # The gofer's mount is nodev: a device node is the kernel's to open
            # (the container's device cgroup decides), anything else was refused.
            try:
                kind = stat.S_IFMT(self._g.stat(path, cred=self._cred(creds)).mode)
            except OSError:
                kind = 0
            if kind in (stat.S_IFCHR, stat.S_IFBLK):
                return CONTINUE
            raise
        except OSError as e:
            if _waits_for_a_reader(e, flags):
                return CONTINUE
            raise
        return _opened(fd, flags)

    def _creds_and_mode(self, call: Call, flags: int, mode: int) -> tuple[Creds, int]:
        """The caller's credentials, verified, and the mode an open creates
        with: its umask applied (read afresh) for O_CREAT and O_TMPFILE, else 0."""
        if flags & os.O_CREAT or flags & O_TMPFILE == O_TMPFILE:
            creds = self._fresh(call)
            return creds, mode & 0o7777 & ~creds.umask
        return self._caller_creds(call), 0

    def _openat2(self, call: Call) -> Result:
        dirfd, addr, how_addr, size = call.args[:4]
        if size < _OPEN_HOW.size:
            return _einval()
        flags, mode, resolve = _OPEN_HOW.unpack(call.read(how_addr, _OPEN_HOW.size))
        if resolve and size == _OPEN_HOW.size and _scoped_write(flags, mode, resolve):
            return self._open_scoped(call, dirfd, addr, flags, mode, resolve)
        if resolve or flags & ~OPEN_FLAGS or mode & ~0o7777:
            # Other RESOLVE_* lookups, which read, and the strict checks are the
            # kernel's (in its read-only view); a bad flag is EINVAL there too.
            return CONTINUE
        if mode and not (flags & os.O_CREAT or flags & O_TMPFILE == O_TMPFILE):
            return _einval()
        return self._open(call, dirfd, addr, flags, mode)

    def _open_scoped(
        self, call: Call, dirfd: int, addr: int, flags: int, mode: int, resolve: int
    ) -> Result:
        """openat2 with RESOLVE_BENEATH or RESOLVE_IN_ROOT that may write (cap-std,
        libpathrs, container tools use them): the gofer makes it in its view of
        the directory, where the kernel keeps the lookup inside it, as the
        caller. That view is the container's when no mount lies below the
        directory; otherwise (and for a chroot()ed caller) the kernel does it,
        in its read-only view."""
        path = call.read_cstring(addr, _PATH_MAX)
        if call.tracing:
            call.detail = f"{repr(path)[1:]}, {flags:#o}, resolve={resolve:#x}"
        if not path or self.chrooted:
            return CONTINUE
        base = self.directory(call, dirfd)
        below = base.rstrip(b"/") + b"/"
        if self._in_kernel_mount(base) or any(m.startswith(below) for m in self._mounts):
            return CONTINUE
        creds, mode = self._creds_and_mode(call, flags, mode)
        if self.gofer is not None:
            self.gofer.mount = 0
        try:
            fd = self._g.openat2(base, path, flags, mode, resolve, cred=self._cred(creds))
        except OSError as e:
            if _waits_for_a_reader(e, flags):
                return CONTINUE
            raise
        return _opened(fd, flags)

    # --- stat, access, readlink, statfs ----------------------------------------------

    def _stat(self, call: Call, dirfd: int, addr: int, buf: int, flags: int) -> Result:
        flags = s32(flags)  # an int: the register's upper half is not the caller's
        if flags & ~(k.AT_SYMLINK_NOFOLLOW | k.AT_NO_AUTOMOUNT | k.AT_EMPTY_PATH):
            return _einval()
        path = self._path(call, dirfd, addr, flags & k.AT_EMPTY_PATH)
        if path is None:
            return CONTINUE  # fstat of dirfd
        follow = not flags & k.AT_SYMLINK_NOFOLLOW
        creds = self._caller_creds(call)
        lookup = self._current_lookup()
        if lookup is not None:
            try:
                ost = lookup.stat(path, follow, self.who(creds))
            except NotJudged:
                pass
            else:
                uid = self.uids.to_container(ost.st_uid)
                call.write(buf, pack_os_stat(ost, uid, self.gids.to_container(ost.st_gid)))
                return 0
        st = self._g.stat(path, follow=follow, cred=self._cred(creds))
        call.write(
            buf, pack_stat(st, self.uids.to_container(st.uid), self.gids.to_container(st.gid))
        )
        return 0

    def _statx(self, call: Call) -> Result:
        dirfd, addr, flags, mask, buf = call.args[:5]
        flags = s32(flags)
        if (
            flags & ~(_STATX_FLAGS | k.AT_STATX_SYNC_TYPE)
            or flags & k.AT_STATX_SYNC_TYPE == k.AT_STATX_SYNC_TYPE
            or mask & _STATX_RESERVED
        ):
            return _einval()
        if addr == 0 and flags & k.AT_EMPTY_PATH:
            return CONTINUE  # statx(fd, NULL, AT_EMPTY_PATH): on the fd
        path = self._path(call, dirfd, addr, flags & k.AT_EMPTY_PATH)
        if path is None:
            return CONTINUE
        follow = not flags & k.AT_SYMLINK_NOFOLLOW
        sync = flags & k.AT_STATX_SYNC_TYPE
        creds = self._caller_creds(call)
        raw = b""
        lookup = self._current_lookup()
        if lookup is not None:
            try:
                dirfd, name, _ = lookup.locate(path, follow, self.who(creds))
            except NotJudged:
                pass
            else:
                at = k.AT_SYMLINK_NOFOLLOW if name else k.AT_EMPTY_PATH
                raw = k.statx(dirfd, name, at | sync, mask & _U32)
        if not raw:
            fd, _ = self._g.walk(path, follow=follow, cred=self._cred(creds))
            try:
                raw = k.statx(fd, b"", k.AT_EMPTY_PATH | sync, mask & _U32)
            finally:
                os.close(fd)
        if self.uids.ranges or self.gids.ranges:
            uid, gid = _STATX_UID.unpack_from(raw, 20)
            ids = _STATX_UID.pack(self.uids.to_container(uid), self.gids.to_container(gid))
            raw = raw[:20] + ids + raw[28:]
        call.write(buf, raw)
        return 0

    def _access(self, call: Call, dirfd: int, addr: int, mode: int, flags: int) -> Result:
        mode &= _U32
        flags = s32(flags)
        if mode & ~7 or flags & ~(k.AT_EACCESS | k.AT_SYMLINK_NOFOLLOW | k.AT_EMPTY_PATH):
            return _einval()
        path = self._path(call, dirfd, addr, flags & k.AT_EMPTY_PATH)
        if path is None:
            return CONTINUE
        creds = self._caller_creds(call)
        if flags & k.AT_EACCESS:
            cred = self._cred(creds)
        else:
            # access(2) judges by the real ids; the real root keeps its permitted
            # capabilities, anyone else has none (the kernel's access_override_creds).
            caps = creds.cap_permitted if creds.ruid == self.root_uid else 0
            cred = Credentials(creds.ruid, creds.rgid, creds.groups, caps)
        follow = not flags & k.AT_SYMLINK_NOFOLLOW
        lookup = self._current_lookup()
        if lookup is not None:
            who = Who(cred.uid, cred.gid, cred.groups, bool(cred.caps & self._overrides_mask))
            try:
                if mode & os.W_OK:  # read-only and immutable files: the gofer's kernel
                    lookup.locate(path, follow, who)
                else:
                    lookup.access(path, mode, follow, who, cred.caps)
                    return 0
            except NotJudged:
                pass
        self._g.access(path, mode, follow=follow, cred=cred)
        return 0

    def _readlink(self, call: Call, dirfd: int, addr: int, buf: int, size: int) -> Result:
        size = s32(size)
        if size <= 0:
            return _einval()
        path = self._path(call, dirfd, addr, 1)
        if path is None:
            return CONTINUE  # readlinkat(fd, ""): the symlink fd refers to
        creds = self._caller_creds(call)
        target = b""
        lookup = self._current_lookup()
        try:
            if lookup is None:
                raise NotJudged(path)
            target = lookup.readlink(path, self.who(creds))
        except NotJudged:
            target = self._g.readlink(path, cred=self._cred(creds))
        target = target[:size]
        call.write(buf, target)
        return len(target)

    def _statfs(self, call: Call) -> Result:
        path = self._path(call, k.AT_FDCWD, call.args[0])
        assert path is not None
        result = self._g.statfs(path, cred=self._caller(call))
        call.write(call.args[1], pack_statfs(result))
        return 0

    # --- names: mkdir, mknod, unlink, rename, link, symlink ---------------------------

    def _mkdir(self, call: Call, dirfd: int, addr: int, mode: int) -> Result:
        path = self._path(call, dirfd, addr)
        assert path is not None
        creds = self._fresh(call)
        self._g.mkdir(path, mode & 0o7777 & ~creds.umask, cred=self._cred(creds))
        return 0

    def _mknod(self, call: Call, dirfd: int, addr: int, mode: int, dev: int) -> Result:
        path = self._path(call, dirfd, addr)
        assert path is not None
        mode &= _U32
        kind = stat.S_IFMT(mode) or stat.S_IFREG
        creds = self._fresh(call)
        perms = mode & 0o7777 & ~creds.umask
        dev &= _U32  # new_decode_dev of the kernel's u32
        rdev = os.makedev((dev >> 8) & 0xFFF, (dev & 0xFF) | ((dev >> 12) & 0xFFF00))
        self._g.mknod(path, kind | perms, rdev, cred=self._cred(creds))
        return 0

    def _unlink(self, call: Call, dirfd: int, addr: int, flags: int) -> Result:
        flags = s32(flags)
        if flags & ~k.AT_REMOVEDIR:
            return _einval()
        path = self._path(call, dirfd, addr)
        assert path is not None
        cred = self._caller(call)
        if flags & k.AT_REMOVEDIR:
            try:
                self._g.rmdir(path, cred=cred)
            finally:
                self._moved()
        else:
            self._g.unlink(path, cred=cred)
        return 0

    def _rename(
        self, call: Call, olddir: int, old_addr: int, newdir: int, new_addr: int, flags: int
    ) -> Result:
        old = self._path(call, olddir, old_addr, kernel_check=False)
        new = self._path(call, newdir, new_addr, kernel_check=False)
        assert old is not None and new is not None
        crossing = self._across_mounts(old, new)
        if crossing is not None:
            return crossing
        try:
            self._g.rename(old, new, flags & _U32, cred=self._caller(call))
        finally:
            self._moved()
        return 0

    def _moved(self) -> None:
        """A directory of the root may have moved or gone: the sentry's lookups
        forget the directories they know (syscalls/lookup.py)."""
        if self.lookup is not None:
            self.lookup.invalidate()

    def _walk_check(self, path: bytes, follow: bool, creds: Creds) -> int:
        """Raise the error the path walk of ``path`` gives the caller, if any
        (the sentry's own lookup; an ACL on the way leaves it to the gofer);
        else the object's st_mode (0: not known here)."""
        lookup = self._current_lookup()
        if lookup is not None:
            with contextlib.suppress(NotJudged):
                return lookup.locate(path, follow, self.who(creds))[2].st_mode
        return 0

    def _is_fifo(self, path: bytes, follow: bool, creds: Creds) -> bool:
        """Whether ``path`` names a FIFO, as far as the sentry's own lookup can
        tell (an error, or an ACL on the way: not known, False)."""
        try:
            return stat.S_ISFIFO(self._walk_check(path, follow, creds))
        except OSError:
            return False

    def _across_mounts(self, old: bytes, new: bytes) -> Result | None:
        """rename and link never cross mounts: both in the kernel's mounts is the
        kernel's call; one there and one in the root is EXDEV, as Linux says."""
        old_kernel, new_kernel = self._in_kernel_mount(old), self._in_kernel_mount(new)
        if old_kernel and new_kernel:
            return CONTINUE
        if old_kernel or new_kernel:
            return Errno(errno.EXDEV)
        return None

    def _link(
        self, call: Call, olddir: int, old_addr: int, newdir: int, new_addr: int, flags: int
    ) -> Result:
        flags = s32(flags)
        if flags & ~(k.AT_SYMLINK_FOLLOW | k.AT_EMPTY_PATH):
            return _einval()
        old = self._path(call, olddir, old_addr, flags & k.AT_EMPTY_PATH, kernel_check=False)
        new = self._path(call, newdir, new_addr, kernel_check=False)
        assert new is not None
        if old is None:  # linkat(fd, "", ..., AT_EMPTY_PATH): an O_TMPFILE file, say
            return self._link_fd(call, s32(olddir), new)
        if flags & k.AT_SYMLINK_FOLLOW:
            fd = _own_fd_link(old)
            if fd is not None:  # open(2)'s way: linkat of /proc/self/fd/N, followed
                return self._link_fd(call, fd, new)
        crossing = self._across_mounts(old, new)
        if crossing is not None:
            return crossing
        self._g.link(old, new, follow=bool(flags & k.AT_SYMLINK_FOLLOW), cred=self._caller(call))
        return 0

    def _link_fd(self, call: Call, fd: int, new: bytes) -> Result:
        """Name the file of the caller's ``fd`` ``new``: the gofer links its
        copy through its own /proc/self/fd. The kernel's may_linkat judges the
        caller's right to the file (protected_hardlinks); Linux 6.10's rule
        for AT_EMPTY_PATH without CAP_DAC_READ_SEARCH, that the fd be the
        caller's own open, is taken as met. A file of another mount than the
        gofer's view of the root is EXDEV there, as Linux says."""
        if self._in_kernel_mount(new):
            return CONTINUE  # the kernel links into its own mounts (or says EXDEV)
        cred = self._caller(call)
        ours = self.caller_fd(call, fd)
        try:
            self._g.link_fd(ours, new, cred=cred)
        finally:
            os.close(ours)
        return 0

    def _symlink(self, call: Call, target_addr: int, newdir: int, new_addr: int) -> Result:
        target = call.read_cstring(target_addr, _PATH_MAX)
        if not target:
            return Errno(errno.ENOENT)
        path = self._path(call, newdir, new_addr)
        assert path is not None
        self._g.symlink(target, path, cred=self._caller(call))
        return 0

    # --- attributes: chmod, chown, utimes, truncate -----------------------------------

    def _chmod(self, call: Call, dirfd: int, addr: int, mode: int, flags: int) -> Result:
        flags = s32(flags)
        if flags & ~(k.AT_SYMLINK_NOFOLLOW | k.AT_EMPTY_PATH):
            return _einval()
        path = self._path(call, dirfd, addr, flags & k.AT_EMPTY_PATH)
        if path is None:
            return CONTINUE
        self._g.chmod(
            path,
            mode & 0o7777,
            follow=not flags & k.AT_SYMLINK_NOFOLLOW,
            cred=self._caller(call),
        )
        return 0

    def _chown(self, call: Call, dirfd: int, addr: int, uid: int, gid: int, flags: int) -> Result:
        flags = s32(flags)
        if flags & ~(k.AT_SYMLINK_NOFOLLOW | k.AT_EMPTY_PATH):
            return _einval()
        path = self._path(call, dirfd, addr, flags & k.AT_EMPTY_PATH)
        if path is None:
            return CONTINUE
        uid &= _U32
        gid &= _U32
        host_uid = uid if uid == _U32 else self.uids.to_host(uid)
        host_gid = gid if gid == _U32 else self.gids.to_host(gid)
        self._g.chown(
            path,
            host_uid,
            host_gid,
            follow=not flags & k.AT_SYMLINK_NOFOLLOW,
            cred=self._caller(call),
        )
        return 0

    def _times(
        self,
        call: Call,
        dirfd: int,
        addr: int,
        times: tuple[tuple[int, int], tuple[int, int]],
        flags: int,
    ) -> Result:
        path = self._path(call, dirfd, addr, flags & k.AT_EMPTY_PATH)
        if path is None:
            return CONTINUE
        self._g.utimens(
            path,
            times[0],
            times[1],
            follow=not flags & k.AT_SYMLINK_NOFOLLOW,
            cred=self._caller(call),
        )
        return 0

    def _utime(self, call: Call) -> Result:
        addr, times_addr = call.args[:2]
        if times_addr == 0:
            now = (0, _UTIME_NOW)
            return self._times(call, k.AT_FDCWD, addr, (now, now), 0)
        atime, mtime = _UTIMBUF.unpack(call.read(times_addr, _UTIMBUF.size))
        return self._times(call, k.AT_FDCWD, addr, ((atime, 0), (mtime, 0)), 0)

    def _utimes(self, call: Call, dirfd: int, addr: int, times_addr: int) -> Result:
        if times_addr == 0:
            now = (0, _UTIME_NOW)
            return self._times(call, dirfd, addr, (now, now), 0)
        a_s, a_us, m_s, m_us = _TIMEVAL2.unpack(call.read(times_addr, _TIMEVAL2.size))
        if not (0 <= a_us < 1_000_000 and 0 <= m_us < 1_000_000):
            return _einval()
        return self._times(call, dirfd, addr, ((a_s, a_us * 1000), (m_s, m_us * 1000)), 0)

    def _utimensat(self, call: Call) -> Result:
        dirfd, addr, times_addr, flags = call.args[:4]
        flags = s32(flags)
        if flags & ~(k.AT_SYMLINK_NOFOLLOW | k.AT_EMPTY_PATH):
            return _einval()
        if addr == 0:
            return CONTINUE  # utimensat(fd, NULL, ...): futimens on the fd
        if times_addr == 0:
            now = (0, _UTIME_NOW)
            return self._times(call, dirfd, addr, (now, now), flags)
        a_s, a_ns, m_s, m_ns = _TIMEVAL2.unpack(call.read(times_addr, _TIMEVAL2.size))
        for ns in (a_ns, m_ns):
            if not (0 <= ns < 1_000_000_000 or ns in (_UTIME_NOW, _UTIME_OMIT)):
                return _einval()
        return self._times(call, dirfd, addr, ((a_s, a_ns), (m_s, m_ns)), flags)

    def _truncate(self, call: Call) -> Result:
        length = call.args[1]
        if length >= 1 << 63:
            return _einval()
        path = self._path(call, k.AT_FDCWD, call.args[0])
        assert path is not None
        self._g.truncate(path, length, cred=self._caller(call))
        return 0

    # --- extended attributes -----------------------------------------------------------

    def _xattr_name(self, call: Call, addr: int) -> bytes:
        try:
            name = call.read_cstring(addr, _XATTR_NAME_MAX + 1)
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise OSError(errno.ERANGE, "xattr name too long") from None
            raise
        if not name:
            raise OSError(errno.ERANGE, "empty xattr name")
        return name

    def _getxattr(self, call: Call, follow: bool) -> Result:
        addr, name_addr, value_addr, size = call.args[:4]
        path = self._path(call, k.AT_FDCWD, addr)
        assert path is not None
        name = self._xattr_name(call, name_addr)
        value = self._g.getxattr(path, name, follow=follow, cred=self._caller(call))
        return self._copy_out(call, value, value_addr, size)

    def _listxattr(self, call: Call, follow: bool) -> Result:
        addr, list_addr, size = call.args[:3]
        path = self._path(call, k.AT_FDCWD, addr)
        assert path is not None
        names = self._g.listxattr(path, follow=follow, cred=self._caller(call))
        return self._copy_out(call, b"".join(n + b"\0" for n in names), list_addr, size)

    @staticmethod
    def _copy_out(call: Call, data: bytes, addr: int, size: int) -> Result:
        """getxattr/listxattr's contract: size 0 asks for the length; too small is ERANGE."""
        if size == 0:
            return len(data)
        if len(data) > min(size, _XATTR_SIZE_MAX):
            return Errno(errno.ERANGE)
        call.write(addr, data)
        return len(data)

    def _setxattr(self, call: Call, follow: bool) -> Result:
        addr, name_addr, value_addr, size, flags = call.args[:5]
        flags = s32(flags)
        if flags & ~(os.XATTR_CREATE | os.XATTR_REPLACE):
            return _einval()
        path = self._path(call, k.AT_FDCWD, addr)
        assert path is not None
        name = self._xattr_name(call, name_addr)
        if size > _XATTR_SIZE_MAX:
            return Errno(errno.E2BIG)
        value = call.read(value_addr, size) if size else b""
        self._g.setxattr(path, name, value, flags, follow=follow, cred=self._caller(call))
        return 0

    def _removexattr(self, call: Call, follow: bool) -> Result:
        addr, name_addr = call.args[:2]
        path = self._path(call, k.AT_FDCWD, addr)
        assert path is not None
        name = self._xattr_name(call, name_addr)
        self._g.removexattr(path, name, follow=follow, cred=self._caller(call))
        return 0
