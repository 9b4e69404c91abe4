"""The sentry's side of the gofer protocol: one synchronous method per operation.

Each method sends one request and waits for its reply (gofer/protocol.py). A
failure comes back as ``OSError`` with the errno the gofer got from the
kernel, acting with the caller's credentials, so the sentry can answer the
workload with it unchanged. A path that leads into a mount the gofer does
not serve (a reply of KERNEL_SERVED) raises :class:`KernelPath` instead, from
every method: the sentry hands that call to the kernel. An fd in a reply is
an int owned by the caller (close-on-exec); nothing here keeps or closes it.

The client is safe to share between threads (one request in flight at a
time, under a lock); a gofer that has gone away raises :class:`GoferGone`.
"""

from __future__ import annotations

import _socket
import _thread
import array
import errno
import os
import struct

from . import protocol as p

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

    PathArg = str | bytes

__all__ = ["GoferClient", "GoferGone", "KernelPath"]

_ANC_SPACE: Final = _socket.CMSG_SPACE(4 * 4)  # room for a few fds: extras are closed, not leaked
_U32_MASK: Final = 0xFFFFFFFF
_I32: Final = struct.Struct("<i")
_ROOT_REPLY: Final = struct.Struct("<IQQ")  # op_root's: number, st_dev, st_ino
_UNCHANGED: Final = 0xFFFFFFFF
AT_SYMLINK_NOFOLLOW: Final = 0x100
AT_SYMLINK_FOLLOW: Final = 0x400


class KernelPath(Exception):
    """The path leads into a mount the gofer does not serve (/proc, /dev, a
    tmpfs) or names a mount point: the kernel must answer. Deliberately not an OSError, so that no
    ``except OSError`` turns it into an errno for the workload. ``path``: the
    request's path (RENAME's and LINK's first one: the reply does not say
    which of the two it was)."""

    def __init__(self, path: bytes) -> None:
        super().__init__(path)
        self.path = path


class GoferGone(OSError):
    """The gofer closed its end (it exited or was killed): no file service any more."""

    def __init__(self) -> None:
        super().__init__(errno.EIO, "the gofer is gone")


def _b(path: PathArg) -> bytes:
    return path if isinstance(path, bytes) else os.fsencode(path)


def _at(follow: bool) -> int:
    return 0 if follow else AT_SYMLINK_NOFOLLOW


