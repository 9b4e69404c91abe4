"""The gofer's wire format (gofer/protocol.py): round trips and malformed input."""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Callable

import pytest

from pysandbox.gofer import protocol as p
from pysandbox.gofer.client import GoferClient, KernelPath

CRED = p.Credentials(1000, 1001, (5, 27, 1001), caps=(1 << 0) | (1 << 31))
ROOT = p.Credentials(0, 0)

# One valid request per op: (op, args, strings).
SAMPLES: list[tuple[int, tuple[int, ...], tuple[bytes, ...]]] = [
    (p.OP_STAT, (0x100,), (b"/etc/passwd",)),
    (p.OP_ACCESS, (2, 0x100), (b"/etc/passwd",)),
    (p.OP_WALK, (0,), (b"usr/lib",)),
    (p.OP_OPEN, (os.O_RDWR | os.O_CREAT, 0o644), (b"/tmp/x",)),
    (p.OP_MKDIR, (0o755,), (b"/d",)),
    (p.OP_MKNOD, (0o010644, 0), (b"/fifo",)),
    (p.OP_UNLINK, (), (b"/f",)),
    (p.OP_RMDIR, (), (b"/d",)),
    (p.OP_RENAME, (1,), (b"/a", b"/b")),
    (p.OP_LINK, (0x400,), (b"/a", b"/b")),
    (p.OP_SYMLINK, (), (b"../target", b"/l")),
    (p.OP_READLINK, (), (b"/l",)),
    (p.OP_CHMOD, (0o4755, 0), (b"/f",)),
    (p.OP_CHOWN, (0xFFFFFFFF, 5, 0x100), (b"/f",)),
    (p.OP_UTIMENS, (1, 2, -3, (1 << 30) - 1, 0), (b"/f",)),
    (p.OP_TRUNCATE, (1 << 40,), (b"/f",)),
    (p.OP_STATFS, (), (b"/",)),
    (p.OP_GETXATTR, (0,), (b"/f", b"user.k")),
    (p.OP_SETXATTR, (1, 0), (b"/f", b"user.k", b"\0binary\xff" * 100)),
    (p.OP_LISTXATTR, (0x100,), (b"/f",)),
    (p.OP_REMOVEXATTR, (0,), (b"/f", b"user.k")),
    (p.OP_BIND, (1, 0o022), (b"/run/s.sock",)),
    (p.OP_CONNECT, (2,), (b"/run/s.sock",)),
    (p.OP_LINKFD, (), (b"/named",)),
    (p.OP_ROOT, (), (b"/jail",)),
    (p.OP_CONNECTFD, (), (b"/run/s.sock",)),
    (p.OP_OPENAT2, (0o101, 0o644, 0x8), (b"/scope", b"sub/new")),
]


def test_every_op_has_a_sample() -> None:
    assert sorted(op for op, _a, _s in SAMPLES) == sorted(p.OPS)


@pytest.mark.parametrize(("op", "args", "strings"), SAMPLES, ids=lambda v: str(v)[:20])
def test_request_round_trip(op: int, args: tuple[int, ...], strings: tuple[bytes, ...]) -> None:
    data = p.encode_request(op, 0xDEADBEEF, CRED, args, strings, mount=3)
    assert len(data) <= p.MAX_REQUEST
    req = p.decode_request(data)
    assert req == p.Request(op, 3, 0xDEADBEEF, CRED.packed, args, strings)
    assert p.decode_credentials(req.cred) == CRED
    # memoryviews (what the server reads into) decode the same
    assert p.decode_request(memoryview(bytearray(data))) == req


def test_header_layout_is_documented() -> None:
    data = p.encode_request(p.OP_STAT, 7, ROOT, (0,), (b"/",), mount=2)
    assert data[:8] == struct.pack("<BBHI", p.OP_STAT, 0, 2, 7)
    assert data[8:26] == struct.pack("<IIQH", 0, 0, 0, 0)
    assert data[26:] == struct.pack("<I", 0) + struct.pack("<I", 1) + b"/"


