"""Resolving a path of the container's root (mount 0) the way the kernel's namei does.

The gofer's mount 0 is the container's root file system alone: at a mount
point such as /proc, /dev/pts or /etc/hosts it sees only the underlying
directory or file of the root file system (or, where a user namespace locked
the mounts together, the mount itself). Two kinds of mounts lie beyond:

* the **served mounts** (the container's binds: gofer/mounts.py), which the
  gofer holds as mounts 1.. with an O_PATH fd of each root: the walk goes on
  in that root when it reaches the mount point (after checking search
  permission on the directory the name is looked up in, as the kernel's walk
  does), and ``..`` from that root goes to the mount point's parent. A file
  mount's "root" is a directory of the gofer's holding the file as
  :data:`FILE_NAME`. :meth:`Walker.place` says which mount a canonical path
  lies in, and how to open it there;
* the **kernel mounts**, named as the container sees them, are the kernel's to
  serve, and a path must be recognised as leading into one even when it gets
  there through a symlink (/etc/mtab -> ../proc/self/mounts, /dev/fd ->
  /proc/self/fd) or ``..``. The answer is then
  :data:`~pysandbox.gofer.protocol.KERNEL_SERVED`: an ``OSError`` with that
  errno (:func:`kernel_served`), which the server's loop puts in the reply
  like any other errno.

Two ways through, chosen per request (gofer/server.py, ``Server._open_in``):

* **The fast path** (:meth:`Walker.plain`): a path with no ``..`` component
  and no mount point as a component-prefix (judged lexically: ``//`` and
  ``.`` do not count) is opened at once with RESOLVE_NO_SYMLINKS and
  RESOLVE_NO_XDEV added to the usual flags: one openat2, no extra syscall.
  A symlink anywhere on the way makes that fail with ELOOP (a trailing one
  is returned, not refused, with O_PATH | O_NOFOLLOW), and the walk takes
  over; a mount on the way (EXDEV) is KERNEL_SERVED. A path written plainly
  into a served mount with no other mount above it (:meth:`Walker.into_served`)
  has a fast path of its own: one lookup of the directories above the mount
  point in the root, for their search permission, then one openat2 in the
  mount.
* **The walk** (:meth:`Walker.walk`, :meth:`Walker.walk_parent`): one
  component at a time, following symlinks itself as namei does: at most
  :data:`MAXSYMLINKS` (else ELOOP), an absolute target restarts at the
  root, ``..`` goes to the canonical parent (``..`` of the root is the
  root), a non-directory in the middle is ENOTDIR and a missing one ENOENT.
  The canonical path is checked against the kernel mounts at every step.
  A component in the middle is opened below the current directory with
  ``openat2(dirfd, name, O_PATH | O_NOFOLLOW | O_DIRECTORY, RESOLVE_BENEATH
  | RESOLVE_NO_XDEV | RESOLVE_NO_MAGICLINKS)``, which can neither leave that
  directory nor step onto another mount (EXDEV: not the root file system,
  so not the gofer's to serve: KERNEL_SERVED); a directory becomes the next
  dirfd, and on ENOTDIR ``readlinkat(dirfd, name)`` tells a symlink (its
  target) from anything else (EINVAL: ENOTDIR). The last component, when it
  is to be followed, is read with that readlinkat alone. Neither call
  follows a symlink or looks at more than the one name below dirfd: one
  syscall per directory, two per symlink. ``..`` is ``openat2(root,
  canonical + "/..", RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | ...)``: the
  kernel checks search permission on the directory being left, as its own
  ``..`` does, and cannot go above the root. Every step runs with the
  caller's credentials, so a directory the caller may not search stops the
  walk with EACCES, as the kernel's walk would.

The walk returns a canonical path (absolute, no symlink, no ``..``): the
object's; or, for a last component that does not exist or is not to be
followed, its parent's plus that name; with a trailing ``/`` where the
kernel would then require a directory. The operation runs on that path,
resolved in the root once more with the fast path's flags: a rename racing
the walk makes that fail (ENOENT, ENOTDIR, ELOOP, EAGAIN) or land elsewhere
inside the root, never outside it and never in a kernel mount's contents.
"""

from __future__ import annotations

import errno
import os
import re
import stat

from pysandbox.oci import kernel

from . import protocol as p

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import Final

__all__ = [
    "FILE_NAME",
    "FILE_RESOLVE",
    "MAXSYMLINKS",
    "RESOLVE_ROOTFS",
    "Walker",
    "kernel_served",
    "mount_prefix_matcher",
    "normalize_mounts",
]

