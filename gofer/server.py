"""The gofer's request loop and its operations.

One thread, one request at a time: receive a datagram (gofer/protocol.py),
put the caller's credentials on the thread, do the operation, answer with an
errno or the result (and an fd, SCM_RIGHTS). A request that cannot be read
gets EINVAL; an operation that raises anything but OSError is a gofer bug: it
is answered EIO and logged with its stack, and the loop goes on.

How a path never leaves the container's root
---------------------------------------------
Every path is resolved by the kernel with ``openat2(root, path,
RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)``: ``..`` stops at the root, an
absolute symlink restarts at the root, /proc magic links are refused, and
the kernel checks all of it under its own locks, so a rename racing the walk
cannot move the walk outside (it fails with EAGAIN/EXDEV-style errors or
resolves inside instead).

In mount 0, the container's root, the gofer must also see where a path
leads: the other mounts of the container (/proc, /dev/pts, /etc/hosts, ...)
are not its to serve (it holds the root file system alone), and a path into
one of them, plainly, through a symlink or through ``..``, is answered
KERNEL_SERVED for the kernel to serve (gofer/walk.py). So there the openat2
above also carries RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV and is made
directly only for a path with no ``..`` and no kernel mount point on its
way (the fast path: one syscall, as before); on ELOOP (a symlink on the
way), or for a path with ``..``, :class:`~pysandbox.gofer.walk.Walker`
first follows it one component at a time, as the kernel's walk does, each
step confined below its directory (RESOLVE_BENEATH), and the operation is
made on the canonical path it finds, with the same flags (still
RESOLVE_IN_ROOT: a race can only make it fail or land elsewhere inside).
Stepping onto any mount (EXDEV) is KERNEL_SERVED too, but for the
container's binds the gofer serves (mounts 1.., gofer/mounts.py): the walk
enters those, and the operation opens the canonical path in the mount it
lies in. A request that names mount 1.. itself is resolved in that mount's
root as at first, symlinks and all, by the kernel.

* Operations on an object (stat, access, chmod, chown, utimens, truncate,
  statfs, the xattr calls, connect) resolve it to an O_PATH fd that way
  (the last component followed unless the caller said "don't follow") and
  then act on that fd: directly (fstat, fstatfs, faccessat2 AT_EMPTY_PATH)
  or through ``/proc/self/fd/N``, which the kernel follows straight to the
  fd's object, a symlink included, without a second path walk. /proc here
  is the gofer's own (its own pid namespace, ``subset=pid``: only the gofer
  is in it; see gofer/process.py). open follows the last component unless
  O_NOFOLLOW or O_CREAT | O_EXCL; O_CREAT through a dangling symlink
  creates its target (inside the root), as Linux does.
* Operations on a name (mkdir, mknod, unlink, rmdir, rename, link, symlink,
  readlink, bind) resolve the *parent* directory that way (through symlinks
  and ``..``) and then call the ``*at`` function with the single last
  component, which the kernel never follows when it creates or removes it.
  ``.`` and ``..`` as a last component are refused here (with the errno
  Linux gives), so ``*at`` never walks up. A parent in a kernel mount, or
  a name that is a mount point itself, is KERNEL_SERVED (the kernel's
  EEXIST or EINVAL are its own to give), except for unlink, rmdir and
  rename: removing a mount point is EBUSY after the checks Linux makes
  first (the kernel's read-only view would say EROFS).

An fd is never *reopened* through /proc/self/fd (that would turn an O_PATH
fd into a readable or writable one without open's permission check): the
calls that go through it (chmod, chown, utimensat, truncate, the xattr
calls, connect, linkat) each check the caller's permission on the object
themselves. Every fd the gofer returns was opened by path, as the caller.

Three operations take more than a path. LINKFD links the fd that came with
the request (SCM_RIGHTS: an O_TMPFILE file the workload holds) through this
process's /proc/self/fd, as open(2) documents. CONNECTFD connects the
AF_UNIX socket that came with the request (the workload's own) to the socket
file at the path, without ever blocking (below). They are the only requests
that bring an fd; any other received fd is closed unread. ROOT makes a
directory of mount 0 a root of its own, numbered like a mount source, for a
workload process that chroot()ed: its requests then resolve with
RESOLVE_IN_ROOT in that directory, so ``..`` and absolute symlinks stay in it.

Opening a FIFO never blocks the gofer's only thread: a reader with no writer
gets its fd at once, a writer with no reader ENXIO. Waiting for the other
end, as open(2) on a FIFO does, is the sentry's job.

Credentials
-----------
Each request carries the caller's host uid, gid, supplementary groups and
effective capabilities. :class:`CredentialSwitch` applies them to the
gofer's thread with raw setgroups/setfsgid/setfsuid and capset, so the
kernel's own permission checks (DAC, sticky directories, protected
hardlinks, setgid clearing, who may chown) judge the workload, not the
gofer. The caller is lent at most the gofer's *file* capabilities (never
CAP_SETUID/CAP_SETGID, which the gofer keeps for the switch itself). The
switch is skipped when the next request has the same credentials as the
last one (the common case: one workload user): between requests the gofer
only receives and sends on its socketpair, which no fs credential governs,
and switching back and forth (seven syscalls, three credential commits each
way) more than doubled a stat's round trip (22 -> 55 us, measured).
``restore_after_request=True`` restores the gofer's own credentials after
every request instead.

The gofer's umask is 0: a mode in a request is applied exactly; the sentry
applies the workload's umask before it asks (bind takes the umask itself,
since bind(2) has no mode).
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import os
import stat
import struct

from pysandbox.oci import kernel
from pysandbox.oci.kernel import (
    CAP_CHOWN,
    CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH,
    CAP_FOWNER,
    CAP_FSETID,
    CAP_MKNOD,
    CAP_SETFCAP,
)

from . import protocol as p
from .walk import RESOLVE_ROOTFS, Walker, kernel_served

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from types import TracebackType
    from typing import Final

    Handler = Callable[[p.Request], tuple[bytes, int]]

__all__ = ["FILE_CAPABILITIES", "CredentialSwitch", "Server"]

_RESOLVE: Final = kernel.RESOLVE_IN_ROOT | kernel.RESOLVE_NO_MAGICLINKS
_O_PATH: Final = os.O_PATH | os.O_CLOEXEC
_SEARCH_WRITE: Final = kernel.AT_EACCESS | kernel.AT_EMPTY_PATH
_O_DIR: Final = _O_PATH | os.O_DIRECTORY
_O_TMPFILE: Final = p.O_TMPFILE
# What the gofer adds to an open. O_NOCTTY: the gofer leads a session; a tty
# must never become its terminal. O_NONBLOCK: opening a FIFO must not block
# its only thread (the writer the reader waits for may need the gofer to open
# its end); _as_asked clears it again unless the caller asked for it.
_OPEN_EXTRA: Final = os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
# The status flags F_SETFL restores after the gofer's own O_NONBLOCK open.
_SETFL_KEEP: Final = os.O_APPEND | os.O_DIRECT | os.O_NOATIME
_SOCK_TYPES: Final = (_socket.SOCK_STREAM, _socket.SOCK_DGRAM, _socket.SOCK_SEQPACKET)
_SOCK_FLAGS: Final = _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC
_SUN_PATH_MAX: Final = 107  # sockaddr_un.sun_path less its NUL
_UNCHANGED: Final = 0xFFFFFFFF
_NSEC_MAX: Final = 999_999_999
_I32: Final = struct.Struct("<i")
_ROOT_REPLY: Final = struct.Struct("<IQQ")  # op_root's: number, st_dev, st_ino
_ANC_ONE_FD: Final = _socket.CMSG_SPACE(_I32.size)

# The capabilities a caller may be lent for one request (if it has them and the
# gofer does): those the kernel consults for file operations. CAP_SETUID and
# CAP_SETGID are the gofer's own, for switching; never a caller's.
FILE_CAPABILITIES: Final = frozenset(
    {
        CAP_CHOWN,
        CAP_DAC_OVERRIDE,
        CAP_DAC_READ_SEARCH,
        CAP_FOWNER,
        CAP_FSETID,
        CAP_MKNOD,
        CAP_SETFCAP,
    }
)
_FILE_CAP_MASK: Final = sum(1 << c for c in FILE_CAPABILITIES)


def _err(code: int) -> OSError:
    return OSError(code, os.strerror(code))


def _proc_fd(fd: int) -> bytes:
    """The gofer's own /proc/self/fd/N: the kernel follows it to the fd's object."""
    return b"/proc/self/fd/%d" % fd


class CredentialSwitch:
    """Puts a caller's credentials on the calling thread, and the gofer's own back.

    The thread must hold CAP_SETUID and CAP_SETGID (in its permitted set) to
    switch; each change is read back, so a switch that the kernel silently
    refused (setfsuid reports no error) fails the request with EPERM instead of
    running it with the gofer's identity.
    """

    def __init__(self) -> None:
        eff, perm, _inh = kernel.capget()
        self.permitted = perm
        self.own = p.Credentials(
            kernel.current_fsuid(), kernel.current_fsgid(), tuple(os.getgroups()), eff
        )
        self.current = self.own.packed

    def apply(self, packed: bytes) -> None:
        """Switch to the credentials ``packed`` (``Credentials.packed``), unless in force."""
        if packed == self.current:
            return
        cred = p.decode_credentials(packed)
        if packed == self.own.packed:
            effective = self.own.caps
        else:
            effective = cred.caps & _FILE_CAP_MASK & self.permitted
        self.current = b""  # unknown until every step below has succeeded
        try:
            # Raise everything the gofer holds first: setgroups needs CAP_SETGID,
            # setfsuid/setfsgid need CAP_SETUID/CAP_SETGID to take any id.
            kernel.capset(self.permitted, self.permitted, 0)
            kernel.setgroups_thread(cred.groups)
            kernel.setfsgid(cred.gid)
            kernel.setfsuid(cred.uid)
            if kernel.current_fsuid() != cred.uid or kernel.current_fsgid() != cred.gid:
                raise _err(errno.EPERM)
            # setfsuid away from 0 cleared the file capabilities; the caller's come back.
            kernel.capset(effective, self.permitted, 0)
        except BaseException:
            if packed != self.own.packed:
                self.restore()
            raise
        self.current = packed

    def restore(self) -> None:
        self.apply(self.own.packed)


class _EffectiveIds:
    """The caller's uid/gid as the thread's *effective* ids too, for connect():
    a peer's SO_PEERCRED records euid/egid, not fsuid, and must see the workload."""

    def __init__(self, switch: CredentialSwitch, packed: bytes) -> None:
        self.switch = switch
        self.cred = p.decode_credentials(packed)

    def __enter__(self) -> None:
        sw, cred = self.switch, self.cred
        sw.current = b""  # the fs ids follow the effective ones: re-applied on exit
        try:
            kernel.capset(sw.permitted, sw.permitted, 0)
            kernel.setresgid_thread(-1, cred.gid, -1)
            kernel.setresuid_thread(-1, cred.uid, -1)
            # euid 0 -> uid cleared the effective set; the caller's file caps come back.
            kernel.capset(cred.caps & _FILE_CAP_MASK & sw.permitted, sw.permitted, 0)
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Back to the gofer's ids: its real and saved ids are its own, so no
        # capability is needed; then the fs ids and caps through the switch.
        kernel.setresuid_thread(-1, os.getuid(), -1)
        kernel.setresgid_thread(-1, os.getgid(), -1)
        self.switch.restore()