class GoferClient:
    """Talks to one gofer over ``sock`` (its end of the socketpair).

    ``cred`` is used for every request that does not name its own
    (``cred=...``); ``mount`` picks the mount source (0: the container's root).
    """

    def __init__(self, sock: _socket.socket, cred: p.Credentials) -> None:
        self.sock = sock
        self.cred = cred
        self.mount = 0  # the mount (a root: 0, or add_root's) of requests that name none
        self._buf = bytearray(p.MAX_REPLY + 1)
        self._view = memoryview(self._buf)
        self._next_id = 0
        self._lock = _thread.allocate_lock()

    def close(self) -> None:
        self.sock.close()

    # --- the exchange -------------------------------------------------------------

    def _call(
        self,
        op: int,
        args: tuple[int, ...],
        strings: tuple[bytes, ...],
        cred: p.Credentials | None,
        mount: int | None,
        send_fd: int = -1,
    ) -> tuple[bytes, int]:
        """(result bytes, fd or -1); raises OSError with the gofer's errno.
        ``send_fd``: an fd that goes with the request (SCM_RIGHTS); ``mount``
        None: :attr:`mount`."""
        if mount is None:
            mount = self.mount
        with self._lock:
            self._next_id = rid = (self._next_id + 1) & _U32_MASK
            request = p.encode_request(op, rid, cred or self.cred, args, strings, mount)
            try:
                if send_fd >= 0:
                    rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _I32.pack(send_fd))]
                    self.sock.sendmsg([request], rights)
                else:
                    self.sock.send(request)
                n, anc, flags, _addr = self.sock.recvmsg_into(
                    [self._buf], _ANC_SPACE, _socket.MSG_CMSG_CLOEXEC
                )
            except (BrokenPipeError, ConnectionResetError):
                raise GoferGone() from None
            fds = _fds(anc)
            if n == 0:
                _close(fds)
                raise GoferGone()
            if n < p.REPLY.size or flags & _socket.MSG_TRUNC:
                _close(fds)
                raise OSError(errno.EPROTO, "malformed reply from the gofer")
            r_op, r_flags, _reserved, r_id, err = p.REPLY.unpack_from(self._buf)
            result = bytes(self._view[p.REPLY.size : n])
        if r_id != rid or r_op != op:
            _close(fds)
            raise OSError(errno.EPROTO, f"reply {r_id} (op {r_op}) to request {rid} (op {op})")
        if err:
            _close(fds)
            if err == p.KERNEL_SERVED:
                # the path the op resolves (SYMLINK's first string is its target)
                raise KernelPath(strings[op == p.OP_SYMLINK])
            raise OSError(err, os.strerror(err), strings[0] if strings else None)
        if r_flags & p.REPLY_FD:
            if len(fds) != 1:
                _close(fds)
                raise OSError(errno.EPROTO, "reply announced an fd and carried none")
            return result, fds[0]
        _close(fds)
        return result, -1

    def _fd(
        self,
        op: int,
        args: tuple[int, ...],
        strings: tuple[bytes, ...],
        cred: p.Credentials | None,
        mount: int | None,
    ) -> int:
        _result, fd = self._call(op, args, strings, cred, mount)
        if fd < 0:
            raise OSError(errno.EPROTO, "the gofer returned no fd")
        return fd

    # --- operations on an object ----------------------------------------------------

    def stat(
        self,
        path: PathArg,
        *,
        follow: bool = True,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> p.Stat:
        result, _fd = self._call(p.OP_STAT, (_at(follow),), (_b(path),), cred, mount)
        return p.Stat._make(p.STAT.unpack(result))

    def walk(
        self,
        path: PathArg,
        *,
        follow: bool = True,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> tuple[int, p.Stat]:
        """An O_PATH fd of ``path`` (the caller's to close) and its stat."""
        result, fd = self._call(p.OP_WALK, (_at(follow),), (_b(path),), cred, mount)
        return fd, p.Stat._make(p.STAT.unpack(result))

    def open(
        self,
        path: PathArg,
        flags: int,
        mode: int = 0,
        *,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> int:
        """open(2) with these O_ flags (and mode, which the caller's umask has
        already been applied to); the new fd is the caller's."""
        return self._fd(p.OP_OPEN, (flags, mode), (_b(path),), cred, mount)

    def openat2(
        self,
        directory: PathArg,
        path: PathArg,
        flags: int,
        mode: int,
        resolve: int,
        *,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> int:
        """openat2(2) of ``path`` in ``directory`` (followed: it must be one)
        with these RESOLVE_ flags, which must scope the lookup to it
        (RESOLVE_BENEATH or RESOLVE_IN_ROOT); the new fd is the caller's."""
        args = (flags, mode, resolve)
        return self._fd(p.OP_OPENAT2, args, (_b(directory), _b(path)), cred, mount)

    def chmod(
        self,
        path: PathArg,
        mode: int,
        *,
        follow: bool = True,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        self._call(p.OP_CHMOD, (mode, _at(follow)), (_b(path),), cred, mount)

    def chown(
        self,
        path: PathArg,
        uid: int,
        gid: int,
        *,
        follow: bool = True,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        """chown/lchown; -1 leaves that id unchanged."""
        args = (uid & _UNCHANGED, gid & _UNCHANGED, _at(follow))
        self._call(p.OP_CHOWN, args, (_b(path),), cred, mount)

    def utimens(
        self,
        path: PathArg,
        atime: tuple[int, int],
        mtime: tuple[int, int],
        *,
        follow: bool = True,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        """utimensat: each time is (seconds, nanoseconds); nanoseconds may be
        UTIME_NOW or UTIME_OMIT (pysandbox.oci.kernel)."""
        args = (*atime, *mtime, _at(follow))
        self._call(p.OP_UTIMENS, args, (_b(path),), cred, mount)

    def truncate(
        self,
        path: PathArg,
        length: int,
        *,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        self._call(p.OP_TRUNCATE, (length,), (_b(path),), cred, mount)

    def statfs(
        self, path: PathArg, *, cred: p.Credentials | None = None, mount: int | None = None
    ) -> p.StatFS:
        result, _fd = self._call(p.OP_STATFS, (), (_b(path),), cred, mount)
        return p.StatFS._make(p.STATFS.unpack(result))

    def getxattr(
        self,
        path: PathArg,
        name: PathArg,
        *,
        follow: bool = True,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> bytes:
        result, _fd = self._call(p.OP_GETXATTR, (_at(follow),), (_b(path), _b(name)), cred, mount)
        return result

    def setxattr(
        self,
        path: PathArg,
        name: PathArg,
        value: bytes,
        flags: int = 0,
        *,
        follow: bool = True,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        """``flags``: XATTR_CREATE (1) or XATTR_REPLACE (2), as setxattr(2)."""
        strings = (_b(path), _b(name), value)
        self._call(p.OP_SETXATTR, (flags, _at(follow)), strings, cred, mount)

    def listxattr(
        self,
        path: PathArg,
        *,
        follow: bool = True,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> list[bytes]:
        result, _fd = self._call(p.OP_LISTXATTR, (_at(follow),), (_b(path),), cred, mount)
        return result.split(b"\0")[:-1]

    def removexattr(
        self,
        path: PathArg,
        name: PathArg,
        *,
        follow: bool = True,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        self._call(p.OP_REMOVEXATTR, (_at(follow),), (_b(path), _b(name)), cred, mount)

    def connect(
        self,
        path: PathArg,
        kind: int = _socket.SOCK_STREAM,
        *,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> int:
        """An AF_UNIX socket of ``kind`` (SOCK_NONBLOCK honoured) connected to the
        socket at ``path``; its peer sees the caller's uid and gid."""
        return self._fd(p.OP_CONNECT, (kind,), (_b(path),), cred, mount)

    # --- operations on a name ----------------------------------------------------------

    def mkdir(
        self,
        path: PathArg,
        mode: int,
        *,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        self._call(p.OP_MKDIR, (mode,), (_b(path),), cred, mount)

    def mknod(
        self,
        path: PathArg,
        mode: int,
        dev: int = 0,
        *,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        """FIFOs, sockets, regular files; device nodes with the caller's CAP_MKNOD."""
        self._call(p.OP_MKNOD, (mode, dev), (_b(path),), cred, mount)

    def unlink(
        self, path: PathArg, *, cred: p.Credentials | None = None, mount: int | None = None
    ) -> None:
        self._call(p.OP_UNLINK, (), (_b(path),), cred, mount)

    def rmdir(
        self, path: PathArg, *, cred: p.Credentials | None = None, mount: int | None = None
    ) -> None:
        self._call(p.OP_RMDIR, (), (_b(path),), cred, mount)

    def rename(
        self,
        old: PathArg,
        new: PathArg,
        flags: int = 0,
        *,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        """renameat2 (RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT in ``flags``)."""
        self._call(p.OP_RENAME, (flags,), (_b(old), _b(new)), cred, mount)

    def link(
        self,
        old: PathArg,
        new: PathArg,
        *,
        follow: bool = False,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        """linkat; ``follow`` is AT_SYMLINK_FOLLOW (link(2) itself does not follow)."""
        flags = AT_SYMLINK_FOLLOW if follow else 0
        self._call(p.OP_LINK, (flags,), (_b(old), _b(new)), cred, mount)

    def add_root(self, path: PathArg, *, cred: p.Credentials | None = None) -> tuple[int, int, int]:
        """(number, st_dev, st_ino) of a root made of the directory ``path`` (of
        mount 0), the number for the ``mount`` argument of later requests
        (gofer/server.py op_root)."""
        result, _fd = self._call(p.OP_ROOT, (), (_b(path),), cred, 0)
        number, dev, ino = _ROOT_REPLY.unpack(result)
        return number, dev, ino

    def link_fd(
        self,
        fd: int,
        new: PathArg,
        *,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        """Give the file ``fd`` refers to the name ``new`` (linkat AT_EMPTY_PATH,
        or AT_SYMLINK_FOLLOW of a /proc/self/fd link); ``fd`` stays ours."""
        self._call(p.OP_LINKFD, (), (_b(new),), cred, mount, send_fd=fd)

    def connect_fd(
        self,
        sock: int,
        path: PathArg,
        *,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        """Connect the AF_UNIX socket ``sock`` (ours stays open; the gofer
        connects the same socket) to the socket file at ``path``; EAGAIN where
        a blocking connect would wait (gofer/server.py op_connectfd)."""
        self._call(p.OP_CONNECTFD, (), (_b(path),), cred, mount, send_fd=sock)

    def symlink(
        self,
        target: PathArg,
        path: PathArg,
        *,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        self._call(p.OP_SYMLINK, (), (_b(target), _b(path)), cred, mount)

    def access(
        self,
        path: PathArg,
        mode: int,
        *,
        follow: bool = True,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> None:
        """faccessat2(AT_EACCESS) judged with ``cred``: put the ids access(2)
        must be judged by (real or effective) into it."""
        self._call(p.OP_ACCESS, (mode, _at(follow)), (_b(path),), cred, mount)

    def readlink(
        self, path: PathArg, *, cred: p.Credentials | None = None, mount: int | None = None
    ) -> bytes:
        result, _fd = self._call(p.OP_READLINK, (), (_b(path),), cred, mount)
        return result

    def bind(
        self,
        path: PathArg,
        kind: int = _socket.SOCK_STREAM,
        umask: int = 0o022,
        *,
        cred: p.Credentials | None = None,
        mount: int | None = None,
    ) -> int:
        """An AF_UNIX socket of ``kind`` bound at ``path`` (mode 0777 & ~umask,
        owned by the caller); the caller listens on it or sends from it."""
        return self._fd(p.OP_BIND, (kind, umask), (_b(path),), cred, mount)


def _fds(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds = array.array("i")
    for level, kind, data in ancdata:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return list(fds)


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