_KNOWN_MAX: Final = 4096  # paths whose plain() answer is kept (then all are forgotten)
MAXSYMLINKS: Final = 40  # the kernel's limit on the symlinks one lookup follows
_STEP_FLAGS: Final = os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
_PIN_FLAGS: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_STEP_RESOLVE: Final = (
    kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_XDEV | kernel.RESOLVE_NO_MAGICLINKS
)
_UP_FLAGS: Final = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
# The root file system and a served directory mount: no symlink (the walk
# follows them itself) and no other mount (those are the kernel's, or other
# served mounts the walk enters itself).
RESOLVE_ROOTFS: Final = (
    kernel.RESOLVE_IN_ROOT
    | kernel.RESOLVE_NO_MAGICLINKS
    | kernel.RESOLVE_NO_SYMLINKS
    | kernel.RESOLVE_NO_XDEV
)
# A served file mount, bound on FILE_NAME in a directory of the gofer's own:
# crossing onto that bind is the point, and a file leads nowhere further.
FILE_NAME: Final = b"f"
FILE_RESOLVE: Final = (
    kernel.RESOLVE_BENEATH | kernel.RESOLVE_NO_MAGICLINKS | kernel.RESOLVE_NO_SYMLINKS
)
_SEARCH: Final = kernel.AT_EACCESS | kernel.AT_EMPTY_PATH
_UP_RESOLVE: Final = (
    kernel.RESOLVE_IN_ROOT
    | kernel.RESOLVE_NO_SYMLINKS
    | kernel.RESOLVE_NO_MAGICLINKS
    | kernel.RESOLVE_NO_XDEV
)


def kernel_served(path: bytes) -> OSError:
    """The error for a path that leads into a mount the gofer does not serve."""
    return OSError(p.KERNEL_SERVED, "served by the kernel", path)


def _err(code: int, path: bytes) -> OSError:
    return OSError(code, os.strerror(code), path)


def normalize_mounts(paths: Iterable[str | bytes]) -> frozenset[bytes]:
    """Kernel mount points as bytes, each absolute, without ``//``, ``.`` or a
    trailing slash. ``..`` and the root itself (the gofer's) are refused."""
    out: set[bytes] = set()
    for path in paths:
        raw = os.fsencode(path)
        if not raw.startswith(b"/"):
            raise ValueError(f"a kernel mount point must be absolute: {path!r}")
        parts = [c for c in raw.split(b"/") if c and c != b"."]
        if b".." in parts:
            raise ValueError(f"a kernel mount point may not contain '..': {path!r}")
        if not parts:
            raise ValueError("the root is the gofer's to serve, not a kernel mount")
        out.add(b"/" + b"/".join(parts))
    return frozenset(out)


def mount_prefix_matcher(mounts: frozenset[bytes]) -> Callable[[bytes], object] | None:
    """A match function saying whether a path begins with one of ``mounts``
    (normalized: :func:`normalize_mounts`), relative or absolute, with "//"
    and "/./" anywhere, ending at a component boundary: one C call. None when
    there are no mounts. (``..`` is not looked at: a caller that must be
    exact about it checks for it first.)"""
    if not mounts:
        return None
    gap = rb"/(?:\.?/)*"
    points = b"|".join(gap.join(re.escape(c) for c in m[1:].split(b"/")) for m in sorted(mounts))
    return re.compile(rb"(?:\.?/)*(?:" + points + rb")(?:/|\Z)").match


def _components(path: bytes) -> tuple[list[bytes], bool]:
    """(the components but empty ones and ``.``, whether the last one must be a
    directory: the path ends in ``/`` or ``/.``)."""
    raw = path.split(b"/")
    return [c for c in raw if c and c != b"."], raw[-1] in (b"", b".")


