"""The wire format between the sentry (client) and the gofer (server).

Transport
=========

An AF_UNIX ``SOCK_SEQPACKET`` socketpair. One datagram carries exactly one
request or one reply, so there is no framing to get wrong and a short read is
impossible (a datagram larger than the reader's buffer is a protocol error,
seen as MSG_TRUNC). The client sends a request and waits for its reply; the
gofer serves one request at a time, in order. An fd travels as SCM_RIGHTS
ancillary data of the reply that returns it (at most one per reply; the reply
header says so). Requests carry no fds.

Everything is packed with :mod:`struct`, little-endian, no padding. Paths,
names and values are raw bytes (the kernel's view: any byte but NUL in a path).

Request
=======

::

    offset  size  field
    0       1     op            OP_* below
    1       1     flags         reserved, must be 0
    2       2     mount         0 = the container's root; 1.. = the extra mount sources,
                                in the order the gofer was started with
    4       4     request id    echoed in the reply
    8       4     uid           the caller's host uid: the gofer's fsuid for the request
    12      4     gid           the caller's host gid: fsgid
    16      8     caps          the caller's effective capability mask (bit N = cap N)
    24      2     ngroups       number of supplementary groups, at most MAX_GROUPS
    26      4*n   groups        u32 each
    ...           fixed fields  the op's integers (table below)
    ...           strings       the op's strings, each a u32 length then the bytes

The credentials (offsets 8 to the end of the groups) are one opaque block to
the gofer until they differ from the last request's: it compares bytes.

Reply
=====

::

    0       1     op            the request's (0 when it could not be read)
    1       1     flags         REPLY_FD: one fd is attached (SCM_RIGHTS)
    2       2     reserved      0
    4       4     request id    the request's (0 when it could not be read)
    8       4     errno         i32; 0 = success, KERNEL_SERVED (0x10000), else the
                                kernel's errno for the caller
    12      ...   results       only on success: the op's result (table below)

``KERNEL_SERVED`` (0x10000, a value no Linux errno takes): the path leads
into a mount the gofer does not serve (one of the container's mount points
it was started with, or any mount but the root's file system), so the
kernel must answer the call; the client raises ``KernelPath``, never an
OSError. Only mount 0 answers it.

Operations
==========

Paths are resolved by the gofer inside the mount's root (openat2
RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS): absolute or relative (relative to
the root), ``..`` and symlinks never leave it. In mount 0 the gofer follows
symlinks and ``..`` itself, as the kernel's path walk does, to find a path
that leads into a kernel mount (KERNEL_SERVED; gofer/walk.py). ``flags``
fields named ``at`` take AT_SYMLINK_NOFOLLOW (0x100) unless noted: do not
follow a symlink in the last component. OPEN follows it unless O_NOFOLLOW or
O_CREAT | O_EXCL; the ops on a name (MKDIR to READLINK, BIND) never do.

============  ==========================  =====================  ==================
op            fixed fields                strings                result
============  ==========================  =====================  ==================
STAT          at u32                      path                   stat
WALK          at u32                      path                   stat + O_PATH fd
OPEN          open flags u32, mode u32    path                   fd
MKDIR         mode u32                    path
MKNOD         mode u32, dev u64           path                   (fifo, socket, file, dev)
UNLINK                                    path
RMDIR                                     path
RENAME        renameat2 flags u32         old, new
LINK          at u32 (AT_SYMLINK_FOLLOW)  old, new
SYMLINK                                   target, path
READLINK                                  path                   the target (bytes)
CHMOD         mode u32, at u32            path
CHOWN         uid u32, gid u32, at u32    path                   (0xffffffff: unchanged)
UTIMENS       atime s i64, ns i64,        path                   (ns may be UTIME_NOW
              mtime s i64, ns i64, at u32                         or UTIME_OMIT)
TRUNCATE      length i64                  path
STATFS                                    path                   statfs
GETXATTR      at u32                      path, name             the value (bytes)
SETXATTR      xattr flags u32, at u32     path, name, value
LISTXATTR     at u32                      path                   names, each NUL-ended
REMOVEXATTR   at u32                      path, name
BIND          socket type u32, umask u32  path                   bound AF_UNIX socket fd
CONNECT       socket type u32             path                   connected socket fd
OPENAT2       open flags u32, mode u32,   dir, path              fd (openat2 of path in the
              resolve u32                                        directory dir names, with
                                                                 RESOLVE_BENEATH or _IN_ROOT)
ACCESS        mode u32, at u32            path                   (faccessat2 AT_EACCESS: the
                                                                 request's ids are judged)
============  ==========================  =====================  ==================

``stat`` is :data:`STAT` (the kernel's struct stat fields: dev, ino, mode,
nlink, uid, gid, rdev, size, blksize, blocks, atime s/ns, mtime s/ns, ctime
s/ns); ``statfs`` is :data:`STATFS` (struct statfs without its spare words).

Limits: a path or symlink target at most PATH_MAX - 1 bytes, an xattr name at
most 255, an xattr value at most 65536 (XATTR_SIZE_MAX), MAX_GROUPS groups.
Anything the gofer cannot read as a request (short, unknown op, a length
running past the end, bytes left over, a NUL in a path, a limit exceeded)
is answered EINVAL and the gofer goes on.
"""

