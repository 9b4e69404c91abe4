"""bind(2) and connect(2) of AF_UNIX sockets on paths of the container's root,
through the gofer.

bind
----

The kernel's view of the container's root is read-only (syscalls/files.py),
so the kernel cannot create a socket file there: bind would fail with EROFS.
The gofer can (gofer/server.py ``op_bind``), but it binds a socket of its
own: it makes a *new* AF_UNIX socket of the caller's type and binds its
last path component from inside the parent directory, as the caller (its
credentials and umask). The sentry then puts that socket where the caller's
was:

1. the sockaddr is read once (``addrlen`` bytes, as the kernel copies it);
   what is not a path in the root is the kernel's to answer (CONTINUE,
   nothing of the root is written by it): ``addrlen`` of at most
   sizeof(sa_family_t) (autobind, or EINVAL) or above sizeof(struct
   sockaddr_un) (EINVAL for an AF_UNIX socket; another family's business
   otherwise), a sockaddr that cannot be read (the kernel's EBADF and
   ENOTSOCK come before its EFAULT), a family other than AF_UNIX, an
   abstract name (``sun_path[0] == 0``), an fd that is not an AF_UNIX
   socket (ENOTSOCK, or the other family's own bind), a socket that is
   already connected (below), and a path that leads into a mount the kernel
   serves (/dev/shm, a tmpfs /tmp: ``KernelPath``);
2. the caller's socket is copied with pidfd_getfd (the pidfd is opened
   and the notification checked before: the fd table is the caller's);
   EBADF for an fd it does not have;
3. the path is made absolute by :meth:`FileHandlers.absolute` from the copy
   (the caller's cwd for a relative one), the caller's credentials and
   umask are read and the notification checked (rule 1) before anything is
   made;
4. the gofer binds a new socket of the same type (SO_TYPE) at the path,
   with the mode Linux gives: the socket inode's mode (0777 unless the
   caller fchmod'ed the socket) less the umask. Its errors are the
   kernel's own (EADDRINUSE for an existing name, EACCES, ENOENT, ENOTDIR,
   ELOOP, ...);
5. the file status flags (O_NONBLOCK) and the socket options that can be
   read back (:data:`_INT_OPTIONS`, the buffer sizes, the timeouts) are
   copied onto the new socket, which is then installed at the caller's fd
   number with NOTIF_ADDFD and ADDFD_FLAG_SETFD (dup2-like: the old socket
   at that number is closed), with the close-on-exec flag that fd had
   (/proc/TID/fdinfo), and the call answers 0. If the caller is gone or
   was interrupted before the install, the socket file is unlinked again,
   so a restarted bind does not find it (EADDRINUSE).

A socket that is already bound gets EINVAL, in Linux's order: the file is
created first (its errors win: EADDRINUSE for an existing one), then
removed, then EINVAL.

What differs from Linux
-----------------------
* The kernel records, as the socket's address, the name the gofer passed to
  bind(2): the *last component* of the path (``{AF_UNIX, "s1"}``, addrlen
  2 + 2 + 1, for a bind of "/tmp/s1"), where Linux keeps the sun_path as
  the caller passed it; the gofer cannot bind that string without
  resolving it itself, outside its confined walk. getsockname() is the
  sentry's, and answers the address the caller bound, as Linux does (the
  sentry keeps it per socket inode, for the last 4,096 sockets bound so):
  a server that advertises getsockname()'s address (Python's
  multiprocessing Listener; CPython's test_socket hung on it) is found.
  getpeername() of a peer connected to it and the source address a
  datagram from it carries (recvfrom, recvmsg's msg_name) still say the
  last component: programs that answer a datagram at the address it came
  from resolve that name relative to *their* cwd and miss, unless the two
  share the directory. A relative path of one component ("s2" in the cwd)
  reads the same as on Linux everywhere.
* The bound socket is a different socket from the one the caller made:
  other descriptors of the original (dup, fork, SCM_RIGHTS) stay unbound,
  an epoll set that watched the fd keeps watching the old socket, and
  what is not a readable socket option is not carried: O_ASYNC and
  F_SETOWN, socket filters (SO_ATTACH_FILTER/BPF), SO_MARK, an SO_SNDBUF
  or SO_RCVBUF forced above the sysctl maximum, a protocol number of 1
  (PF_UNIX) rather than 0 (SO_PROTOCOL).
* The socket was made in the gofer's network namespace (its own, empty:
  gofer/process.py), not the container's: the container's /proc/net/unix
  (ss -x, netstat -x) does not list it; listen()'s backlog is capped by
  that namespace's net.core.somaxconn and datagram queues by its
  net.unix.max_dgram_qlen (the defaults, not a value the container's
  sysctls set); a connect() or sendto() *from* it to an abstract name
  looks in that empty namespace (ECONNREFUSED) instead of the container's.
  Connections to it by path work as on Linux (a path's socket is found by
  its inode, in any namespace). Its kernel memory is charged to the gofer,
  and an LSM labels it as the gofer's.
* A socket that is already connected (a socketpair, or a datagram socket
  connect()ed before its bind) is left to the kernel: EROFS in the root,
  where Linux binds it.
* A signal that interrupts the caller after the install and before the
  answer (the two ioctls, microseconds apart) leaves the socket bound while
  bind reports EINTR, or, restarted (SA_RESTART), EADDRINUSE: the file is
  there.
* A relative path of exactly 108 bytes and no slash (no NUL left in
  sun_path) is ENAMETOOLONG from the gofer; Linux binds it.

connect
-------
The path of a socket file in the root is resolved by the gofer, never by
the kernel on the workload's behalf, as every other path of the root is:

1. the sockaddr is read and judged as for bind (1 above): what names no
   path of the root (another family, an abstract name, an unnamed address,
   AF_UNSPEC's dissolve, a path into a mount the kernel serves, a socket
   that is not AF_UNIX) is the kernel's (CONTINUE);
2. the caller's socket is copied with pidfd_getfd, the path made absolute,
   the caller's credentials read and the notification checked;
3. the gofer connects *that* socket, sent to it by SCM_RIGHTS
   (gofer/server.py ``op_connectfd``): the same socket, so its name, its
   options, its other descriptors and the epoll sets watching it are all
   as they were. Search permission on the way and write permission on the
   socket file are the kernel's checks, under the caller's fs ids and
   capabilities; the errors are the kernel's (ENOENT, ECONNREFUSED for a
   file with no listener, EACCES, EPROTOTYPE for another socket type,
   EISCONN, ...).

What differs from Linux:

* The listener's SO_PEERCRED (and SO_PEERPIDFD) names the gofer as the
  connecting process: the caller's uid and gid, as Linux gives, but a pid
  the container cannot see (0 in its pid namespace). Messages carry the
  sender's own credentials (SCM_CREDENTIALS) as on Linux.
* A blocking connect to a listener whose backlog is full waits in the
  kernel: the gofer's attempt is non-blocking (its one thread must never
  wait), and on EAGAIN the sentry lets the kernel make the call, which
  resolves the path again in its read-only view of the same root. A
  non-blocking socket gets EAGAIN, as on Linux.
* On a kernel without SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV (before 5.19;
  kernel.seccomp_load_listener), a signal that interrupts the caller while
  the gofer connects leaves the socket connected; the caller sees EINTR,
  and EISCONN if it restarts. With it, the signal waits for the answer.

Rule 1 (DESIGN.md): every decision is made on the one copy of the sockaddr;
the CONTINUEs above are the documented kind, as execve's and chdir's:
whatever a racing thread makes the sockaddr say afterwards, the kernel can
at most try to create the socket file in its read-only view of the root
(EROFS), or in a mount the caller may write anyway (bind), or resolve the
path in its read-only view of the same root (connect: a socket file's write
permission does not depend on the mount being writable).
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import os

from pysandbox.gofer.client import KernelPath
from pysandbox.oci import kernel as k
from pysandbox.sentry.loop import CONTINUE, Call, Errno, Handler, NotificationGone, Result

from .args import s32
from .files import FileHandlers, fd_cloexec

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

    from pysandbox.gofer.client import GoferClient
    from pysandbox.gofer.protocol import Credentials

__all__ = ["UnixSocketHandlers"]

_AF_UNIX: Final = _socket.AF_UNIX
_SOL_SOCKET: Final = _socket.SOL_SOCKET
_SUN_PATH: Final = 2  # offsetof(struct sockaddr_un, sun_path) == sizeof(sa_family_t)
_SOCKADDR_UN: Final = 110  # sizeof(struct sockaddr_un)
_TIMEVAL: Final = 16  # struct timeval (SO_RCVTIMEO_OLD, SO_SNDTIMEO_OLD)
_MAX_BOUND: Final = 4096  # addresses of gofer-bound sockets the sentry keeps

# Socket options (SOL_SOCKET, int) that mean something on an AF_UNIX socket
# and read back as they were set: copied when the original's differs from the
# new socket's. One a kernel lacks (ENOPROTOOPT) or the sentry may not set
# (SO_PRIORITY above 6 needs CAP_NET_ADMIN) is skipped.
_INT_OPTIONS: Final = (
    _socket.SO_REUSEADDR,
    _socket.SO_PASSCRED,
    _socket.SO_PASSSEC,
    k.SO_PASSPIDFD,
    k.SO_PASSRIGHTS,
    _socket.SO_OOBINLINE,
    _socket.SO_RCVLOWAT,
    k.SO_PEEK_OFF,
    _socket.SO_PRIORITY,
    k.SO_TIMESTAMP_OLD,
    k.SO_TIMESTAMPNS_OLD,
    k.SO_TIMESTAMP_NEW,
    k.SO_TIMESTAMPNS_NEW,
)
# getsockopt reports twice what setsockopt was given (the kernel's overhead).
_BUFFER_OPTIONS: Final = (_socket.SO_SNDBUF, _socket.SO_RCVBUF)
_TIMEVAL_OPTIONS: Final = (_socket.SO_RCVTIMEO, _socket.SO_SNDTIMEO)


class UnixSocketHandlers:
    """bind(2) and connect(2) of AF_UNIX sockets on paths of the root, through
    ``files``' gofer."""

    def __init__(self, files: FileHandlers) -> None:
        self.files = files
        # (st_dev, st_ino) of each socket bound through the gofer -> the address
        # Linux would have recorded (getsockname); the oldest are forgotten
        self.bound: dict[tuple[int, int], bytes] = {}

    def routes(self) -> dict[int, Handler]:
        return {
            k.SYS_BIND: self.bind,
            k.SYS_CONNECT: self.connect,
            k.SYS_GETSOCKNAME: self.getsockname,
        }

    def getsockname(self, call: Call) -> Result:
        """getsockname(fd, addr, addrlen) of a socket bound through the gofer: the
        address the caller bound, as Linux records it (the family, sun_path up to
        its first NUL, a NUL), where the gofer's socket says only the last
        component. Linux copies min(*addrlen, the address's length) bytes and
        stores the address's length in *addrlen (EINVAL if negative, EFAULT).
        Any other socket, and every socket while none was bound so, is the
        kernel's: nothing is read."""
        if not self.bound:
            return CONTINUE
        fd, addr, len_addr = s32(call.args[0]), call.args[1], call.args[2]
        if fd < 0:
            return CONTINUE
        try:
            ours = self.files.caller_fd(call, fd)
        except OSError:
            return CONTINUE  # EBADF: the kernel's answer
        try:
            st = os.fstat(ours)
        finally:
            os.close(ours)
        name = self.bound.get((st.st_dev, st.st_ino))
        if name is None:
            return CONTINUE
        room = int.from_bytes(call.read(len_addr, 4), "little", signed=True)
        if room < 0:
            return _EINVAL
        if call.tracing:
            call.detail = f"{fd}, {{AF_UNIX, {repr(name[_SUN_PATH:-1])[1:]}}}"
        call.write(addr, name[:room])
        call.write(len_addr, len(name).to_bytes(4, "little"))
        return 0

    def bind(self, call: Call) -> Result:
        target = self._target(call)
        if target is None:
            return CONTINUE
        gofer, sock, fd, path = target
        try:
            return self._bind(call, gofer, sock, fd, path)
        finally:
            sock.close()

    def connect(self, call: Call) -> Result:
        """connect(2) to a socket file of the root: the gofer connects the
        caller's own socket (see the module's docstring)."""
        target = self._target(call)
        if target is None:
            return CONTINUE
        gofer, sock, _fd, path = target
        try:
            try:
                where = self.files.absolute(call, k.AT_FDCWD, path)
            except KernelPath:
                return CONTINUE  # a mount the kernel serves: its socket files are its own
            blocking = os.get_blocking(sock.fileno())
            cred = self.files.caller_cred(call)  # NOTIF_ID_VALID (rule 1)
            try:
                gofer.connect_fd(sock.fileno(), where, cred=cred)
            except KernelPath:
                return CONTINUE  # led into a kernel mount through a symlink
            except BlockingIOError:
                if blocking:
                    return CONTINUE  # the listener's backlog is full: the kernel waits
                raise  # EAGAIN, as Linux answers a non-blocking socket
        finally:
            sock.close()
        return 0

    def _target(self, call: Call) -> tuple[GoferClient, _socket.socket, int, bytes] | None:
        """(gofer, our copy of the caller's socket, its fd number, the path) for
        a bind or connect that names a path; None when the call is the kernel's
        to answer (nothing of the root is resolved by it: the module's
        docstring, 1). OSError EBADF when the caller has no such fd."""
        gofer = self.files.gofer_client
        if gofer is None:
            return None  # no gofer: nothing is read, nothing decided
        fd, addr, addrlen = s32(call.args[0]), call.args[1], s32(call.args[2])
        if fd < 0 or not _SUN_PATH < addrlen <= _SOCKADDR_UN:
            return None  # EBADF, autobind or AF_UNSPEC, EINVAL, another family
        try:
            raw = call.read(addr, addrlen)
        except OSError:
            return None  # EFAULT, but the kernel's EBADF/ENOTSOCK come first
        if int.from_bytes(raw[:_SUN_PATH], "little") != _AF_UNIX or raw[_SUN_PATH] == 0:
            return None  # another family, or an abstract name
        path = raw[_SUN_PATH:].split(b"\0", 1)[0]  # as the kernel's unix_mkname_bsd
        if call.tracing:
            call.detail = f"{fd}, {{AF_UNIX, {repr(path)[1:]}}}, {addrlen}"
        sock = self._caller_socket(call, fd)
        if sock is None:
            return None  # ENOTSOCK, or not AF_UNIX: the kernel's to answer
        return gofer, sock, fd, path

    def _bind(
        self, call: Call, gofer: GoferClient, sock: _socket.socket, fd: int, path: bytes
    ) -> Result:
        try:
            sock.getpeername()
        except OSError:
            pass
        else:
            return CONTINUE  # connected: see the module's docstring
        try:
            where = self.files.absolute(call, k.AT_FDCWD, path)
        except KernelPath:
            return CONTINUE  # a mount the kernel serves: it creates the file there
        cred, umask = self.files.caller_and_umask(call)  # NOTIF_ID_VALID (rule 1)
        # Linux creates the file with the socket inode's mode (an fchmod before
        # bind changes it) less the umask; the gofer takes a umask.
        umask |= 0o777 & ~os.fstat(sock.fileno()).st_mode
        try:
            new = gofer.bind(where, sock.type, umask, cred=cred)
        except KernelPath:
            return CONTINUE  # the parent is in a kernel mount (through a symlink)
        try:
            if sock.getsockname():
                # Already bound: Linux makes the file, finds that the socket
                # has a name, removes the file again and says EINVAL.
                _remove(gofer, where, cred)
                return _EINVAL
            self._install(call, sock, new, fd)
            self._remember(new, path)
        except BaseException as e:
            _remove(gofer, where, cred)  # a restarted bind must not find it
            if isinstance(e, _Gone):
                raise NotificationGone() from None  # gone, or interrupted: no answer
            raise
        finally:
            os.close(new)
        return 0

    def _remember(self, sock: int, path: bytes) -> None:
        """Keep the address Linux would have given the socket ``sock``: its
        family, the path as the caller passed it, a NUL (unix_mkname_bsd)."""
        st = os.fstat(sock)
        if len(self.bound) >= _MAX_BOUND:
            del self.bound[next(iter(self.bound))]
        self.bound[(st.st_dev, st.st_ino)] = _AF_UNIX.to_bytes(2, "little") + path + b"\0"

    def _caller_socket(self, call: Call, fd: int) -> _socket.socket | None:
        """Our copy of the caller's ``fd`` as a socket; None when it is no AF_UNIX
        socket. OSError EBADF when the caller has no such fd."""
        ours = self.files.caller_fd(call, fd)
        try:
            sock = _socket.socket(fileno=ours)  # getsockname, SO_TYPE: ENOTSOCK
        except OSError:
            os.close(ours)
            return None
        if sock.family != _AF_UNIX:
            sock.close()
            return None
        return sock

    @staticmethod
    def _install(call: Call, old: _socket.socket, new: int, fd: int) -> None:
        """Give ``new`` the caller's file status flags, socket options and
        close-on-exec flag, and put it at ``fd`` in the caller (ADDFD_FLAG_SETFD,
        which closes what was there); _Gone if the caller no longer waits."""
        os.set_blocking(new, os.get_blocking(old.fileno()))
        _copy_options(old, new)
        cloexec = fd_cloexec(call.pid, fd)
        try:
            call.listener.addfd(call.id, new, cloexec, newfd=fd)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ESRCH):
                raise _Gone() from None  # gone, or interrupted by a signal
            raise