class Walker:
    """Resolution in one root (an O_PATH fd of the container's root) with the
    container's kernel mounts (absolute paths, as the container names them)
    and the mounts the gofer serves besides the root (``served``: mount
    point -> an O_PATH fd of the mount's root, whether it is a file mount;
    a file mount's fd is a directory holding the file as :data:`FILE_NAME`)."""

    __slots__ = (
        "_fast",
        "_fixed",
        "_kernel_match",
        "_known",
        "_match",
        "_top",
        "mounts",
        "points",
        "root",
        "served",
    )

    def __init__(
        self,
        root: int,
        kernel_mounts: Iterable[str | bytes] = (),
        served: Mapping[bytes, tuple[int, bool]] | None = None,
    ) -> None:
        self.root = root
        self.mounts = normalize_mounts(kernel_mounts)
        self.served: dict[bytes, tuple[int, bool]] = {}
        for point, where in (served or {}).items():
            (normal,) = normalize_mounts((point,))
            self.served[normal] = where
        self.points = self.mounts | frozenset(self.served)  # every mount point but the root
        self._fixed = frozenset((root, *(fd for fd, _file in self.served.values())))
        self._match = mount_prefix_matcher(self.points)
        self._kernel_match = mount_prefix_matcher(self.mounts)
        # served mounts with no other mount above them (into_served's fast path)
        self._top = frozenset(
            q for q in self.served if not any(q.startswith(m + b"/") for m in self.points)
        )
        self._known: dict[bytes, bool] = {}  # plain()'s answers, a pure function of the path
        self._fast: dict[bytes, tuple[int, bytes, bytes, int] | None] = {}  # into_served()'s

    def place(self, where: bytes) -> tuple[int, bytes, int]:
        """(an fd, a path below it, RESOLVE_* flags) for openat2 to reach the
        canonical path ``where`` (a walk's answer): in the served mount it
        lies in (the deepest whose point is a prefix), else in the root."""
        served = self.served
        if served:
            probe = where.rstrip(b"/")
            while probe:
                mount = served.get(probe)
                if mount is not None:
                    fd, file = mount
                    rest = where[len(probe) :]
                    if file:
                        return fd, FILE_NAME + rest, FILE_RESOLVE
                    return fd, rest or b".", RESOLVE_ROOTFS
                probe = probe[: probe.rfind(b"/")]
        return self.root, where, RESOLVE_ROOTFS

    def plain(self, path: bytes) -> bool:
        """Whether ``path`` may take the fast path: no ``..`` component and no
        mount point as a component-prefix. No syscall; a path asked about
        before costs a dict lookup (~0.1 us here, against ~0.4 us to judge
        it: a workload asks about the same few paths again and again)."""
        known = self._known.get(path)
        if known is not None:
            return known
        if b".." in path and b".." in path.split(b"/"):
            answer = False
        else:
            match = self._match
            answer = match is None or match(path) is None
        if len(self._known) >= _KNOWN_MAX:
            self._known.clear()
        self._known[path] = answer
        return answer

    def into_served(self, path: bytes) -> tuple[int, bytes, bytes, int] | None:
        """The fast path into a served mount, for an absolute path written
        plainly (no ``//``, ``/./``, ``..``, trailing ``/`` or ``/.``) into a
        served mount that has no other mount above it, with no other mount
        on its way: (the mount's fd, the path below it, a path of the root
        whose lookup checks search permission on the directories above the
        mount point, the RESOLVE_* flags); None when the path must be walked.
        No syscall; answers are kept, as :meth:`plain`'s."""
        if not self.served:
            return None
        if path in self._fast:
            return self._fast[path]
        answer = None
        if (
            path[:1] == b"/"
            and b"//" not in path
            and b"/./" not in path
            and not path.endswith((b"/", b"/."))
            and b".." not in path.split(b"/")
        ):
            within = [q for q in self.served if path == q or path.startswith(q + b"/")]
            kernel_match = self._kernel_match
            if (
                len(within) == 1
                and within[0] in self._top
                and (kernel_match is None or kernel_match(path) is None)
            ):
                point = within[0]
                fd, file = self.served[point]
                rest = path[len(point) :]
                if not file:
                    answer = (fd, rest or b".", point[: point.rfind(b"/")] + b"/.", RESOLVE_ROOTFS)
                elif not rest:
                    answer = (fd, FILE_NAME, point[: point.rfind(b"/")] + b"/.", FILE_RESOLVE)
        if len(self._fast) >= _KNOWN_MAX:
            self._fast.clear()
        self._fast[path] = answer
        return answer

    def walk(self, path: bytes, follow: bool) -> bytes:
        """The canonical path of what ``path`` names (relative paths start at the
        root too), following a symlink in the last component when ``follow``
        or a trailing slash says so. Raises the errno the kernel's lookup
        would, or KERNEL_SERVED."""
        if not path:
            raise _err(errno.ENOENT, path)
        names, trailing = _components(path)
        return self._walk(path, names, trailing, follow)

    def walk_parent(
        self, path: bytes, parent: bytes, name: bytes, points_ok: bool = False
    ) -> bytes:
        """The canonical path of ``parent`` (followed: it must be a directory)
        for an operation on ``name`` in it, which is never followed (``name``
        may keep a trailing slash). KERNEL_SERVED when the parent is in a
        kernel mount, or the name is a mount point itself (unless
        ``points_ok``: :meth:`names_point` then tells)."""
        where = self.walk(parent, True).rstrip(b"/")
        if not points_ok and self.names_point(where, name):
            raise kernel_served(path)
        return where or b"/"

    def holds_point(self, where: bytes, name: bytes) -> bool:
        """Whether a mount point lies below ``name`` in the canonical directory
        ``where`` (b"": not a path of mount 0, nothing is known)."""
        if not where:
            return False
        prefix = where.rstrip(b"/") + b"/" + name.rstrip(b"/") + b"/"
        return any(point.startswith(prefix) for point in self.points)

    def names_point(self, where: bytes, name: bytes) -> bool:
        """Whether ``name`` in the canonical directory ``where`` is a mount point."""
        return where.rstrip(b"/") + b"/" + name.rstrip(b"/") in self.points

    def _walk(self, path: bytes, todo: list[bytes], trailing: bool, follow: bool) -> bytes:
        root = self.root
        mounts = self.mounts
        served = self.served
        fixed = self._fixed  # the roots' fds: never closed here
        todo.reverse()  # a stack: the next component last
        cur = b""  # the canonical directory reached ("" is the root)
        dirfd = root  # an O_PATH fd of it
        links = 0
        try:
            while todo:
                name = todo.pop()
                last = not todo
                if name == b"..":
                    up = self._up(dirfd, cur)
                    if dirfd not in fixed:
                        os.close(dirfd)
                    dirfd = up
                    cur = cur[: cur.rfind(b"/")]
                    continue
                child = cur + b"/" + name
                if child in mounts:
                    raise kernel_served(path)
                mount = served.get(child) if served else None
                if mount is not None:
                    # Onto a served mount: the name is looked up in dirfd, which
                    # the caller must be able to search, as the kernel's walk asks.
                    kernel.faccessat2(dirfd, b"", os.X_OK, _SEARCH)
                    fd, file = mount
                    if file:
                        if not last:
                            raise _err(errno.ENOTDIR, path)
                        return child + b"/" if trailing else child
                    if last and not (follow or trailing):
                        return child
                    if dirfd not in fixed:
                        os.close(dirfd)
                    dirfd = fd
                    cur = child
                    continue
                if last:
                    if not (follow or trailing):
                        return child  # not followed: the operation itself judges it
                    try:
                        target = os.readlink(name, dir_fd=dirfd)
                    except OSError as e:
                        # EINVAL: no symlink (the operation judges it, a trailing
                        # slash included); ENOENT: a name to create, or ENOENT
                        if e.errno not in (errno.EINVAL, errno.ENOENT):
                            raise
                        return child + b"/" if trailing else child
                else:
                    try:
                        fd = kernel.openat2_bytes(dirfd, name, _STEP_FLAGS, 0, _STEP_RESOLVE)
                    except OSError as e:
                        if e.errno == errno.EXDEV:  # a mount that is not the root's file system
                            raise kernel_served(path) from None
                        if e.errno != errno.ENOTDIR:
                            raise
                        fd, target = _not_a_directory(dirfd, name, path)
                    if fd >= 0:
                        if dirfd not in fixed:
                            os.close(dirfd)
                        dirfd = fd
                        cur = child
                        continue
                links += 1
                if links > MAXSYMLINKS:
                    raise _err(errno.ELOOP, path)
                if not target:
                    raise _err(errno.ENOENT, path)
                parts, target_trailing = _components(target)
                if last:  # the target's last component is the path's last now
                    trailing = trailing or target_trailing
                if target.startswith(b"/"):
                    if dirfd not in fixed:
                        os.close(dirfd)
                    dirfd = root
                    cur = b""
                parts.reverse()
                todo.extend(parts)
        finally:
            if dirfd not in fixed:
                os.close(dirfd)
        return cur or b"/"

    def _up(self, dirfd: int, cur: bytes) -> int:
        """An O_PATH fd of the parent of the canonical directory ``cur`` (whose
        fd is ``dirfd``; the root's parent is the root). The kernel checks
        search permission on ``cur``, as its own ``..`` does, and nothing can
        go above the root."""
        if cur in self.served:  # a served mount's root: its parent is in another mount
            kernel.faccessat2(dirfd, b"", os.X_OK, _SEARCH)
            fd, rel, resolve = self.place(cur[: cur.rfind(b"/")] or b"/")
            return kernel.openat2_bytes(fd, rel, _UP_FLAGS, 0, resolve)
        fd, rel, _resolve = self.place(cur or b"/")
        return kernel.openat2_bytes(fd, rel.rstrip(b"/") + b"/..", _UP_FLAGS, 0, _UP_RESOLVE)


def _not_a_directory(dirfd: int, name: bytes, path: bytes) -> tuple[int, bytes]:
    """``name`` was no directory when opened: (-1, its target) if it is a
    symlink; ENOTDIR if it is anything else. If it is a directory again (a
    rename raced the two calls), (an O_PATH fd of it, b""); the object an
    fd pins decides, so no race makes a directory ENOTDIR."""
    try:
        return -1, os.readlink(name, dir_fd=dirfd)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    try:
        fd = kernel.openat2_bytes(dirfd, name, _PIN_FLAGS, 0, _STEP_RESOLVE)
    except OSError as e:
        if e.errno == errno.EXDEV:
            raise kernel_served(path) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            fd, pinned = -1, fd
            return pinned, b""
        if stat.S_ISLNK(mode):
            return -1, os.readlink(b"", dir_fd=fd)
    finally:
        if fd >= 0:
            os.close(fd)
    raise _err(errno.ENOTDIR, path)