from __future__ import annotations

import os
import struct

from pysandbox.oci import kernel
from pysandbox.oci.records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "HEADER",
    "KERNEL_SERVED",
    "MAX_REPLY",
    "MAX_REQUEST",
    "MAX_ROOTS",
    "OPS",
    "REPLY",
    "STAT",
    "STATFS",
    "Credentials",
    "ProtocolError",
    "Request",
    "Stat",
    "StatFS",
    "decode_credentials",
    "decode_request",
    "encode_reply",
    "encode_request",
    "stat_result",
]

# --- ops -----------------------------------------------------------------------
OP_STAT: Final = 1
OP_WALK: Final = 2
OP_OPEN: Final = 3
OP_MKDIR: Final = 4
OP_MKNOD: Final = 5
OP_UNLINK: Final = 6
OP_RMDIR: Final = 7
OP_RENAME: Final = 8
OP_LINK: Final = 9
OP_SYMLINK: Final = 10
OP_READLINK: Final = 11
OP_CHMOD: Final = 12
OP_CHOWN: Final = 13
OP_UTIMENS: Final = 14
OP_TRUNCATE: Final = 15
OP_STATFS: Final = 16
OP_GETXATTR: Final = 17
OP_SETXATTR: Final = 18
OP_LISTXATTR: Final = 19
OP_REMOVEXATTR: Final = 20
OP_BIND: Final = 21
OP_CONNECT: Final = 22
OP_ACCESS: Final = 23
OP_LINKFD: Final = 24  # the file to link comes as SCM_RIGHTS beside the request
OP_ROOT: Final = 25  # a directory of mount 0 becomes a root of its own (chroot)
OP_CONNECTFD: Final = 26  # the caller's socket to connect comes as SCM_RIGHTS
OP_OPENAT2: Final = 27  # an open scoped to a directory (RESOLVE_BENEATH, RESOLVE_IN_ROOT)
MAX_ROOTS: Final = 64  # roots a gofer holds at most (the chroot()s a container makes)

# String kinds: a path (or symlink target), an xattr name, an xattr value.
PATH: Final = "p"
NAME: Final = "n"
VALUE: Final = "v"
PATH_MAX: Final = 4096  # including the NUL the kernel wants: 4095 bytes of path
XATTR_NAME_MAX: Final = 255
XATTR_SIZE_MAX: Final = 65536
MAX_GROUPS: Final = 4096  # the kernel allows 65536; a datagram must stay well under wmem
_LIMITS: Final = {PATH: PATH_MAX - 1, NAME: XATTR_NAME_MAX, VALUE: XATTR_SIZE_MAX}


class OpSpec(NamedTuple):
    name: str
    fixed: struct.Struct  # the op's integer fields
    strings: str  # one kind letter per string, in order


def _spec(name: str, fixed: str, strings: str) -> OpSpec:
    return OpSpec(name, struct.Struct("<" + fixed), strings)


OPS: Final[dict[int, OpSpec]] = {
    OP_STAT: _spec("stat", "I", PATH),
    OP_WALK: _spec("walk", "I", PATH),
    OP_OPEN: _spec("open", "II", PATH),
    OP_MKDIR: _spec("mkdir", "I", PATH),
    OP_MKNOD: _spec("mknod", "IQ", PATH),
    OP_UNLINK: _spec("unlink", "", PATH),
    OP_RMDIR: _spec("rmdir", "", PATH),
    OP_RENAME: _spec("rename", "I", PATH + PATH),
    OP_LINK: _spec("link", "I", PATH + PATH),
    OP_SYMLINK: _spec("symlink", "", PATH + PATH),
    OP_READLINK: _spec("readlink", "", PATH),
    OP_CHMOD: _spec("chmod", "II", PATH),
    OP_CHOWN: _spec("chown", "III", PATH),
    OP_UTIMENS: _spec("utimens", "qqqqI", PATH),
    OP_TRUNCATE: _spec("truncate", "q", PATH),
    OP_STATFS: _spec("statfs", "", PATH),
    OP_GETXATTR: _spec("getxattr", "I", PATH + NAME),
    OP_SETXATTR: _spec("setxattr", "II", PATH + NAME + VALUE),
    OP_LISTXATTR: _spec("listxattr", "I", PATH),
    OP_REMOVEXATTR: _spec("removexattr", "I", PATH + NAME),
    OP_BIND: _spec("bind", "II", PATH),
    OP_CONNECT: _spec("connect", "I", PATH),
    OP_ACCESS: _spec("access", "II", PATH),
    OP_LINKFD: _spec("linkfd", "", PATH),
    OP_ROOT: _spec("root", "", PATH),
    OP_CONNECTFD: _spec("connectfd", "", PATH),
    OP_OPENAT2: _spec("openat2", "III", PATH + PATH),
}