def test_credentials() -> None:
    assert p.Credentials(1000, 1001, (5, 27, 1001), (1 << 0) | (1 << 31)) == CRED
    assert p.Credentials(1000, 1001, (5, 27), (1 << 0) | (1 << 31)) != CRED
    assert hash(CRED) == hash(p.decode_credentials(CRED.packed))
    assert "uid=1000" in repr(CRED)
    many = p.Credentials(1, 1, tuple(range(p.MAX_GROUPS)))
    assert p.decode_credentials(many.packed).groups == tuple(range(p.MAX_GROUPS))
    bad: list[tuple[int, int, tuple[int, ...], int]] = [
        (-1, 0, (), 0),
        (0, 0xFFFFFFFF, (), 0),  # (gid_t)-1 is "no change", never an id
        (0, 0, (1 << 32,), 0),
        (0, 0, tuple(range(p.MAX_GROUPS + 1)), 0),
        (0, 0, (), 1 << 64),
    ]
    for uid, gid, groups, caps in bad:
        with pytest.raises(ValueError):
            p.Credentials(uid, gid, groups, caps)


def test_reply_round_trip() -> None:
    st = os.stat("/")
    payload = p.stat_result(st)
    data = p.encode_reply(p.OP_WALK, 42, 0, payload, has_fd=True)
    op, flags, reserved, rid, err = p.REPLY.unpack_from(data)
    assert (op, flags, reserved, rid, err) == (p.OP_WALK, p.REPLY_FD, 0, 42, 0)
    got = p.Stat._make(p.STAT.unpack(data[p.REPLY.size :]))
    assert (got.dev, got.ino, got.mode, got.nlink) == (
        st.st_dev,
        st.st_ino,
        st.st_mode,
        st.st_nlink,
    )
    assert (got.uid, got.gid, got.rdev, got.size) == (st.st_uid, st.st_gid, st.st_rdev, st.st_size)
    assert (got.blksize, got.blocks) == (st.st_blksize, st.st_blocks)
    assert got.mtime * 10**9 + got.mtime_nsec == st.st_mtime_ns
    assert got.atime * 10**9 + got.atime_nsec == st.st_atime_ns
    assert got.ctime * 10**9 + got.ctime_nsec == st.st_ctime_ns
    err_reply = p.encode_reply(p.OP_OPEN, 9, errno.EACCES)
    assert p.REPLY.unpack(err_reply) == (p.OP_OPEN, 0, 0, 9, errno.EACCES)


def test_statfs_layout() -> None:
    values = (0xEF53, 4096, 10, 9, 8, 7, 6, -1, 2, 255, 4096, 0x1020)
    assert p.StatFS._make(p.STATFS.unpack(p.STATFS.pack(*values))) == values


def _good(op: int = p.OP_STAT) -> bytes:
    for o, args, strings in SAMPLES:
        if o == op:
            return p.encode_request(o, 77, CRED, args, strings)
    raise AssertionError(op)


def _error(data: bytes) -> p.ProtocolError:
    with pytest.raises(p.ProtocolError) as info:
        p.decode_request(data)
    return info.value


def test_short_header() -> None:
    for n in range(p.HEADER.size):
        e = _error(_good()[:n])
        assert (e.op, e.request_id) == (0, 0)


def test_unknown_op_keeps_the_request_id() -> None:
    data = bytearray(_good())
    data[0] = 200
    e = _error(bytes(data))
    assert (e.op, e.request_id) == (200, 77)
    data[0] = 0
    assert _error(bytes(data)).request_id == 77


def test_reserved_flags_must_be_zero() -> None:
    data = bytearray(_good())
    data[1] = 1
    assert "flags" in str(_error(bytes(data)))


def test_every_truncation_is_refused() -> None:
    for op, _args, _strings in SAMPLES:
        data = _good(op)
        for n in range(p.HEADER.size, len(data)):
            e = _error(data[:n])
            assert (e.op, e.request_id) == (op, 77)


def test_trailing_bytes_are_refused() -> None:
    assert "left over" in str(_error(_good() + b"\0"))


def test_string_length_past_the_end() -> None:
    data = bytearray(_good())
    # the path's length field sits right before the path
    off = len(data) - len(b"/etc/passwd") - 4
    struct.pack_into("<I", data, off, 0xFFFFFFF0)
    assert "limit" in str(_error(bytes(data)))
    struct.pack_into("<I", data, off, len(b"/etc/passwd") + 1)
    assert "past the end" in str(_error(bytes(data)))