class _Gone(Exception):
    """The install found the caller gone (ENOENT) or interrupted (ESRCH)."""


_EINVAL: Final = Errno(errno.EINVAL)


def _remove(gofer: GoferClient, path: bytes, cred: Credentials) -> None:
    """Unlink the socket file the gofer made for a bind that did not happen."""
    with contextlib.suppress(OSError, KernelPath):
        gofer.unlink(path, cred=cred)


def _copy_options(old: _socket.socket, new: int) -> None:
    """The socket options of :data:`_INT_OPTIONS`, the buffer sizes and the
    timeouts, where ``old``'s differ from ``new``'s (best effort)."""
    sock = _socket.socket(fileno=new)
    try:
        get, put = sock.getsockopt, sock.setsockopt
        for opt in _INT_OPTIONS:
            try:
                value = old.getsockopt(_SOL_SOCKET, opt)
                if value != get(_SOL_SOCKET, opt):
                    put(_SOL_SOCKET, opt, value)
            except OSError:
                continue  # not on this kernel (ENOPROTOOPT), or not the sentry's to set
        for opt in _BUFFER_OPTIONS:
            with contextlib.suppress(OSError):
                value = old.getsockopt(_SOL_SOCKET, opt)
                if value != get(_SOL_SOCKET, opt):
                    put(_SOL_SOCKET, opt, value // 2)  # capped at the sysctl maximum
        for opt in _TIMEVAL_OPTIONS:
            with contextlib.suppress(OSError):
                raw = old.getsockopt(_SOL_SOCKET, opt, _TIMEVAL)
                if raw != get(_SOL_SOCKET, opt, _TIMEVAL):
                    put(_SOL_SOCKET, opt, raw)
    finally:
        sock.detach()