# Every flag open(2) documents, as the kernel numbers them (Python's
# os.O_LARGEFILE is 0 on 64-bit, the kernel's bit is not). The gofer refuses
# any other (openat2 does too); the sentry drops the others first, since open
# and openat ignore unknown bits.
O_TMPFILE: Final = 0o20000000 | os.O_DIRECTORY
OPEN_FLAGS: Final = (
    os.O_ACCMODE
    | os.O_CREAT
    | os.O_EXCL
    | os.O_NOCTTY
    | os.O_TRUNC
    | os.O_APPEND
    | os.O_NONBLOCK
    | os.O_DSYNC
    | os.O_SYNC
    | os.O_DIRECT
    | kernel.O_LARGEFILE
    | os.O_DIRECTORY
    | os.O_NOFOLLOW
    | os.O_NOATIME
    | os.O_CLOEXEC
    | os.O_PATH
    | O_TMPFILE
    | 0o20000  # FASYNC: accepted and ignored at open, as Linux does
)

# --- framing -------------------------------------------------------------------
HEADER: Final = struct.Struct("<BBHI")  # op, flags, mount, request id
_CRED_FIXED: Final = struct.Struct("<IIQH")  # uid, gid, caps, ngroups
REPLY: Final = struct.Struct("<BBHIi")  # op, flags, reserved, request id, errno
REPLY_FD: Final = 0x1
# The reply's errno when the path leads into a mount the gofer does not serve
# (gofer/walk.py): no errno of Linux's has this value. The client raises
# KernelPath; the sentry hands the call to the kernel.
KERNEL_SERVED: Final = 0x10000
_U32: Final = struct.Struct("<I")
_CRED_START: Final = HEADER.size
_U32_MAX: Final = 0xFFFFFFFF
_U64_MAX: Final = (1 << 64) - 1

# dev, ino, mode, nlink, uid, gid, rdev, size, blksize, blocks,
# atime s, ns, mtime s, ns, ctime s, ns
STAT: Final = struct.Struct("<QQIQIIQqqqqIqIqI")
# type, bsize, blocks, bfree, bavail, files, ffree, fsid[0], fsid[1], namelen, frsize, flags
STATFS: Final = struct.Struct("<qqQQQQQiiqqq")

MAX_REQUEST: Final = (
    HEADER.size
    + _CRED_FIXED.size
    + 4 * MAX_GROUPS
    + max(spec.fixed.size + 4 * len(spec.strings) for spec in OPS.values())
    + (PATH_MAX - 1)
    + XATTR_NAME_MAX
    + XATTR_SIZE_MAX
)
MAX_REPLY: Final = REPLY.size + max(XATTR_SIZE_MAX, STAT.size, STATFS.size, PATH_MAX)


class ProtocolError(ValueError):
    """A request the gofer cannot read; answered EINVAL with what could be read."""

    def __init__(self, message: str, op: int = 0, request_id: int = 0) -> None:
        super().__init__(message)
        self.op = op
        self.request_id = request_id


class Stat(NamedTuple):
    """The kernel's struct stat fields, as the gofer saw them."""

    dev: int
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    blksize: int
    blocks: int
    atime: int
    atime_nsec: int
    mtime: int
    mtime_nsec: int
    ctime: int
    ctime_nsec: int


class StatFS(NamedTuple):
    """struct statfs without its spare words."""

    type: int
    bsize: int
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    fsid0: int
    fsid1: int
    namelen: int
    frsize: int
    flags: int