def _split(path: bytes, dot_err: int, root_err: int, dotdot_err: int = 0) -> tuple[bytes, bytes]:
    """(parent path, last component) of a path, for the *at call on a name.

    The last component keeps one trailing slash if the path had any: the
    kernel then applies the "must be a directory" rules itself (creating and
    removing never follow the last component, slash or not). ``.`` and ``..``
    and the root itself are refused with the errno Linux gives for the op.
    """
    if not path:
        raise _err(errno.ENOENT)
    stripped = path.rstrip(b"/")
    if not stripped:
        raise _err(root_err)
    cut = stripped.rfind(b"/")
    name = stripped[cut + 1 :]
    if name == b".":
        raise _err(dot_err)
    if name == b"..":
        raise _err(dotdot_err or dot_err)
    parent = stripped[:cut] if cut > 0 else (b"/" if cut == 0 else b".")
    if len(stripped) != len(path):
        name += b"/"
    return parent, name


class Server:
    """Serves one socket until the other end hangs up.

    ``roots``: O_PATH fds of the mount sources' root directories (0: the
    container's root). ``log_fd``: where bugs are reported (one line each,
    plus a stack).
    """

    def __init__(
        self,
        sock: _socket.socket,
        roots: Sequence[int],
        *,
        log_fd: int = 2,
        restore_after_request: bool = False,
        kernel_mounts: Iterable[str | bytes] = (),
        served: Mapping[bytes, tuple[int, bool]] | None = None,
    ) -> None:
        self.sock = sock
        self.roots = tuple(roots)
        self._given_roots = len(self.roots)  # later ones are op_root's, closed by close()
        # Resolution in mount 0, with the container's other mount points (as it
        # names them): a path into a served one (``served``: point -> (its mount
        # number, whether it is a file)) goes on in that mount's root, a path
        # into any other is answered KERNEL_SERVED (gofer/walk.py).
        into = {point: (self.roots[n], file) for point, (n, file) in (served or {}).items()}
        self.walker = Walker(self.roots[0], kernel_mounts, into)
        self.log_fd = log_fd
        self.restore_after_request = restore_after_request
        self.creds = CredentialSwitch()
        self._cwd = os.open("/", _O_PATH | os.O_DIRECTORY)
        self.passed_fd = -1  # the fd that came with the request being served (LINKFD)
        # op -> bound method op_<name> (a subclass may override one)
        self._handlers: dict[int, Handler] = {
            op: getattr(self, "op_" + spec.name) for op, spec in p.OPS.items()
        }
        os.umask(0)

    def close(self) -> None:
        """Close what the server opened itself (not the socket or the roots given)."""
        os.close(self._cwd)
        for fd in self.roots[self._given_roots :]:
            os.close(fd)
        self.roots = self.roots[: self._given_roots]

    # --- the loop --------------------------------------------------------------

    def serve(self) -> None:
        """Answer requests until EOF (the sentry closed its end or died)."""
        buf = bytearray(p.MAX_REQUEST + 1)
        view = memoryview(buf)
        recv = self.sock.recvmsg_into
        while True:
            try:
                # Room for one fd (LINKFD's); more are closed, never used.
                n, anc, flags, _addr = recv([buf], _ANC_ONE_FD, _socket.MSG_CMSG_CLOEXEC)
            except OSError as e:
                self._log(f"gofer: receive failed, stopping: {e}")
                return
            if n == 0:
                return
            self.passed_fd = _first_fd(anc)
            try:
                if flags & _socket.MSG_TRUNC:  # larger than any valid request
                    reply, fd = self._malformed(view[:n])
                else:
                    reply, fd = self.handle(view[:n])
            finally:
                if self.passed_fd >= 0:
                    os.close(self.passed_fd)
                    self.passed_fd = -1
            try:
                self._send(reply, fd)
            except OSError as e:
                self._log(f"gofer: reply failed, stopping: {e}")
                return

    def _send(self, reply: bytes, fd: int) -> None:
        if fd < 0:
            self.sock.send(reply)
            return
        try:
            self.sock.sendmsg([reply], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _I32.pack(fd))])
        finally:
            os.close(fd)  # the caller has its own copy now (or nobody does)

    def handle(self, data: bytes | memoryview) -> tuple[bytes, int]:
        """One request in, (reply datagram, fd to pass or -1) out; never raises."""
        try:
            req = p.decode_request(data)
        except p.ProtocolError as e:
            return p.encode_reply(e.op, e.request_id, errno.EINVAL), -1
        handler = self._handlers[req.op]
        try:
            if req.mount >= len(self.roots):
                raise _err(errno.EINVAL)
            self.creds.apply(req.cred)
            try:
                payload, fd = handler(req)
            finally:
                if self.restore_after_request:
                    self.creds.restore()
        except OSError as e:
            if e.errno is None:  # raised by Python itself, not the kernel: ours to fix
                self._crash(req)
                return p.encode_reply(req.op, req.request_id, errno.EIO), -1
            return p.encode_reply(req.op, req.request_id, e.errno), -1
        except Exception:
            self._crash(req)
            return p.encode_reply(req.op, req.request_id, errno.EIO), -1
        return p.encode_reply(req.op, req.request_id, 0, payload, fd >= 0), fd

    def _malformed(self, data: memoryview) -> tuple[bytes, int]:
        op = rid = 0
        if len(data) >= p.HEADER.size:
            op, _flags, _mount, rid = p.HEADER.unpack_from(data)
        return p.encode_reply(op, rid, errno.EINVAL), -1

    def _log(self, message: str) -> None:
        try:
            os.write(self.log_fd, (message + "\n").encode(errors="replace"))
        except OSError:
            pass

    def _crash(self, req: p.Request) -> None:
        """Log a bug with its stack. Source lines are not read: the confined gofer
        has no source files, and reading them would be a file access of its own."""
        import sys

        exc = sys.exc_info()[1]
        lines = [f"gofer: {p.OPS[req.op].name} (request {req.request_id}) failed: {exc!r}"]
        tb = exc.__traceback__ if exc is not None else None
        while tb is not None:
            code = tb.tb_frame.f_code
            lines.append(f"  {code.co_filename}:{tb.tb_lineno} in {code.co_name}")
            tb = tb.tb_next
        self._log("\n".join(lines))

    # --- resolution -------------------------------------------------------------

    def _open_in(self, req: p.Request, path: bytes, flags: int, mode: int, follow: bool) -> int:
        """openat2 of ``path`` inside the request's mount root. In mount 0 the
        fast path or the walk (gofer/walk.py); ``follow``: whether the walk
        follows a symlink in the last component (the kernel's rule for the op)."""
        root = self.roots[req.mount]
        if req.mount:
            return kernel.openat2_bytes(root, path, flags, mode, _RESOLVE)
        walker = self.walker
        try:
            if walker.plain(path):
                try:
                    return kernel.openat2_bytes(root, path, flags, mode, RESOLVE_ROOTFS)
                except OSError as e:
                    if e.errno != errno.ELOOP:  # ELOOP: a symlink on the way, to walk
                        raise
            fast = walker.into_served(path)
            if fast is not None:
                try:
                    return self._open_served(fast, flags, mode)
                except OSError as e:
                    if e.errno != errno.ELOOP:
                        raise
            at, where, resolve = walker.place(walker.walk(path, follow))
            return kernel.openat2_bytes(at, where, flags, mode, resolve)
        except OSError as e:
            if e.errno == errno.EXDEV:  # onto a mount: not the root's file system
                raise kernel_served(path) from None
            raise

    def _open_served(self, fast: tuple[int, bytes, bytes, int], flags: int, mode: int) -> int:
        """openat2 along :meth:`Walker.into_served`'s fast path: search permission
        on the directories above the mount point (one lookup in the root), then
        the path in the mount. ELOOP: a symlink on the way, to walk."""
        fd, rel, above, resolve = fast
        os.close(kernel.openat2_bytes(self.walker.root, above, _O_DIR, 0, RESOLVE_ROOTFS))
        return kernel.openat2_bytes(fd, rel, flags, mode, resolve)

    def _resolve(self, req: p.Request, path: bytes, nofollow: bool = False, flags: int = 0) -> int:
        """An O_PATH fd of ``path`` inside the request's mount root."""
        if nofollow:
            flags |= os.O_NOFOLLOW
        return self._open_in(req, path, _O_PATH | flags, 0, not nofollow)

    def _parent(
        self, req: p.Request, path: bytes, dot_err: int, root_err: int, dotdot_err: int = 0
    ) -> tuple[int, bytes]:
        """(O_PATH fd of the parent directory, last component) for an *at call.
        In mount 0 the parent is walked through symlinks and ``..``, and a
        parent in a kernel mount, or a name that is a mount point, is
        KERNEL_SERVED (the kernel's EEXIST, EINVAL... are its own to give)."""
        fd, name, _mount, _point, _where = self._parent_at(req, path, dot_err, root_err, dotdot_err)
        return fd, name

    def _parent_at(
        self,
        req: p.Request,
        path: bytes,
        dot_err: int,
        root_err: int,
        dotdot_err: int = 0,
        points: bool = False,
    ) -> tuple[int, bytes, int, bool, bytes]:
        """:meth:`_parent`, and which mount the parent is in (its root's fd),
        whether the name is a mount point (with ``points``: it is then the
        operation's to refuse, :meth:`_busy`, not the kernel's) and the
        parent's canonical path in mount 0 (b"" in another)."""
        parent, name = _split(path, dot_err, root_err, dotdot_err)
        root = self.roots[req.mount]
        flags = _O_PATH | os.O_DIRECTORY
        if req.mount:
            fd = kernel.openat2_bytes(root, parent, flags, 0, _RESOLVE)
            return fd, name, root, False, b""
        walker = self.walker
        try:
            if walker.plain(path):  # the whole path: the name may be a mount point
                try:
                    fd = kernel.openat2_bytes(root, parent, flags, 0, RESOLVE_ROOTFS)
                    return fd, name, root, False, _lexical(parent)
                except OSError as e:
                    if e.errno != errno.ELOOP:
                        raise
            fast = walker.into_served(parent) if parent[:1] == b"/" else None
            if fast is not None and not walker.names_point(parent, name):
                try:
                    fd = self._open_served(fast, flags, 0)
                    return fd, name, fast[0], False, _lexical(parent)
                except OSError as e:
                    if e.errno != errno.ELOOP:
                        raise
            where = walker.walk_parent(path, parent, name, points)
            at, rel, resolve = walker.place(where)
            fd = kernel.openat2_bytes(at, rel, flags, 0, resolve)
            return fd, name, at, points and walker.names_point(where, name), where
        except OSError as e:
            if e.errno == errno.EXDEV:
                raise kernel_served(path) from None
            raise

    def _busy(self, parent: int, name: bytes, op: int) -> None:
        """Refuse to remove or rename the mount point ``name`` of ``parent`` as
        Linux does (Linux checks in this order): EROFS or EACCES if the caller
        may not change the directory (a rename checks the other one first),
        EISDIR or ENOTDIR for the wrong kind of object (``op``: OP_UNLINK,
        OP_RMDIR or OP_RENAME), else EBUSY."""
        kernel.faccessat2(parent, b"", os.W_OK | os.X_OK, _SEARCH_WRITE)
        if op != p.OP_RENAME:
            st = os.stat(name.rstrip(b"/"), dir_fd=parent, follow_symlinks=False)
            is_dir = stat.S_ISDIR(st.st_mode)
            if op == p.OP_UNLINK and is_dir:
                raise _err(errno.EISDIR)
            if op == p.OP_RMDIR and not is_dir:
                raise _err(errno.ENOTDIR)
        raise _err(errno.EBUSY)

    # --- operations on an object ---------------------------------------------------

    def op_stat(self, req: p.Request) -> tuple[bytes, int]:
        fd = self._resolve(req, req.strings[0], _nofollow(req.args[0]))
        try:
            return p.stat_result(os.fstat(fd)), -1
        finally:
            os.close(fd)

    def op_root(self, req: p.Request) -> tuple[bytes, int]:
        """The directory ``path`` names in the request's mount becomes a root of
        its own, the way chroot(2) makes one: later requests on that mount
        number resolve in it (RESOLVE_IN_ROOT: its ``..`` and absolute symlinks
        stay inside). Replies with the number; asking again for the same
        directory gives the same one."""
        if req.mount:
            raise _err(errno.EINVAL)  # roots are directories of the container's root
        fd = self._resolve(req, req.strings[0], flags=os.O_DIRECTORY)
        try:
            st = os.fstat(fd)
            for number, root in enumerate(self.roots):
                other = os.fstat(root)
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    os.close(fd)
                    return _ROOT_REPLY.pack(number, st.st_dev, st.st_ino), -1
            if len(self.roots) >= p.MAX_ROOTS:
                raise _err(errno.EMFILE)
        except BaseException:
            os.close(fd)
            raise
        self.roots = (*self.roots, fd)
        return _ROOT_REPLY.pack(len(self.roots) - 1, st.st_dev, st.st_ino), -1

    def op_walk(self, req: p.Request) -> tuple[bytes, int]:
        fd = self._resolve(req, req.strings[0], _nofollow(req.args[0]))
        try:
            return p.stat_result(os.fstat(fd)), fd
        except BaseException:
            os.close(fd)
            raise

    def op_open(self, req: p.Request) -> tuple[bytes, int]:
        flags, mode = req.args
        if flags & ~p.OPEN_FLAGS or mode & ~0o7777:
            raise _err(errno.EINVAL)
        path = req.strings[0]
        # the kernel's rules for the last component: O_CREAT|O_EXCL never follows
        follow = not (flags & os.O_NOFOLLOW or (flags & os.O_CREAT and flags & os.O_EXCL))
        if flags & os.O_PATH:
            # O_PATH takes no other flags but these (openat2 refuses the rest); the fd
            # grants nothing but naming the object, and the gofer never reopens it.
            fd = self._open_in(req, path, flags | os.O_CLOEXEC, 0, follow)
            return b"", fd
        if not (flags & os.O_CREAT or flags & _O_TMPFILE == _O_TMPFILE):
            mode = 0
        fd = self._open_in(req, path, flags | _OPEN_EXTRA, mode, follow)
        return b"", _as_asked(fd, flags)

    def op_openat2(self, req: p.Request) -> tuple[bytes, int]:
        """openat2 of a path in a directory, scoped to it as the caller asked:
        RESOLVE_BENEATH or RESOLVE_IN_ROOT must be among the flags, so the
        kernel keeps the lookup inside that directory (here: inside the
        gofer's view of it, which is the container's when no mount lies below
        it; the sentry sends no other). RESOLVE_NO_MAGICLINKS is added: this
        process's /proc is not the caller's. No O_PATH (the sentry never
        asks: such an fd writes nothing)."""
        flags, mode, resolve = req.args
        directory, path = req.strings
        scoped = kernel.RESOLVE_BENEATH | kernel.RESOLVE_IN_ROOT
        if flags & ~p.OPEN_FLAGS or flags & os.O_PATH or mode & ~0o7777 or not resolve & scoped:
            raise _err(errno.EINVAL)
        if not (flags & os.O_CREAT or flags & _O_TMPFILE == _O_TMPFILE):
            mode = 0
        dirfd = self._resolve(req, directory, flags=os.O_DIRECTORY)
        try:
            fd = kernel.openat2_bytes(
                dirfd, path, flags | _OPEN_EXTRA, mode, resolve | kernel.RESOLVE_NO_MAGICLINKS
            )
        finally:
            os.close(dirfd)
        return b"", _as_asked(fd, flags)

    def op_chmod(self, req: p.Request) -> tuple[bytes, int]:
        mode, at = req.args
        fd = self._resolve(req, req.strings[0], _nofollow(at))
        try:
            # On a symlink (nofollow) the kernel answers EOPNOTSUPP, as fchmodat2 does.
            os.chmod(_proc_fd(fd), mode & 0o7777)
        finally:
            os.close(fd)
        return b"", -1

    def op_access(self, req: p.Request) -> tuple[bytes, int]:
        mode, at = req.args
        if mode & ~7:
            raise _err(errno.EINVAL)
        fd = self._resolve(req, req.strings[0], _nofollow(at))
        try:
            # AT_EACCESS: the request's ids (the sentry chose real or effective ones)
            # (AT_SYMLINK_NOFOLLOW changes nothing on an fd: it was resolved so)
            kernel.faccessat2(fd, b"", mode, kernel.AT_EACCESS | kernel.AT_EMPTY_PATH | at)
        finally:
            os.close(fd)
        return b"", -1

    def op_chown(self, req: p.Request) -> tuple[bytes, int]:
        uid, gid, at = req.args
        fd = self._resolve(req, req.strings[0], _nofollow(at))
        try:
            os.chown(
                _proc_fd(fd), -1 if uid == _UNCHANGED else uid, -1 if gid == _UNCHANGED else gid
            )
        finally:
            os.close(fd)
        return b"", -1

    def op_utimens(self, req: p.Request) -> tuple[bytes, int]:
        a_s, a_ns, m_s, m_ns, at = req.args
        for ns in (a_ns, m_ns):
            if not (0 <= ns <= _NSEC_MAX or ns in (kernel.UTIME_NOW, kernel.UTIME_OMIT)):
                raise _err(errno.EINVAL)
        fd = self._resolve(req, req.strings[0], _nofollow(at))
        try:
            kernel.utimensat(kernel.AT_FDCWD, _proc_fd(fd), (a_s, a_ns, m_s, m_ns), 0)
        finally:
            os.close(fd)
        return b"", -1

    def op_truncate(self, req: p.Request) -> tuple[bytes, int]:
        (length,) = req.args
        if length < 0:
            raise _err(errno.EINVAL)
        fd = self._resolve(req, req.strings[0])
        try:
            # truncate(2) by path: write permission is checked for the caller, and
            # nothing is opened (no FIFO or device side effect).
            os.truncate(_proc_fd(fd), length)
        finally:
            os.close(fd)
        return b"", -1

    def op_statfs(self, req: p.Request) -> tuple[bytes, int]:
        fd = self._resolve(req, req.strings[0])
        try:
            fields = kernel.fstatfs(fd)
        finally:
            os.close(fd)
        return p.STATFS.pack(*fields[:12]), -1

    def op_getxattr(self, req: p.Request) -> tuple[bytes, int]:
        path, name = req.strings
        fd = self._resolve(req, path, _nofollow(req.args[0]))
        try:
            return os.getxattr(_proc_fd(fd), name), -1
        finally:
            os.close(fd)

    def op_setxattr(self, req: p.Request) -> tuple[bytes, int]:
        xflags, at = req.args
        path, name, value = req.strings
        fd = self._resolve(req, path, _nofollow(at))
        try:
            os.setxattr(_proc_fd(fd), name, value, xflags)
        finally:
            os.close(fd)
        return b"", -1

    def op_listxattr(self, req: p.Request) -> tuple[bytes, int]:
        fd = self._resolve(req, req.strings[0], _nofollow(req.args[0]))
        try:
            names = os.listxattr(_proc_fd(fd))
        finally:
            os.close(fd)
        return b"".join(os.fsencode(n) + b"\0" for n in names), -1

    def op_removexattr(self, req: p.Request) -> tuple[bytes, int]:
        path, name = req.strings
        fd = self._resolve(req, path, _nofollow(req.args[0]))
        try:
            os.removexattr(_proc_fd(fd), name)
        finally:
            os.close(fd)
        return b"", -1

    def op_connect(self, req: p.Request) -> tuple[bytes, int]:
        (kind,) = req.args
        _check_socket_type(kind)
        fd = self._resolve(req, req.strings[0])
        try:
            # Non-blocking: a listener with a full backlog must not stall the gofer
            # (the caller gets EAGAIN); the caller's blocking mode is restored below.
            sock = _socket.socket(_socket.AF_UNIX, kind | _SOCK_FLAGS)
            try:
                with _EffectiveIds(self.creds, req.cred):
                    sock.connect(_proc_fd(fd))
                if not kind & _socket.SOCK_NONBLOCK:
                    sock.setblocking(True)
            except BaseException:
                sock.close()
                raise
        finally:
            os.close(fd)
        return b"", sock.detach()

    # --- operations on a name --------------------------------------------------------

    def op_mkdir(self, req: p.Request) -> tuple[bytes, int]:
        parent, name = self._parent(req, req.strings[0], errno.EEXIST, errno.EEXIST)
        try:
            os.mkdir(name, req.args[0] & 0o7777, dir_fd=parent)
        finally:
            os.close(parent)
        return b"", -1

    def op_mknod(self, req: p.Request) -> tuple[bytes, int]:
        mode, dev = req.args
        kind = stat.S_IFMT(mode)
        if kind not in (0, stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise _err(errno.EINVAL)
        # Device nodes need the caller's CAP_MKNOD, which the kernel checks. They
        # are made, as under runc, but never opened here: the gofer's mount is
        # nodev, so an open of one goes to the kernel, in the container's cgroup,
        # whose device rules decide (syscalls/files.py).
        if kind not in (stat.S_IFCHR, stat.S_IFBLK):
            dev = 0
        parent, name = self._parent(req, req.strings[0], errno.EEXIST, errno.EEXIST)
        try:
            os.mknod(name, kind | (mode & 0o7777), dev, dir_fd=parent)
        finally:
            os.close(parent)
        return b"", -1

    def op_unlink(self, req: p.Request) -> tuple[bytes, int]:
        parent, name, _mount, point, _where = self._parent_at(
            req, req.strings[0], errno.EISDIR, errno.EISDIR, points=True
        )
        try:
            if point:
                self._busy(parent, name, p.OP_UNLINK)
            os.unlink(name, dir_fd=parent)
        finally:
            os.close(parent)
        return b"", -1

    def op_rmdir(self, req: p.Request) -> tuple[bytes, int]:
        parent, name, _mount, point, _where = self._parent_at(
            req, req.strings[0], errno.EINVAL, errno.EBUSY, errno.ENOTEMPTY, points=True
        )
        try:
            if point:
                self._busy(parent, name, p.OP_RMDIR)
            os.rmdir(name, dir_fd=parent)
        finally:
            os.close(parent)
        return b"", -1

    def op_rename(self, req: p.Request) -> tuple[bytes, int]:
        old, new = req.strings
        flags = req.args[0]
        old_parent, old_name, old_mount, old_point, old_where = self._parent_at(
            req, old, errno.EBUSY, errno.EBUSY, points=True
        )
        try:
            new_parent, new_name, new_mount, new_point, new_where = self._parent_at(
                req, new, errno.EBUSY, errno.EBUSY, points=True
            )
            try:
                # A directory with a mount point below it stays where it is: the
                # sentry and the gofer know the container's mounts by their
                # paths (Linux would move the mounts with it).
                holds = self.walker.holds_point
                if (
                    old_point
                    or new_point
                    or holds(old_where, old_name)
                    or (flags & kernel.RENAME_EXCHANGE and holds(new_where, new_name))
                ):
                    if old_mount != new_mount:
                        raise _err(errno.EXDEV)  # Linux looks at the mounts first
                    kernel.faccessat2(new_parent, b"", os.W_OK | os.X_OK, _SEARCH_WRITE)
                    self._busy(old_parent, old_name, p.OP_RENAME)
                kernel.renameat2(old_parent, old_name, new_parent, new_name, flags)
            finally:
                os.close(new_parent)
        finally:
            os.close(old_parent)
        return b"", -1

    def op_link(self, req: p.Request) -> tuple[bytes, int]:
        (flags,) = req.args
        if flags & ~kernel.AT_SYMLINK_FOLLOW:
            raise _err(errno.EINVAL)
        old, new = req.strings
        if flags or old.endswith(b"/"):
            # The old name is to be followed (AT_SYMLINK_FOLLOW, or a trailing
            # slash): resolve it in the root, then link the object its fd names.
            src = self._resolve(req, old)
            try:
                self._link(req, _proc_fd(src), None, new)
            finally:
                os.close(src)
        else:
            src_dir, src_name = self._parent(req, old, errno.EPERM, errno.EPERM)
            try:
                self._link(req, src_name, src_dir, new)
            finally:
                os.close(src_dir)
        return b"", -1

    def op_linkfd(self, req: p.Request) -> tuple[bytes, int]:
        """linkat(fd, "", ..., AT_EMPTY_PATH) of the fd sent with the request:
        an O_TMPFILE file, or one named by the caller's /proc/self/fd link.
        Linked through this process's own /proc/self/fd link, as open(2)
        shows, which asks for no capability; the kernel's may_linkat
        (protected_hardlinks) judges the caller's right to the file."""
        if self.passed_fd < 0:
            raise _err(errno.EBADF)
        self._link(req, _proc_fd(self.passed_fd), None, req.strings[0])
        return b"", -1

    def op_connectfd(self, req: p.Request) -> tuple[bytes, int]:
        """connect(2) of the AF_UNIX socket sent with the request (the workload's
        own: the same socket, so its options, its name and every descriptor of
        it stay as they were) to the socket file at the path, as the caller:
        search permission on the way and write permission on the socket file
        are the kernel's checks under the caller's fs ids, and the peer's
        SO_PEERCRED shows the caller's uid and gid.

        It never blocks the gofer's only thread: a blocking socket is made
        non-blocking for the call (the flag is the open file's, shared with the
        caller, which is stopped in connect meanwhile) and gets EAGAIN where
        Linux would wait for room in the listener's backlog; the sentry then
        leaves the wait to the kernel (syscalls/sockets.py)."""
        fd = self.passed_fd
        if fd < 0:
            raise _err(errno.EBADF)
        target = self._resolve(req, req.strings[0])
        blocking = os.get_blocking(fd)
        try:
            if blocking:
                os.set_blocking(fd, False)
            with _EffectiveIds(self.creds, req.cred):
                # an fd that is no AF_UNIX socket gets the kernel's own errno
                kernel.connect_unix(fd, _proc_fd(target))
        finally:
            if blocking:
                os.set_blocking(fd, True)
            os.close(target)
        return b"", -1

    def _link(self, req: p.Request, src: bytes, src_dir: int | None, new: bytes) -> None:
        """linkat(src_dir, src, parent of new, last component of new); with no
        src_dir, src is a /proc/self/fd link, followed to the object it names."""
        new_parent, new_name = self._parent(req, new, errno.EEXIST, errno.EEXIST)
        try:
            os.link(
                src,
                new_name,
                src_dir_fd=src_dir,
                dst_dir_fd=new_parent,
                follow_symlinks=src_dir is None,
            )
        finally:
            os.close(new_parent)

    def op_symlink(self, req: p.Request) -> tuple[bytes, int]:
        target, path = req.strings
        parent, name = self._parent(req, path, errno.EEXIST, errno.EEXIST)
        try:
            os.symlink(target, name, dir_fd=parent)
        finally:
            os.close(parent)
        return b"", -1

    def op_readlink(self, req: p.Request) -> tuple[bytes, int]:
        parent, name = self._parent(req, req.strings[0], errno.EINVAL, errno.EINVAL)
        try:
            if name.endswith(b"/"):
                # A trailing slash would make the kernel follow the link (outside
                # RESOLVE_IN_ROOT) to a directory, which is no link: EINVAL either way.
                raise _err(errno.EINVAL)
            return os.readlink(name, dir_fd=parent), -1
        finally:
            os.close(parent)

    def op_bind(self, req: p.Request) -> tuple[bytes, int]:
        kind, umask = req.args
        _check_socket_type(kind)
        parent, name = self._parent(req, req.strings[0], errno.EADDRINUSE, errno.EADDRINUSE)
        try:
            if len(name) > _SUN_PATH_MAX:
                raise _err(errno.ENAMETOOLONG)
            sock = _socket.socket(_socket.AF_UNIX, kind | _socket.SOCK_CLOEXEC)
            try:
                # bind(2) takes a path, not a dirfd: bind the single last component
                # from inside the parent (single thread: the cwd is ours alone), with
                # the caller's umask, which decides the socket file's mode.
                os.fchdir(parent)
                old_umask = os.umask(umask & 0o777)
                try:
                    sock.bind(name)
                finally:
                    os.umask(old_umask)
                    os.fchdir(self._cwd)
            except BaseException:
                sock.close()
                raise
        finally:
            os.close(parent)
        return b"", sock.detach()


def _lexical(parent: bytes) -> bytes:
    """The canonical path of a parent that took a fast path (no ``..``, no
    symlink: its components as they are), absolute from mount 0's root."""
    return b"/" + b"/".join(c for c in parent.split(b"/") if c and c != b".")


def _as_asked(fd: int, flags: int) -> int:
    """``fd``, opened with :data:`_OPEN_EXTRA`, with O_NONBLOCK cleared again
    unless the caller asked for it (the other status flags as asked)."""
    if not flags & os.O_NONBLOCK:
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags & _SETFL_KEEP)
        except BaseException:
            os.close(fd)
            raise
    return fd


def _nofollow(at: int) -> bool:
    if at & ~kernel.AT_SYMLINK_NOFOLLOW:
        raise _err(errno.EINVAL)
    return bool(at)


def _id_arg(value: int) -> int:
    """0xffffffff on the wire is chown's -1: leave the id as it is."""
    return -1 if value == _UNCHANGED else value


def _check_socket_type(kind: int) -> None:
    if kind & ~_SOCK_FLAGS not in _SOCK_TYPES:
        raise _err(errno.EINVAL)


def _first_fd(ancdata: list[tuple[int, int, bytes]]) -> int:
    """The first fd of SCM_RIGHTS in ``ancdata`` (-1: none); any other is closed."""
    first = -1
    for level, kind, data in ancdata:
        if level != _socket.SOL_SOCKET or kind != _socket.SCM_RIGHTS:
            continue
        for (fd,) in _I32.iter_unpack(data[: len(data) - len(data) % _I32.size]):
            if first < 0:
                first = fd
            else:
                os.close(fd)
    return first