def test_nul_in_a_path_or_name_is_refused_but_not_in_a_value() -> None:
    for strings in ((b"/etc\0/passwd",),):
        data = p.encode_request(p.OP_STAT, 1, ROOT, (0,), strings)
        assert "NUL" in str(_error(data))
    data = p.encode_request(p.OP_GETXATTR, 1, ROOT, (0,), (b"/f", b"user.\0k"))
    assert "NUL" in str(_error(data))
    ok = p.encode_request(p.OP_SETXATTR, 1, ROOT, (0, 0), (b"/f", b"user.k", b"\0\0"))
    assert p.decode_request(ok).strings[2] == b"\0\0"


def test_limits() -> None:
    longest = b"/" + b"a" * (p.PATH_MAX - 2)
    assert p.decode_request(p.encode_request(p.OP_STAT, 1, ROOT, (0,), (longest,)))
    _error(p.encode_request(p.OP_STAT, 1, ROOT, (0,), (longest + b"a",)))
    name = b"user." + b"n" * (p.XATTR_NAME_MAX - 5)
    big = b"v" * p.XATTR_SIZE_MAX
    data = p.encode_request(p.OP_SETXATTR, 1, ROOT, (0, 0), (longest, name, big))
    assert len(data) <= p.MAX_REQUEST
    assert p.decode_request(data).strings == (longest, name, big)
    _error(p.encode_request(p.OP_SETXATTR, 1, ROOT, (0, 0), (b"/f", name + b"n", b"")))
    _error(p.encode_request(p.OP_SETXATTR, 1, ROOT, (0, 0), (b"/f", name, big + b"v")))


def test_too_many_groups() -> None:
    data = bytearray(_good())
    struct.pack_into("<H", data, 24, p.MAX_GROUPS + 1)
    assert "groups" in str(_error(bytes(data)))


def test_group_count_running_past_the_end() -> None:
    data = bytearray(p.encode_request(p.OP_UNLINK, 5, ROOT, (), (b"/x",)))
    struct.pack_into("<H", data, 24, 100)
    e = _error(bytes(data))
    assert (e.op, e.request_id) == (p.OP_UNLINK, 5)


def test_encode_refuses_out_of_range_fields() -> None:
    with pytest.raises(struct.error):
        p.encode_request(p.OP_CHMOD, 1, ROOT, (-1, 0), (b"/f",))
    with pytest.raises(struct.error):
        p.encode_request(p.OP_STAT, 1 << 32, ROOT, (0,), (b"/f",))


def test_max_reply_holds_the_largest_result() -> None:
    assert p.REPLY.size + p.XATTR_SIZE_MAX <= p.MAX_REPLY
    assert p.REPLY.size + p.STAT.size <= p.MAX_REPLY


def test_kernel_served_is_no_errno() -> None:
    assert p.KERNEL_SERVED not in errno.errorcode
    assert max(errno.errorcode) < p.KERNEL_SERVED < 1 << 31  # an i32 on the wire
    reply = p.encode_reply(p.OP_OPEN, 5, p.KERNEL_SERVED)
    assert p.REPLY.unpack(reply) == (p.OP_OPEN, 0, 0, 5, p.KERNEL_SERVED)


def test_the_client_raises_kernel_path_for_kernel_served() -> None:
    """Not an OSError (no ``except OSError`` may swallow it), and it names the
    path the request resolves: SYMLINK's second string, not its target."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client = GoferClient(ours, ROOT)
    try:
        calls: list[tuple[int, Callable[[], object], bytes]] = [
            (p.OP_STAT, lambda: client.stat("/proc/self/status"), b"/proc/self/status"),
            (p.OP_ACCESS, lambda: client.access(b"/x/self", os.R_OK), b"/x/self"),
            (p.OP_SYMLINK, lambda: client.symlink("target", "/dev/pts/l"), b"/dev/pts/l"),
            (p.OP_OPEN, lambda: client.open("/etc/mtab", os.O_RDONLY), b"/etc/mtab"),
        ]
        for rid, (op, call, path) in enumerate(calls, 1):
            theirs.send(p.encode_reply(op, rid, p.KERNEL_SERVED))  # answered before asked
            with pytest.raises(KernelPath) as info:
                call()
            assert not isinstance(info.value, OSError)
            assert info.value.path == path
            assert p.decode_request(theirs.recv(p.MAX_REQUEST)).op == op
        theirs.send(p.encode_reply(p.OP_ACCESS, len(calls) + 1, errno.EACCES))
        with pytest.raises(PermissionError):
            client.access("/secret", os.R_OK)
    finally:
        ours.close()
        theirs.close()
