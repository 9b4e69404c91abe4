"""The sentry's own lookups in the container's root: metadata, never contents.

A served stat used to cost a round trip to the gofer: ~36 us of a ~70 us
call here, most of it two wake-ups of a Python process. Yet a lookup that
reads no file (stat, lstat, statx, readlink, access for reading and
executing, and whether an open would fail its path walk) needs none of the
gofer's powers: no write, no open of a file's contents, no credentials of
the caller's put on a thread.
As gVisor's sentry does with directfs, the sentry therefore walks such paths
itself, through an O_PATH fd of the container's root that the gofer handed
it (``GoferClient.walk(b"/")``), and judges search permission for the caller
the way the kernel's ``generic_permission`` does. Everything that opens or
changes a file still goes to the gofer, which re-resolves the path itself.

**How a path is walked** (:meth:`Lookup.locate`), namei-style, one
component at a time, so that nothing but single names below a directory fd
ever reaches the kernel:

* a directory on the way is opened ``openat(dirfd, name, O_PATH |
  O_NOFOLLOW | O_DIRECTORY)``: the sentry's seccomp filter allows only
  read-only openat flags, and none of these can leave the directory; it is
  kept in a cache of canonical directory paths (below);
* a component that is no directory is read with ``readlinkat``: a symlink's
  target is walked (at most 40, an absolute one from the root), anything
  else in the middle of a path is ENOTDIR;
* ``..`` goes back to the directory the walk came from (the root's ``..``
  is the root), which is the canonical parent, as in the gofer's walk;
* the last component is ``fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)``, then
  followed if it is a symlink and the call follows;
* every canonical path is checked against the container's kernel mounts:
  a path into one is ``KernelPath`` and the call goes back to the kernel.

**Search permission** is checked on every directory the walk looks a name
up in, as the kernel's ``may_lookup`` does (a trailing ``/.`` included): an
fstat of the directory fd, then the owner, group or other execute bit for
the caller's fs ids and groups; CAP_DAC_READ_SEARCH or CAP_DAC_OVERRIDE in
its effective set grants it (in a user namespace only for a directory
whose owner and group are mapped, ``capable_wrt_inode_uidgid``). A caller
with those capabilities and no user namespace costs no fstat at all. A
directory with a POSIX ACL (``system.posix_acl_access``, remembered per
inode and ctime) is not judged here: :class:`NotJudged` sends the call to
the gofer, where the kernel judges it.

**What search permission reads is kept too**: a directory's mode, owner and
group (and whether it has an ACL) are read with one fstat the first time and
then taken from the cache, which an inotify watch on the directory keeps
true: chmod, chown and ACL changes (IN_ATTRIB), by whoever makes them, through
a path or an fd, in the container or from the host, queue an event before
their call returns, and every walk reads the queue first. A lookup that
reads an empty queue is therefore ordered before any change it did not see,
exactly as if it had run first. Without a watch (the host's inotify limits)
the directory is fstat'ed on every walk, as before.

**The directory cache** maps canonical paths to O_PATH fds, so a path's
directories are opened once, not on every call. Only the container's root
is cached: a served mount (a volume: gofer/mounts.py) holds the host's
files too, which the host may replace at any moment (a ``git checkout``
beside a running container), so its directories are opened anew on every
walk (kept until the next one, never watched). An fd follows its
directory, not its name, so the cache is dropped whenever a name of the
container's root may have moved: after every rename and rmdir the sentry
serves (:meth:`Lookup.invalidate`). Those are the only ways to move or
replace a directory, and the workload has no other: the kernel's view of
the root is read-only and every path call is notified. The sentry's loop is
one thread, so no lookup runs between a rename and the drop. (A change made
from the host, behind the container's back, is not seen: ``--overlay none``
with the bundle's directories renamed under a running container. gVisor
has the same caveat for its dentry cache, except that the watches above
see a directory of the cache deleted or moved from the host, which then
drops the cache.)
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable

from pysandbox.gofer.client import KernelPath
from pysandbox.gofer.walk import FILE_NAME
from pysandbox.oci import kernel

from .creds import fd_limit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["MAXSYMLINKS", "Lookup", "NotJudged", "Who", "acl_at"]

MAXSYMLINKS: Final = 40  # the kernel's limit on the symlinks one lookup follows
_DIRS_MAX: Final = 4096  # cached directory fds at most; then all are closed
# Walks before the first watch: tearing an inotify instance down (at the
# sentry's exit) waits for an SRCU grace period, ~15 ms here, which a short
# container (`run` of `true`: three walks) should not pay for nothing.
_WATCH_AFTER: Final = 512
_ACLS_MAX: Final = 4096
_STEP: Final = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_ACL_ACCESS: Final = "system.posix_acl_access"
_NO_ACL: Final = (errno.ENODATA, errno.EOPNOTSUPP)
_WATCH: Final = kernel.IN_ATTRIB | kernel.IN_DELETE_SELF | kernel.IN_MOVE_SELF | kernel.IN_ONLYDIR
_MOVED: Final = kernel.IN_DELETE_SELF | kernel.IN_MOVE_SELF | kernel.IN_UNMOUNT | kernel.IN_IGNORED
_EVENT: Final = struct.Struct("=iIII")  # struct inotify_event: wd, mask, cookie, len
_S_IFMT: Final = 0o170000
_S_IFDIR: Final = 0o040000
_S_IFLNK: Final = 0o120000


class NotJudged(Exception):
    """The sentry cannot judge this lookup as the kernel would (an ACL on the
    way): the gofer must do it."""


class Who:
    """What search permission depends on: the caller's fs ids, its groups and
    whether its effective capabilities override directory permissions."""

    __slots__ = ("fsuid", "groups", "overrides")

    def __init__(self, fsuid: int, fsgid: int, groups: tuple[int, ...], overrides: bool) -> None:
        self.fsuid = fsuid
        self.groups = frozenset((fsgid, *groups))
        self.overrides = overrides  # CAP_DAC_READ_SEARCH or CAP_DAC_OVERRIDE


def _err(code: int, path: bytes) -> OSError:
    return OSError(code, os.strerror(code), path)


def _split(path: bytes) -> tuple[list[bytes], bool, bool]:
    """(components but empty ones and ``.``, whether the object must be a
    directory: a trailing ``/`` or ``/.``, whether the last one was ``.``)."""
    raw = path.split(b"/")
    last = raw[-1]
    return [c for c in raw if c and c != b"."], last in (b"", b"."), last == b"."


class Lookup:
    """Walks of the container's root (``root``: an O_PATH fd of it) for the
    sentry; ``mounts``: the kernel mounts' canonical paths (normalized, see
    gofer/walk.normalize_mounts); ``mapped(uid, gid)``: whether an inode's
    owner and group are mapped into the container's user namespace (None:
    the container has none)."""

    def __init__(
        self,
        root: int,
        mounts: frozenset[bytes],
        mapped: Callable[[int, int], bool] | None = None,
        watch_after: int = _WATCH_AFTER,
        served: dict[bytes, tuple[int, bool]] | None = None,
    ) -> None:
        self.root = root
        # The mounts the gofer serves besides the root: point -> (an O_PATH fd
        # of its root, whether it is a file mount, whose fd is a directory of
        # the gofer's holding the file as FILE_NAME). Walks enter them.
        self.served = served or {}
        self.watch_after = watch_after  # walks before the first watch
        # Directory fds at most: a quarter of what the fd limit leaves room for,
        # so the cache never makes the sentry's other opens fail with EMFILE.
        self.dirs_max = min(_DIRS_MAX, fd_limit() // 4)
        self.mounts = mounts
        self.mapped = mapped
        self._dirs: dict[bytes, int] = {}  # canonical path of a directory -> O_PATH fd
        self._scratch: list[int] = []  # the last walk's fds in served mounts (closed by the next)
        self._acls: dict[tuple[int, int], tuple[int, bool]] = {}  # (dev, ino) -> (ctime, ACL?)
        self._perms: dict[int, tuple[int, int, int]] = {}  # a watched directory's mode, uid, gid
        self._dir_acls: dict[int, bool] = {}  # whether a watched directory has an ACL
        self._watches: dict[int, list[int]] = {}  # inotify wd -> the directory fds it watches
        self._watched: set[int] = set()  # directory fds with a watch
        self._notify = -1  # the inotify fd, made at the first watch (-2: none to be had)
        self._walks = 0

    # --- the cache -------------------------------------------------------------------

    def invalidate(self) -> None:
        """Forget every directory: a name in the root may have moved."""
        dirs = self._dirs
        self._dirs = {}
        for fd in dirs.values():
            os.close(fd)
        self._forget_perms()

    def _forget_perms(self) -> None:
        """Forget every directory's mode, and the watches that kept it true
        (removed one by one: closing the instance would wait ~15 ms)."""
        self._perms.clear()
        self._dir_acls.clear()
        if self._notify >= 0:
            for wd in self._watches:
                try:
                    kernel.inotify_rm_watch(self._notify, wd)
                except OSError:
                    pass  # gone with its directory already (IN_IGNORED)
        self._watches.clear()
        self._watched.clear()

    def close(self) -> None:
        self.invalidate()
        for fd in self._scratch:
            os.close(fd)
        self._scratch.clear()
        for fd, _file in self.served.values():
            os.close(fd)
        self.served = {}
        if self._notify >= 0:
            os.close(self._notify)
            self._notify = -1

    # --- the calls -------------------------------------------------------------------

    def stat(self, path: bytes, follow: bool, who: Who) -> os.stat_result:
        """What stat (``follow``) or lstat of ``path`` would return."""
        return self.locate(path, follow, who)[2]

    def readlink(self, path: bytes, who: Who) -> bytes:
        """The target of the symlink ``path`` names (EINVAL: not a symlink)."""
        dirfd, name, st = self.locate(path, False, who)
        if not name or st.st_mode & _S_IFMT != _S_IFLNK:
            raise _err(errno.EINVAL, path)
        return os.readlink(name, dir_fd=dirfd)

    def access(self, path: bytes, mode: int, follow: bool, who: Who, caps: int) -> None:
        """access(2) of ``path`` for R_OK and X_OK (``mode``; W_OK is not judged
        here: read-only and immutable files are the kernel's to tell), as
        ``generic_permission`` judges the object for ``who`` with the
        effective capabilities ``caps``. EACCES, the walk's errno, or NotJudged
        (an ACL on the object)."""
        if mode & ~(os.R_OK | os.X_OK):
            raise NotJudged(path)
        dirfd, name, st = self.locate(path, follow, who)
        if not mode:
            return
        fmode = st.st_mode
        if st.st_uid == who.fsuid:
            bits = fmode >> 6
        else:
            if self._has_acl(_at(dirfd, name), st):
                raise NotJudged(path)
            bits = fmode >> 3 if st.st_gid in who.groups else fmode
        if not mode & ~bits & 7:
            return
        if self.mapped is None or self.mapped(st.st_uid, st.st_gid):
            override = bool(caps >> kernel.CAP_DAC_OVERRIDE & 1)
            read_search = bool(caps >> kernel.CAP_DAC_READ_SEARCH & 1)
            if fmode & _S_IFMT == _S_IFDIR:
                if override or read_search:  # no MAY_WRITE here: both override
                    return
            else:
                if mode == os.R_OK and read_search:
                    return
                if override and (not mode & os.X_OK or fmode & 0o111):
                    return
        raise _err(errno.EACCES, path)

    def locate(self, path: bytes, follow: bool, who: Who) -> tuple[int, bytes, os.stat_result]:
        """(an O_PATH directory fd, a name in it or b"" for the directory
        itself, the object's lstat) for the object ``path`` (absolute) names,
        following a symlink in the last component when ``follow`` or a
        trailing slash says so. The fd belongs to the cache: valid until the
        next :meth:`invalidate` (in a served mount, until the next walk).
        Raises the errno the kernel's walk would
        give, KernelPath, or NotJudged."""
        self._walks += 1
        if len(self._dirs) >= self.dirs_max:
            self.invalidate()
        elif self._notify >= 0:
            self._read_events()
        names, trailing, dot_last = _split(path)
        todo = names[::-1]  # a stack: the next component last
        dirs = self._dirs
        mounts = self.mounts
        served = self.served
        scratch = self._scratch
        if scratch:
            for old in scratch:
                os.close(old)
            scratch.clear()
        canon = b""  # the canonical directory reached ("" is the root)
        dirfd = self.root
        back: list[tuple[bytes, int]] = []  # where ".." goes: the directories walked through
        links = 0
        shared = False  # whether canon is in a served mount (the host's files)
        while todo:
            name = todo.pop()
            last = not todo
            self._search(dirfd, who, path, dirfd not in scratch)
            if name == b"..":
                if back:
                    canon, dirfd = back.pop()
                    shared = shared and self._in_served(canon)
                continue
            child = canon + b"/" + name
            if child in mounts:
                raise KernelPath(path)
            mount = served.get(child) if served else None
            if mount is not None:  # onto a mount the gofer serves: its root
                root, file = mount
                if file:  # a file: it must be the last component
                    if not last or trailing:
                        raise _err(errno.ENOTDIR, path)
                    return root, FILE_NAME, os.stat(FILE_NAME, dir_fd=root, follow_symlinks=False)
                back.append((canon, dirfd))
                canon, dirfd = child, root
                shared = True
                continue
            # A served mount's directories are the host's too, which may replace
            # them at any time: they are opened anew on every walk, never kept.
            fd = None if shared else dirs.get(child)
            if fd is None:
                if last and not trailing:
                    st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
                    if not follow or st.st_mode & _S_IFMT != _S_IFLNK:
                        return dirfd, name, st
                    target = os.readlink(name, dir_fd=dirfd)
                else:
                    try:
                        fd = os.open(name, _STEP, dir_fd=dirfd)
                    except OSError as e:
                        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                            raise
                        target = _symlink_or_enotdir(dirfd, name, path)
                    else:
                        if shared:
                            scratch.append(fd)
                        else:
                            dirs[child] = fd
            if fd is not None:
                back.append((canon, dirfd))
                canon, dirfd = child, fd
                continue
            links += 1
            if links > MAXSYMLINKS:
                raise _err(errno.ELOOP, path)
            if not target:
                raise _err(errno.ENOENT, path)
            parts, target_trailing, target_dot = _split(target)
            if last:  # the target's last component is the path's last now
                trailing = trailing or target_trailing
                dot_last = dot_last or target_dot
            if target[0] == 0x2F:  # "/": from the root again
                back.clear()
                canon, dirfd = b"", self.root
                shared = False
            todo.extend(reversed(parts))
        if dot_last:  # "dir/.": "." is looked up in dir, which must be searchable
            self._search(dirfd, who, path, dirfd not in scratch)
        return dirfd, b"", os.stat(dirfd)

    def _in_served(self, canon: bytes) -> bool:
        """Whether the canonical directory ``canon`` lies in a served mount."""
        return any(canon == p or canon.startswith(p + b"/") for p in self.served)

    # --- search permission -----------------------------------------------------------

    def _search(self, dirfd: int, who: Who, path: bytes, kept: bool = True) -> None:
        """EACCES unless ``who`` may search the directory ``dirfd``; ``kept``:
        whether the fd stays open past this walk (only such an fd's mode may
        be remembered under a watch: a number closed after the walk is
        reused)."""
        if who.overrides and self.mapped is None:
            return
        perm = self._perms.get(dirfd) if kept else None
        st = None
        if perm is None:
            # The watch first: a change after it is an event, even one the
            # fstat below already sees (that costs one more fstat, no more).
            watched = kept and self._watch(dirfd)
            st = os.stat(dirfd)
            perm = (st.st_mode, st.st_uid, st.st_gid)
            if watched:
                self._perms[dirfd] = perm
        mode, uid, gid = perm
        if who.overrides and self.mapped is not None and self.mapped(uid, gid):
            return
        if uid == who.fsuid:
            if mode & 0o100:
                return
            raise _err(errno.EACCES, path)
        if self._acl(dirfd, st):
            raise NotJudged(path)
        if mode & (0o010 if gid in who.groups else 0o001):
            return
        raise _err(errno.EACCES, path)

    def _acl(self, dirfd: int, st: os.stat_result | None) -> bool:
        """Whether the directory has an ACL: remembered while it is watched,
        else by inode and ctime (``st``: its fstat, if at hand)."""
        if dirfd in self._watched:
            acl = self._dir_acls.get(dirfd)
            if acl is None:
                acl = self._dir_acls[dirfd] = _acl_of(dirfd)
            return acl
        return self._has_acl(dirfd, st if st is not None else os.stat(dirfd))

    # --- the watches -------------------------------------------------------------------

    def _watch(self, dirfd: int) -> bool:
        """Whether ``dirfd`` is watched (it is now, if the kernel allows)."""
        if dirfd in self._watched:
            return True
        if self._notify == -1:
            if self._walks <= self.watch_after:
                return False  # not yet: see _WATCH_AFTER
            try:
                self._notify = kernel.inotify_init1(kernel.IN_CLOEXEC | kernel.IN_NONBLOCK)
            except OSError:
                self._notify = -2  # no instance left for us: every walk fstats
        if self._notify < 0:
            return False
        try:
            wd = kernel.inotify_add_watch(self._notify, f"/proc/self/fd/{dirfd}", _WATCH)
        except OSError:
            return False  # max_user_watches
        self._watches.setdefault(wd, []).append(dirfd)
        self._watched.add(dirfd)
        return True

    def _read_events(self) -> None:
        """Apply what the watches saw since the last walk: a directory whose
        attributes changed is read again; one moved, deleted or unmounted from
        under the cache (by the host) drops the cache."""
        moved = False
        while True:
            try:
                data = os.read(self._notify, 65536)
            except BlockingIOError:
                break
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                offset += _EVENT.size + length
                if mask & kernel.IN_Q_OVERFLOW:
                    moved = True  # events were lost: trust nothing kept
                    continue
                fds = self._watches.get(wd)
                if fds is None:
                    continue  # a watch forgotten already (its IN_IGNORED after rm)
                for fd in fds:
                    self._perms.pop(fd, None)
                    self._dir_acls.pop(fd, None)
                if mask & _MOVED:
                    moved = True
        if moved:
            self.invalidate()

    def _has_acl(self, where: int | str, st: os.stat_result) -> bool:
        """Whether the object (a directory fd, or a /proc/self/fd path) has an
        ACL, remembered by inode and ctime (an ACL change changes the ctime)."""
        key = (st.st_dev, st.st_ino)
        known = self._acls.get(key)
        if known is not None and known[0] == st.st_ctime_ns:
            return known[1]
        has = _acl_of(where)
        if len(self._acls) >= _ACLS_MAX:
            self._acls.clear()
        self._acls[key] = (st.st_ctime_ns, has)
        return has


def acl_at(dirfd: int, name: bytes) -> bool:
    """Whether ``name`` in the directory ``dirfd`` (the directory itself if
    empty) has a POSIX ACL; the name's symlink is not followed."""
    return _acl_of(_at(dirfd, name))


def _at(dirfd: int, name: bytes) -> int | str:
    """``name`` in ``dirfd`` as _acl_of takes it: a /proc/self/fd path, or
    the fd itself when the name is empty (the object is that directory)."""
    return f"/proc/self/fd/{dirfd}/{os.fsdecode(name)}" if name else dirfd


def _acl_of(where: int | str) -> bool:
    """Whether the object has a POSIX ACL (any error: assume it has): a
    directory fd (its /proc/self/fd link followed), or a path whose last
    component is not followed (a symlink's target is not the object)."""
    try:
        if isinstance(where, int):
            os.getxattr(f"/proc/self/fd/{where}", _ACL_ACCESS)
        else:
            os.getxattr(where, _ACL_ACCESS, follow_symlinks=False)
        return True
    except OSError as e:
        return e.errno not in _NO_ACL


def _symlink_or_enotdir(dirfd: int, name: bytes, path: bytes) -> bytes:
    """``name`` did not open as a directory: its target if it is a symlink;
    ENOTDIR if it is anything else."""
    try:
        return os.readlink(name, dir_fd=dirfd)
    except OSError as e:
        if e.errno == errno.EINVAL:
            raise _err(errno.ENOTDIR, path) from None
        raise
