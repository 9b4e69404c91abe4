"""Where a path leads, when the container has mounts the gofer does not serve.

The gofer sees the container's root file system alone: at the mount points of
/proc, /sys, /dev, the tmpfs and bind mounts it finds only the (empty)
directory or file underneath. A path that leads into one of them, plainly
(``/proc/self/status``) or through a symlink (``/etc/mtab`` ->
``../proc/self/mounts``, ``/dev/fd``), must be answered by the kernel
instead: :class:`KernelMount`.

:func:`canonical` walks a path as the kernel's namei does, one component at
a time, following symlinks itself (at most :data:`MAX_LINKS`, else ELOOP;
an absolute target restarts at the root; ``..`` goes to the canonical
parent, and stays at the root), and returns the path with no symlink and no
``..`` left (the last component is left as it is when it is not to be
followed, or does not exist). Every step is ``openat2(root, ...,
RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS)`` of a path that has no symlink on
its way, so the walk never leaves the root either; the operation then
resolves the canonical path again with RESOLVE_IN_ROOT, which still
contains whatever a race changed meanwhile.

:func:`plain` says when none of that is needed: no ``..`` and no mount point
on the way; the gofer then tries the path at once with RESOLVE_NO_SYMLINKS
and walks only when that fails with ELOOP (a symlink on the way).
"""

from __future__ import annotations

import errno
import os
import stat

from pysandbox.oci import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = ["MAX_LINKS", "KernelMount", "canonical", "plain"]

MAX_LINKS: Final = 40  # the kernel's MAXSYMLINKS
_STEP: Final = kernel.RESOLVE_IN_ROOT | kernel.RESOLVE_NO_SYMLINKS
_O_STEP: Final = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class KernelMount(Exception):
    """The path leads into a mount the kernel serves."""


def _under(path: bytes, mounts: frozenset[bytes]) -> bool:
    prefix = b""
    for part in path.split(b"/"):
        if part:
            prefix += b"/" + part
            if prefix in mounts:
                return True
    return False


def plain(path: bytes, mounts: frozenset[bytes]) -> bool:
    """No ``..`` in ``path`` and no mount point of ``mounts`` on its way:
    resolving it with RESOLVE_NO_SYMLINKS gives the right object or ELOOP."""
    if b".." in path.split(b"/"):
        return False
    if not path.startswith(b"/"):
        path = b"/" + path
    return not _under(path, mounts)


def canonical(root: int, path: bytes, follow_last: bool, mounts: frozenset[bytes]) -> bytes:
    """The canonical absolute path ``path`` names inside ``root`` (see the module
    docstring); KernelMount when it leads into one of ``mounts``."""
    todo = [c for c in reversed(path.split(b"/")) if c and c != b"."]
    must_be_dir = path.endswith(b"/")
    done: list[bytes] = []
    links = 0
    while todo:
        name = todo.pop()
        if name == b"..":
            if done:
                done.pop()
            continue
        here = b"/" + b"/".join([*done, name])
        if here in mounts:
            raise KernelMount(here)
        last = not todo
        try:
            fd = kernel.openat2_bytes(root, here, _O_STEP, 0, _STEP)
        except FileNotFoundError:
            if last:
                done.append(name)
                break  # a name to create, or ENOENT from the operation itself
            raise
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISLNK(mode) and (not last or follow_last or must_be_dir):
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                target = os.readlink(b"", dir_fd=fd)
                if target.startswith(b"/"):
                    done = []
                todo.extend(c for c in reversed(target.split(b"/")) if c and c != b".")
                continue
        finally:
            os.close(fd)
        if not last and not stat.S_ISDIR(mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        done.append(name)
    result = b"/" + b"/".join(done)
    if must_be_dir and done:
        result += b"/"
    return result