def stat_result(st: os.stat_result) -> bytes:
    """Pack an ``os.stat_result`` as :data:`STAT`."""
    a_s, a_ns = divmod(st.st_atime_ns, 1_000_000_000)
    m_s, m_ns = divmod(st.st_mtime_ns, 1_000_000_000)
    c_s, c_ns = divmod(st.st_ctime_ns, 1_000_000_000)
    return STAT.pack(
        st.st_dev,
        st.st_ino,
        st.st_mode,
        st.st_nlink,
        st.st_uid,
        st.st_gid,
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


class Credentials:
    """Who a request is for: host uid and gid, supplementary groups, effective caps.

    Packed once, at construction: the sentry keeps one per task and every
    request reuses the bytes.
    """

    __slots__ = ("caps", "gid", "groups", "packed", "uid")

    def __init__(self, uid: int, gid: int, groups: tuple[int, ...] = (), caps: int = 0) -> None:
        groups = tuple(groups)
        if not (0 <= uid < _U32_MAX and 0 <= gid < _U32_MAX):
            raise ValueError(f"uid/gid out of range: {uid}/{gid}")
        if len(groups) > MAX_GROUPS or any(not 0 <= g < _U32_MAX for g in groups):
            raise ValueError("supplementary groups out of range")
        if not 0 <= caps <= _U64_MAX:
            raise ValueError(f"capability mask out of range: {caps:#x}")
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.caps = caps
        self.packed = _CRED_FIXED.pack(uid, gid, caps, len(groups)) + struct.pack(
            f"<{len(groups)}I", *groups
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Credentials) and other.packed == self.packed

    def __hash__(self) -> int:
        return hash(self.packed)

    def __repr__(self) -> str:
        return (
            f"Credentials(uid={self.uid}, gid={self.gid}, groups={self.groups},"
            f" caps={self.caps:#x})"
        )


def decode_credentials(packed: bytes) -> Credentials:
    """The inverse of ``Credentials.packed`` (validated by :func:`decode_request`)."""
    uid, gid, caps, n = _CRED_FIXED.unpack_from(packed)
    groups = struct.unpack_from(f"<{n}I", packed, _CRED_FIXED.size)
    return Credentials(uid, gid, groups, caps)


class Request(NamedTuple):
    op: int
    mount: int
    request_id: int
    cred: bytes  # Credentials.packed: compared as bytes, decoded only on a change
    args: tuple[int, ...]
    strings: tuple[bytes, ...]


def encode_request(
    op: int,
    request_id: int,
    cred: Credentials,
    args: tuple[int, ...] = (),
    strings: tuple[bytes, ...] = (),
    mount: int = 0,
) -> bytes:
    """One request datagram. Values are checked by :mod:`struct` (range) and the
    gofer (everything else); the client's methods build valid ones."""
    spec = OPS[op]
    parts = [HEADER.pack(op, 0, mount, request_id), cred.packed, spec.fixed.pack(*args)]
    for s in strings:
        parts.append(_U32.pack(len(s)))
        parts.append(s)
    return b"".join(parts)


def decode_request(buf: bytes | memoryview) -> Request:
    """Read one request; raises :class:`ProtocolError` for anything malformed."""
    size = len(buf)
    if size < HEADER.size:
        raise ProtocolError(f"request of {size} bytes: shorter than its header")
    op, flags, mount, rid = HEADER.unpack_from(buf)
    spec = OPS.get(op)
    if spec is None:
        raise ProtocolError(f"unknown op {op}", op, rid)
    if flags:
        raise ProtocolError(f"reserved header flags set: {flags:#x}", op, rid)
    off = _CRED_START + _CRED_FIXED.size
    if size < off:
        raise ProtocolError("truncated credentials", op, rid)
    ngroups = _CRED_FIXED.unpack_from(buf, _CRED_START)[3]
    if ngroups > MAX_GROUPS:
        raise ProtocolError(f"{ngroups} supplementary groups: more than {MAX_GROUPS}", op, rid)
    off += 4 * ngroups
    fixed = spec.fixed
    if size < off + fixed.size:
        raise ProtocolError("truncated credentials or fields", op, rid)
    cred = bytes(buf[_CRED_START:off])
    args = fixed.unpack_from(buf, off)
    off += fixed.size
    strings: list[bytes] = []
    for kind in spec.strings:
        if size < off + 4:
            raise ProtocolError("truncated string length", op, rid)
        (length,) = _U32.unpack_from(buf, off)
        off += 4
        if length > _LIMITS[kind]:
            raise ProtocolError(f"string of {length} bytes: over the limit", op, rid)
        if size < off + length:
            raise ProtocolError("string runs past the end of the request", op, rid)
        s = bytes(buf[off : off + length])
        if kind != VALUE and b"\0" in s:
            raise ProtocolError("NUL byte in a path or name", op, rid)
        strings.append(s)
        off += length
    if off != size:
        raise ProtocolError(f"{size - off} bytes left over after the request", op, rid)
    return Request(op, mount, rid, cred, args, tuple(strings))


def encode_reply(
    op: int, request_id: int, err: int = 0, payload: bytes = b"", has_fd: bool = False
) -> bytes:
    """One reply datagram (the fd, if any, goes as SCM_RIGHTS beside it)."""
    return REPLY.pack(op, REPLY_FD if has_fd else 0, 0, request_id, err) + payload
