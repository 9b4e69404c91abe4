"""The gofer, for real: a gofer process started by gofer/process.py on a
temporary rootfs, driven through gofer/client.py, with nothing of the kernel
mocked.

Security cases run twice: against the confined gofer (its own mount namespace
holds nothing of the host) and against an unconfined one, which lives in the
host's namespaces, so that openat2's RESOLVE_IN_ROOT alone must keep every
path inside the root: a canary file sits right beside the rootfs
(``<tmp>/outside/canary`` next to ``<tmp>/rootfs``) and is watched with
inotify, and every fd or stat that comes back is compared with it by
(st_dev, st_ino).
"""

from __future__ import annotations

import _socket
import contextlib
import errno
import fcntl
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysandbox.gofer import protocol as p
from pysandbox.gofer.client import GoferClient, GoferGone, KernelPath
from pysandbox.gofer.process import GOFER_CAPABILITIES, Gofer, MountSource, start
from pysandbox.gofer.server import Server
from pysandbox.oci import kernel

ALL_CAPS = (1 << (kernel.cap_last_cap() + 1)) - 1
ROOT = p.Credentials(0, 0, (), ALL_CAPS)
ROOT_NO_CAPS = p.Credentials(0, 0, (), 0)
USER = p.Credentials(1000, 1000, (), 0)
USER_IN_GROUP = p.Credentials(1000, 1000, (2000,), 0)
CANARY = b"CANARY: outside the container"
IN_ACCESS, IN_MODIFY, IN_ATTRIB, IN_OPEN, IN_CREATE, IN_DELETE = 0x1, 0x2, 0x4, 0x20, 0x100, 0x200
IN_MOVED_FROM, IN_MOVED_TO, IN_NONBLOCK = 0x40, 0x80, 0o4000
XATTR_CREATE, XATTR_REPLACE = 1, 2


class Tree:
    """<tmp>/rootfs (served) and <tmp>/outside/canary (must never be reached)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "rootfs"
        self.outside = base / "outside"
        self.canary = self.outside / "canary"
        r = self.root
        for d in ("etc", "dir", "race", "run", "home/user", "proc", "dev"):
            (r / d).mkdir(parents=True)
        self.outside.mkdir()
        self.canary.write_bytes(CANARY)
        (r / "etc/passwd").write_text("root:x:0:0:the container's:/root:/bin/sh\n")
        (r / "etc/shadow").write_bytes(b"the container's shadow\n")
        (r / "etc/shadow").chmod(0o600)
        (r / "secret").write_bytes(b"root only\n")
        (r / "secret").chmod(0o600)
        (r / "others").write_bytes(b"uid 1234 only\n")
        os.chown(r / "others", 1234, 1234)
        (r / "others").chmod(0o600)
        (r / "group").write_bytes(b"group 2000\n")
        os.chown(r / "group", 0, 2000)
        (r / "group").chmod(0o640)
        os.chown(r / "home/user", 1000, 1000)
        (r / "dir/file").write_bytes(b"inside\n")
        (r / "race/canary").write_bytes(b"the inside one\n")
        # the escapes
        os.symlink("/etc/shadow", r / "abs_shadow")
        os.symlink(str(self.canary), r / "abs_canary")
        os.symlink("../" * 12 + "outside/canary", r / "rel_canary")
        os.symlink("../" * 12 + "etc/shadow", r / "rel_shadow")
        os.symlink("../outside", r / "up_outside")  # on the host: exactly the outside dir
        os.symlink(str(self.outside), r / "abs_outside")
        os.symlink("/proc/self/root/etc/passwd", r / "proc_passwd")
        os.symlink("dir/file", r / "file_link")
        os.symlink("dir", r / "dir_link")

    def canary_id(self) -> tuple[int, int]:
        st = os.stat(self.canary)
        return st.st_dev, st.st_ino

    def outside_state(self) -> tuple[list[str], bytes, int]:
        return (
            sorted(os.listdir(self.outside)),
            self.canary.read_bytes(),
            os.stat(self.canary).st_nlink,
        )


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    return Tree(tmp_path)


@contextlib.contextmanager
def running(tree: Tree, confine: bool = True, **kwargs: object) -> Iterator[Gofer]:
    log = os.open(tree.base / "gofer.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        gofer = start(str(tree.root), confine=confine, log_fd=log, **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(log)
    try:
        yield gofer
    finally:
        status = gofer.stop()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, log_text(tree))


def log_text(tree: Tree) -> str:
    path = tree.base / "gofer.log"
    return path.read_text() if path.exists() else ""


@pytest.fixture
def gofer(tree: Tree) -> Iterator[Gofer]:
    with running(tree) as g:
        yield g


@pytest.fixture
def c(gofer: Gofer) -> GoferClient:
    return gofer.client(ROOT)


@pytest.fixture(params=["confined", "unconfined"])
def any_client(request: pytest.FixtureRequest, tree: Tree) -> Iterator[GoferClient]:
    with running(tree, confine=request.param == "confined") as g:
        yield g.client(ROOT)


def errno_of(fn: object, *args: object, **kwargs: object) -> int:
    try:
        result = fn(*args, **kwargs)  # type: ignore[operator]
    except OSError as e:
        assert e.errno is not None
        return e.errno
    if isinstance(result, int) and result >= 0:
        os.close(result)
    return 0


KERNEL = "kernel"  # what answer() gives for KernelPath


def answer(fn: object, *args: object, **kwargs: object) -> int | str:
    """errno_of(), or KERNEL when the gofer says the kernel serves the path."""
    try:
        return errno_of(fn, *args, **kwargs)
    except KernelPath:
        return KERNEL


def fd_id(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def host_id(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_dev, st.st_ino


def read_fd(fd: int) -> bytes:
    try:
        return os.pread(fd, 4096, 0)
    finally:
        os.close(fd)


def status_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


# --- operations ---------------------------------------------------------------------


def test_stat_and_lstat(c: GoferClient, tree: Tree) -> None:
    st = c.stat("/etc/passwd")
    host = os.stat(tree.root / "etc/passwd")
    assert (st.dev, st.ino, st.mode, st.nlink, st.uid, st.gid) == (
        host.st_dev,
        host.st_ino,
        host.st_mode,
        host.st_nlink,
        host.st_uid,
        host.st_gid,
    )
    assert (st.size, st.blksize, st.blocks, st.rdev) == (
        host.st_size,
        host.st_blksize,
        host.st_blocks,
        host.st_rdev,
    )
    assert st.mtime * 10**9 + st.mtime_nsec == host.st_mtime_ns
    assert st.ctime * 10**9 + st.ctime_nsec == host.st_ctime_ns
    assert st.atime * 10**9 + st.atime_nsec == host.st_atime_ns
    link = c.stat("/file_link", follow=False)
    assert stat.S_ISLNK(link.mode) and link.ino == os.lstat(tree.root / "file_link").st_ino
    assert c.stat("/file_link").ino == os.stat(tree.root / "dir/file").st_ino
    assert c.stat("etc/passwd").ino == st.ino  # relative paths start at the root too
    assert c.stat("/").ino == os.stat(tree.root).st_ino
    assert errno_of(c.stat, "/missing") == errno.ENOENT
    assert errno_of(c.stat, "") == errno.ENOENT
    assert errno_of(c.stat, "/etc/passwd/") == errno.ENOTDIR


def test_walk_returns_an_o_path_fd(c: GoferClient, tree: Tree) -> None:
    fd, st = c.walk("/dir_link")
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert fd_id(fd) == (st.dev, st.ino) == host_id(tree.root / "dir")
    finally:
        os.close(fd)
    fd, st = c.walk("/dir_link", follow=False)
    os.close(fd)
    assert stat.S_ISLNK(st.mode)


def test_open_flags(c: GoferClient, tree: Tree) -> None:
    assert read_fd(c.open("/etc/passwd", os.O_RDONLY)).startswith(b"root:x:0:0")
    fd = c.open("/dir/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        assert flags & os.O_ACCMODE == os.O_WRONLY and not flags & os.O_NONBLOCK
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        os.write(fd, b"written through the gofer")
    finally:
        os.close(fd)
    host = os.stat(tree.root / "dir/new")
    assert stat.S_IMODE(host.st_mode) == 0o640  # the mode as asked: the gofer's umask is 0
    assert (tree.root / "dir/new").read_bytes() == b"written through the gofer"
    assert errno_of(c.open, "/dir/new", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) == errno.EEXIST
    fd = c.open("/dir/new", os.O_WRONLY | os.O_APPEND)
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
    os.write(fd, b"!")
    os.close(fd)
    assert (tree.root / "dir/new").read_bytes().endswith(b"gofer!")
    os.close(c.open("/dir/new", os.O_RDWR | os.O_TRUNC))
    assert (tree.root / "dir/new").read_bytes() == b""
    fd = c.open("/dir/new", os.O_RDONLY | os.O_NONBLOCK)
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
    os.close(fd)
    assert errno_of(c.open, "/dir/new", os.O_RDONLY | os.O_DIRECTORY) == errno.ENOTDIR
    assert errno_of(c.open, "/file_link", os.O_RDONLY | os.O_NOFOLLOW) == errno.ELOOP
    assert errno_of(c.open, "/dir", os.O_WRONLY) == errno.EISDIR
    assert errno_of(c.open, "/etc/passwd", 0x40000000) == errno.EINVAL  # no such flag
    assert errno_of(c.open, "/dir/x", os.O_CREAT | os.O_WRONLY, 0o100000) == errno.EINVAL
    fd = c.open("/dir", os.O_RDONLY | os.O_DIRECTORY)
    assert sorted(os.listdir(fd)) == ["file", "new"]
    os.close(fd)
    fd = c.open("/file_link", os.O_PATH | os.O_NOFOLLOW)
    assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH
    assert stat.S_ISLNK(os.fstat(fd).st_mode)
    os.close(fd)
    assert errno_of(c.open, "/dir", os.O_PATH | os.O_RDWR) == errno.EINVAL
    # O_TMPFILE: an unnamed file in /dir
    fd = c.open("/dir", os.O_TMPFILE | os.O_RDWR, 0o600)
    assert os.fstat(fd).st_nlink == 0 and stat.S_ISREG(os.fstat(fd).st_mode)
    os.close(fd)
    # a created file belongs to the caller
    fd = c.open("/home/user/mine", os.O_CREAT | os.O_WRONLY, 0o600, cred=USER)
    os.close(fd)
    host = os.stat(tree.root / "home/user/mine")
    assert (host.st_uid, host.st_gid) == (1000, 1000)


def test_openat2_is_scoped_to_its_directory(c: GoferClient, tree: Tree) -> None:
    """OPENAT2 opens in the directory the first path names, with the caller's
    RESOLVE_BENEATH or RESOLVE_IN_ROOT (one of them is required): nothing it
    resolves leaves that directory, let alone the root."""
    beneath, in_root = kernel.RESOLVE_BENEATH, kernel.RESOLVE_IN_ROOT
    create = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    os.close(c.openat2("/dir", "made", create, 0o600, beneath))
    assert stat.S_IMODE(os.stat(tree.root / "dir/made").st_mode) == 0o600
    for path in ("../etc/passwd", "/etc/passwd", "../../../outside/canary"):
        assert errno_of(c.openat2, "/dir", path, os.O_WRONLY, 0, beneath) == errno.EXDEV
    # in its own root: ".." and absolute paths stay in /dir
    os.close(c.openat2("/dir", "/../../abs-made", create, 0o600, in_root))
    assert (tree.root / "dir/abs-made").exists() and not (tree.root / "abs-made").exists()
    assert errno_of(c.openat2, "/dir", "x", create, 0o600, 0) == errno.EINVAL  # unscoped
    assert tree.outside_state()[0] == ["canary"]


def test_open_of_a_fifo_does_not_block_the_gofer(c: GoferClient, tree: Tree) -> None:
    c.mknod("/run/fifo", stat.S_IFIFO | 0o600)
    reader = c.open("/run/fifo", os.O_RDONLY)  # no writer yet: must come back at once
    writer = c.open("/run/fifo", os.O_WRONLY)
    try:
        assert not fcntl.fcntl(reader, fcntl.F_GETFL) & os.O_NONBLOCK
        os.write(writer, b"through the fifo")
        assert os.read(reader, 100) == b"through the fifo"
    finally:
        os.close(reader)
        os.close(writer)
    # a writer with no reader: ENXIO, rather than a gofer stuck forever
    assert errno_of(c.open, "/run/fifo", os.O_WRONLY) == errno.ENXIO


def test_mkdir_and_rmdir(c: GoferClient, tree: Tree) -> None:
    c.mkdir("/newdir", 0o750)
    assert stat.S_IMODE(os.stat(tree.root / "newdir").st_mode) == 0o750
    c.mkdir("/newdir/sub/", 0o700)  # a trailing slash is fine for a directory
    assert (tree.root / "newdir/sub").is_dir()
    assert errno_of(c.mkdir, "/newdir", 0o755) == errno.EEXIST
    assert errno_of(c.mkdir, "/", 0o755) == errno.EEXIST
    assert errno_of(c.mkdir, "/newdir/..", 0o755) == errno.EEXIST
    assert errno_of(c.mkdir, "/missing/x", 0o755) == errno.ENOENT
    assert errno_of(c.mkdir, "/secret/x", 0o755) == errno.ENOTDIR
    assert errno_of(c.rmdir, "/newdir") == errno.ENOTEMPTY
    assert errno_of(c.rmdir, "/newdir/sub/.") == errno.EINVAL
    assert errno_of(c.rmdir, "/newdir/sub/..") == errno.ENOTEMPTY
    assert errno_of(c.rmdir, "/") == errno.EBUSY
    assert errno_of(c.rmdir, "/secret") == errno.ENOTDIR
    assert errno_of(c.rmdir, "/dir_link") == errno.ENOTDIR  # the link is not followed
    assert errno_of(c.mkdir, "/x", 0o755, cred=USER) == errno.EACCES
    c.rmdir("/newdir/sub")
    c.rmdir("/newdir/")
    assert not (tree.root / "newdir").exists()


def test_mknod(c: GoferClient, tree: Tree) -> None:
    c.mknod("/run/fifo", stat.S_IFIFO | 0o640)
    c.mknod("/run/sock", stat.S_IFSOCK | 0o600)
    c.mknod("/run/file", stat.S_IFREG | 0o644)
    c.mknod("/run/plain", 0o600)  # type 0: a regular file, as mknod(2) says
    kinds = {
        n: stat.S_IFMT(os.lstat(tree.root / "run" / n).st_mode)
        for n in os.listdir(tree.root / "run")
    }
    assert kinds == {
        "fifo": stat.S_IFIFO,
        "sock": stat.S_IFSOCK,
        "file": stat.S_IFREG,
        "plain": stat.S_IFREG,
    }
    assert stat.S_IMODE(os.stat(tree.root / "run/fifo").st_mode) == 0o640
    assert errno_of(c.mknod, "/run/fifo", stat.S_IFIFO | 0o600) == errno.EEXIST
    assert errno_of(c.mknod, "/run/dirlike", stat.S_IFDIR | 0o600) == errno.EINVAL


def test_device_nodes_need_cap_mknod_and_are_never_opened(c: GoferClient, tree: Tree) -> None:
    null = os.makedev(1, 3)
    assert (
        errno_of(c.mknod, "/dev/null", stat.S_IFCHR | 0o666, null, cred=ROOT_NO_CAPS) == errno.EPERM
    )
    assert not (tree.root / "dev/null").exists()
    # with the caller's CAP_MKNOD it is made, as under runc ...
    c.mknod("/dev/null", stat.S_IFCHR | 0o666, null, cred=ROOT)
    c.mknod("/dev/sda", stat.S_IFBLK | 0o660, os.makedev(8, 0), cred=ROOT)
    assert os.stat(tree.root / "dev/sda").st_rdev == os.makedev(8, 0)
    # ... but never opened through the gofer, which is in no device cgroup: its
    # binds are nodev (the sentry hands such an open to the kernel)
    assert errno_of(c.open, "/dev/null", os.O_RDWR) == errno.EACCES
    assert errno_of(c.open, "/dev/sda", os.O_RDONLY) == errno.EACCES
    assert stat.S_ISCHR(c.stat("/dev/null").mode)  # seeing it is fine


def test_unlink(c: GoferClient, tree: Tree) -> None:
    c.unlink("/file_link")  # the link, not what it points at
    assert not (tree.root / "file_link").is_symlink() and (tree.root / "dir/file").exists()
    assert errno_of(c.unlink, "/dir") == errno.EISDIR
    assert errno_of(c.unlink, "/secret/") == errno.ENOTDIR
    assert errno_of(c.unlink, "/missing") == errno.ENOENT
    assert errno_of(c.unlink, "/") == errno.EISDIR
    assert errno_of(c.unlink, "/secret", cred=USER) == errno.EACCES
    c.unlink("/dir/file")
    assert not (tree.root / "dir/file").exists()


def test_rename(c: GoferClient, tree: Tree) -> None:
    c.rename("/dir/file", "/dir/moved")
    assert (tree.root / "dir/moved").read_bytes() == b"inside\n"
    assert errno_of(c.rename, "/secret", "/dir/moved", kernel.RENAME_NOREPLACE) == errno.EEXIST
    c.rename("/secret", "/dir/moved", kernel.RENAME_EXCHANGE)
    assert (tree.root / "dir/moved").read_bytes() == b"root only\n"
    assert (tree.root / "secret").read_bytes() == b"inside\n"
    assert errno_of(c.rename, "/", "/x") == errno.EBUSY
    assert errno_of(c.rename, "/dir/.", "/x") == errno.EBUSY
    assert errno_of(c.rename, "/dir", "/dir/inner") == errno.EINVAL
    assert errno_of(c.rename, "/dir/moved", "/y", 0x80) == errno.EINVAL  # unknown flag
    assert errno_of(c.rename, "/secret", "/home/user/x", cred=USER) == errno.EACCES
    c.rename("/dir_link", "/renamed_link")  # a symlink is renamed, not followed
    assert os.readlink(tree.root / "renamed_link") == "dir"


def test_link(c: GoferClient, tree: Tree) -> None:
    c.link("/dir/file", "/hard")
    assert host_id(tree.root / "hard") == host_id(tree.root / "dir/file")
    c.link("/file_link", "/hard_link")  # without follow: the symlink itself
    assert host_id(tree.root / "hard_link") == host_id(tree.root / "file_link")
    c.link("/file_link", "/hard_followed", follow=True)
    assert host_id(tree.root / "hard_followed") == host_id(tree.root / "dir/file")
    assert os.stat(tree.root / "dir/file").st_nlink == 3
    assert errno_of(c.link, "/dir", "/dir2") == errno.EPERM
    assert errno_of(c.link, "/dir/", "/dir2") == errno.EPERM
    assert errno_of(c.link, "/dir/file", "/hard") == errno.EEXIST
    assert errno_of(c.link, "/missing", "/x") == errno.ENOENT
    assert errno_of(c.link, "/dir/..", "/x") == errno.EPERM


def test_symlink_and_readlink(c: GoferClient, tree: Tree) -> None:
    target = b"any/target/\xff\xfe even/../outside"
    c.symlink(target, "/dir/l")
    assert os.readlink(os.fsencode(tree.root / "dir/l")) == target
    assert c.readlink("/dir/l") == target
    assert c.readlink("/abs_canary") == os.fsencode(tree.canary)  # just bytes: nothing followed
    assert errno_of(c.readlink, "/secret") == errno.EINVAL
    assert errno_of(c.readlink, "/dir_link/") == errno.EINVAL
    assert errno_of(c.readlink, "/missing") == errno.ENOENT
    assert errno_of(c.symlink, "x", "/dir/l") == errno.EEXIST
    assert errno_of(c.symlink, "", "/dir/empty") == errno.ENOENT
    c.symlink("/etc", "/home/user/l", cred=USER)
    assert os.lstat(tree.root / "home/user/l").st_uid == 1000


def test_chmod(c: GoferClient, tree: Tree) -> None:
    c.chmod("/dir/file", 0o4711)
    assert stat.S_IMODE(os.stat(tree.root / "dir/file").st_mode) == 0o4711
    c.chmod("/file_link", 0o600)  # follows
    assert stat.S_IMODE(os.stat(tree.root / "dir/file").st_mode) == 0o600
    assert errno_of(c.chmod, "/file_link", 0o600, follow=False) == errno.EOPNOTSUPP
    assert errno_of(c.chmod, "/secret", 0o644, cred=USER) == errno.EPERM
    assert errno_of(c.chmod, "/others", 0o644, cred=ROOT_NO_CAPS) == errno.EPERM  # no CAP_FOWNER


def test_chown(c: GoferClient, tree: Tree) -> None:
    c.chown("/dir/file", 1234, 5678)
    assert os.stat(tree.root / "dir/file")[4:6] == (1234, 5678)
    c.chown("/dir/file", -1, 42)
    assert os.stat(tree.root / "dir/file")[4:6] == (1234, 42)
    c.chown("/file_link", 7, 7, follow=False)
    assert os.lstat(tree.root / "file_link")[4:6] == (7, 7)
    assert os.stat(tree.root / "dir/file")[4:6] == (1234, 42)
    assert errno_of(c.chown, "/dir/file", 1000, 1000, cred=USER) == errno.EPERM
    assert errno_of(c.chown, "/dir/file", 1, 1, cred=ROOT_NO_CAPS) == errno.EPERM  # no CAP_CHOWN


def test_utimens(c: GoferClient, tree: Tree) -> None:
    c.utimens("/dir/file", (1_000_000, 123), (2_000_000, 456_789))
    st = os.stat(tree.root / "dir/file")
    assert (st.st_atime_ns, st.st_mtime_ns) == (
        1_000_000 * 10**9 + 123,
        2_000_000 * 10**9 + 456_789,
    )
    c.utimens("/dir/file", (5, 0), (0, kernel.UTIME_OMIT))
    st = os.stat(tree.root / "dir/file")
    assert (st.st_atime_ns, st.st_mtime_ns) == (5 * 10**9, 2_000_000 * 10**9 + 456_789)
    before = time.time_ns()
    c.utimens("/dir/file", (0, kernel.UTIME_OMIT), (0, kernel.UTIME_NOW))
    assert os.stat(tree.root / "dir/file").st_mtime_ns >= before - 10**9
    c.utimens("/file_link", (3, 0), (4, 0), follow=False)
    assert os.lstat(tree.root / "file_link").st_mtime_ns == 4 * 10**9
    assert os.stat(tree.root / "dir/file").st_mtime_ns != 4 * 10**9
    assert errno_of(c.utimens, "/dir/file", (0, 10**9), (0, 0)) == errno.EINVAL
    assert errno_of(c.utimens, "/secret", (1, 0), (1, 0), cred=USER) == errno.EPERM


def test_truncate(c: GoferClient, tree: Tree) -> None:
    c.truncate("/dir/file", 3)
    assert (tree.root / "dir/file").read_bytes() == b"ins"
    c.truncate("/file_link", 10)
    assert (tree.root / "dir/file").read_bytes() == b"ins" + b"\0" * 7
    assert errno_of(c.truncate, "/dir", 0) == errno.EISDIR
    assert errno_of(c.truncate, "/dir/file", -1) == errno.EINVAL
    assert errno_of(c.truncate, "/secret", 0, cred=USER) == errno.EACCES


def test_statfs(c: GoferClient, tree: Tree) -> None:
    fd = os.open(tree.root, os.O_PATH)
    try:
        host = kernel.fstatfs(fd)
    finally:
        os.close(fd)
    got = c.statfs("/dir")
    assert (got.type, got.bsize, got.blocks, got.files, got.namelen, got.frsize) == (
        host[0],
        host[1],
        host[2],
        host[5],
        host[9],
        host[10],
    )
    assert (got.fsid0, got.fsid1) == (host[7], host[8])


def test_xattrs(c: GoferClient, tree: Tree) -> None:
    value = b"\0binary\xff" * 10
    c.setxattr("/dir/file", "user.k", value)
    assert os.getxattr(tree.root / "dir/file", "user.k") == value
    assert c.getxattr("/dir/file", "user.k") == value
    assert c.getxattr("/file_link", "user.k") == value  # followed
    assert errno_of(c.getxattr, "/file_link", "user.k", follow=False) == errno.ENODATA
    c.setxattr("/dir/file", "user.other", b"")
    assert sorted(c.listxattr("/dir/file")) == [b"user.k", b"user.other"]
    assert b"user.k" not in c.listxattr("/file_link", follow=False)
    assert errno_of(c.setxattr, "/dir/file", "user.k", b"x", XATTR_CREATE) == errno.EEXIST
    assert errno_of(c.setxattr, "/dir/file", "user.new", b"x", XATTR_REPLACE) == errno.ENODATA
    c.setxattr("/dir/file", "user.k", b"replaced", XATTR_REPLACE)
    assert c.getxattr("/dir/file", "user.k") == b"replaced"
    big = b"v" * 3000  # ext4 keeps a file's xattrs in one block
    c.setxattr("/dir/file", "user.big", big)
    assert c.getxattr("/dir/file", "user.big") == big
    c.removexattr("/dir/file", "user.k")
    assert errno_of(c.getxattr, "/dir/file", "user.k") == errno.ENODATA
    assert errno_of(c.removexattr, "/dir/file", "user.k") == errno.ENODATA
    assert errno_of(c.setxattr, "/secret", "user.k", b"x", cred=USER) == errno.EACCES
    # trusted.* needs CAP_SYS_ADMIN, which the gofer does not keep
    assert errno_of(c.setxattr, "/dir/file", "trusted.k", b"x") == errno.EPERM


def test_bind_and_connect(c: GoferClient, tree: Tree) -> None:
    listener = c.bind("/home/user/s.sock", socket.SOCK_STREAM, umask=0o077, cred=USER)
    with socket.socket(fileno=listener) as server:
        host = os.lstat(tree.root / "home/user/s.sock")
        assert stat.S_ISSOCK(host.st_mode) and stat.S_IMODE(host.st_mode) == 0o700
        assert (host.st_uid, host.st_gid) == (1000, 1000)
        server.listen(4)
        fd = c.connect("/home/user/s.sock", cred=USER)
        with socket.socket(fileno=fd) as client:
            assert client.getblocking()
            conn, _ = server.accept()
            with conn:
                _pid, uid, gid = struct.unpack(
                    "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                )
                assert (uid, gid) == (1000, 1000)  # the workload's, not the gofer's root
                client.sendall(b"ping")
                assert conn.recv(10) == b"ping"
        # uid 1001 may not write the 0700 socket
        other = p.Credentials(1001, 1001, (), 0)
        assert errno_of(c.connect, "/home/user/s.sock", cred=other) == errno.EACCES
        fd = c.connect("/home/user/s.sock", socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        assert not os.get_blocking(fd)
        os.close(fd)
    # nobody listens any more
    assert errno_of(c.connect, "/home/user/s.sock") == errno.ECONNREFUSED
    assert errno_of(c.connect, "/secret") == errno.ECONNREFUSED
    assert errno_of(c.connect, "/missing") == errno.ENOENT
    assert errno_of(c.bind, "/home/user/s.sock") == errno.EADDRINUSE
    assert errno_of(c.bind, "/run/" + "n" * 120) == errno.ENAMETOOLONG
    assert errno_of(c.bind, "/run/x", 99) == errno.EINVAL
    assert errno_of(c.bind, "/secret/x") == errno.ENOTDIR
    # datagrams
    d = c.bind("/run/d.sock", socket.SOCK_DGRAM)
    fd = c.connect("/run/d.sock", socket.SOCK_DGRAM)
    with socket.socket(fileno=d) as receiver, socket.socket(fileno=fd) as sender:
        sender.send(b"datagram")
        assert receiver.recv(100) == b"datagram"
    assert stat.S_IMODE(os.lstat(tree.root / "run/d.sock").st_mode) == 0o755  # default umask 022


def test_connect_fd_connects_the_callers_own_socket(c: GoferClient, tree: Tree) -> None:
    listener = c.bind("/home/user/fd.sock", socket.SOCK_STREAM, umask=0o077, cred=USER)
    with socket.socket(fileno=listener) as server:
        server.listen(0)
        mine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect_fd(mine.fileno(), "/home/user/fd.sock", cred=USER)
        assert mine.getpeername() == "fd.sock" and os.get_blocking(mine.fileno())
        conn, _ = server.accept()
        with conn:
            _pid, uid, gid = struct.unpack(
                "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            )
            assert (uid, gid) == (1000, 1000)
            mine.sendall(b"same socket")
            assert conn.recv(20) == b"same socket"
        assert errno_of(c.connect_fd, mine.fileno(), "/home/user/fd.sock") == errno.EISCONN
        mine.close()
        # a full backlog: EAGAIN at once, blocking or not, and the socket's
        # blocking mode is left as it was (the sentry lets the kernel wait)
        first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect_fd(first.fileno(), "/home/user/fd.sock", cred=USER)
        for blocking in (True, False):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.setblocking(blocking)
                path = "/home/user/fd.sock"
                assert errno_of(c.connect_fd, s.fileno(), path, cred=USER) == errno.EAGAIN
                assert os.get_blocking(s.fileno()) is blocking
        first.close()
        other = p.Credentials(1001, 1001, (), 0)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            assert errno_of(c.connect_fd, s.fileno(), "/home/user/fd.sock", cred=other) == (
                errno.EACCES
            )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        assert errno_of(c.connect_fd, s.fileno(), "/missing") == errno.ENOENT
        assert errno_of(c.connect_fd, s.fileno(), "/secret") == errno.ECONNREFUSED
    # what is no AF_UNIX socket gets the kernel's own answer
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        assert errno_of(c.connect_fd, s.fileno(), "/run") == errno.EAFNOSUPPORT
    r, w = os.pipe()
    assert errno_of(c.connect_fd, r, "/run") == errno.ENOTSOCK
    os.close(r)
    os.close(w)


def test_credentials_are_the_callers(c: GoferClient, tree: Tree) -> None:
    assert read_fd(c.open("/secret", os.O_RDONLY)) == b"root only\n"
    assert errno_of(c.open, "/secret", os.O_RDONLY, cred=USER) == errno.EACCES
    # root without CAP_DAC_OVERRIDE is judged by the mode bits like anyone else
    assert errno_of(c.open, "/others", os.O_RDONLY, cred=ROOT_NO_CAPS) == errno.EACCES
    assert read_fd(c.open("/others", os.O_RDONLY)) == b"uid 1234 only\n"
    # supplementary groups count
    assert errno_of(c.open, "/group", os.O_RDONLY, cred=USER) == errno.EACCES
    assert read_fd(c.open("/group", os.O_RDONLY, cred=USER_IN_GROUP)) == b"group 2000\n"
    # only the file capabilities are lent: CAP_DAC_READ_SEARCH alone reads, not writes
    reader = p.Credentials(1000, 1000, (), 1 << kernel.cap_number("CAP_DAC_READ_SEARCH"))
    assert read_fd(c.open("/secret", os.O_RDONLY, cred=reader)) == b"root only\n"
    assert errno_of(c.open, "/secret", os.O_WRONLY, cred=reader) == errno.EACCES
    # switching back and forth leaves nothing behind
    for _ in range(3):
        assert errno_of(c.open, "/secret", os.O_RDONLY, cred=USER) == errno.EACCES
        os.close(c.open("/secret", os.O_RDONLY))


@pytest.mark.parametrize("restore", [False, True], ids=["lazy", "restore_after_request"])
def test_credential_switch_state(tree: Tree, restore: bool) -> None:
    """Lazy (default): the last caller's fs ids stay until a request with other
    credentials; restore_after_request: the gofer's own come back after each."""
    with running(tree, restore_after_request=restore) as g:
        c = g.client(ROOT)
        mask = sum(1 << cap for cap in GOFER_CAPABILITIES)
        assert errno_of(c.open, "/secret", os.O_RDONLY, cred=USER_IN_GROUP) == errno.EACCES
        status = status_of(g.pid)
        uids, gids = status["Uid"].split(), status["Gid"].split()
        if restore:
            assert (uids, gids) == (["0"] * 4, ["0"] * 4)
            assert int(status["CapEff"], 16) == mask
        else:  # real, effective, saved stay the gofer's; the fs ids are the caller's
            assert (uids, gids) == (["0", "0", "0", "1000"], ["0", "0", "0", "1000"])
            assert status["Groups"].split() == ["2000"]
            assert int(status["CapEff"], 16) == 0
        assert int(status["CapPrm"], 16) == mask
        # connect switches the effective ids too, and puts them back
        listener = c.bind("/run/s.sock", umask=0)
        with socket.socket(fileno=listener) as server:
            server.listen(1)
            os.close(c.connect("/run/s.sock", cred=USER))
        status = status_of(g.pid)
        assert status["Uid"].split()[:3] == ["0", "0", "0"]
        assert status["Gid"].split()[:3] == ["0", "0", "0"]
        assert read_fd(c.open("/secret", os.O_RDONLY)) == b"root only\n"


def test_extra_mount_sources_and_readonly(tree: Tree) -> None:
    rw = tree.base / "volume"
    ro = tree.base / "config"
    rw.mkdir()
    ro.mkdir()
    (ro / "setting").write_text("on")
    with running(tree, mounts=[MountSource(str(rw)), MountSource(str(ro), readonly=True)]) as g:
        c = g.client(ROOT)
        c.mkdir("/made", 0o755, mount=1)
        assert (rw / "made").is_dir()
        assert read_fd(c.open("/setting", os.O_RDONLY, mount=2)) == b"on"
        assert errno_of(c.mkdir, "/x", 0o755, mount=2) == errno.EROFS
        assert errno_of(c.open, "/setting", os.O_WRONLY, mount=2) == errno.EROFS
        assert errno_of(c.stat, "/", mount=3) == errno.EINVAL
        # each mount is its own root: .. does not lead from one to another
        assert errno_of(c.stat, "/../rootfs/etc/passwd", mount=1) == errno.ENOENT
        assert errno_of(c.stat, "/../../root/etc/passwd", mount=1) == errno.ENOENT
        assert sorted(os.listdir(f"/proc/{g.pid}/root/mounts")) == ["1", "2"]
    with running(tree, readonly=True) as g:
        c = g.client(ROOT)
        assert errno_of(c.mkdir, "/x", 0o755) == errno.EROFS
        assert errno_of(c.unlink, "/secret") == errno.EROFS
        assert read_fd(c.open("/secret", os.O_RDONLY)) == b"root only\n"
    with pytest.raises(NotADirectoryError):
        start(str(tree.root / "secret"))


# --- security ---------------------------------------------------------------------


@pytest.fixture
def watch_outside(tree: Tree) -> Iterator[list[int]]:
    """inotify on the outside directory: any access to it or the canary shows."""
    before = tree.outside_state()  # (reading it would show as events: before the watch)
    fd = kernel.inotify_init1(IN_NONBLOCK | os.O_CLOEXEC)
    mask = IN_ACCESS | IN_MODIFY | IN_ATTRIB | IN_OPEN | IN_CREATE | IN_DELETE
    kernel.inotify_add_watch(fd, str(tree.outside), mask | IN_MOVED_FROM | IN_MOVED_TO)
    kernel.inotify_add_watch(fd, str(tree.canary), mask)
    events: list[int] = []
    yield events
    try:
        while True:
            data = os.read(fd, 65536)
            off = 0
            while off < len(data):
                _wd, ev_mask, _cookie, name_len = struct.unpack_from("iIII", data, off)
                events.append(ev_mask)
                off += 16 + name_len
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    assert events == [], f"something touched the outside: {events}"
    assert tree.outside_state() == before


def test_absolute_symlinks_resolve_inside_the_root(
    any_client: GoferClient, tree: Tree, watch_outside: list[int]
) -> None:
    c = any_client
    fd = c.open("/abs_shadow", os.O_RDONLY)
    assert fd_id(fd) == host_id(tree.root / "etc/shadow") != host_id(Path("/etc/shadow"))
    assert read_fd(fd) == b"the container's shadow\n"
    assert errno_of(c.open, "/abs_canary", os.O_RDONLY) == errno.ENOENT
    assert errno_of(c.stat, "/abs_outside/canary") == errno.ENOENT
    assert c.stat("/abs_shadow").ino == host_id(tree.root / "etc/shadow")[1]


def test_relative_escapes_resolve_inside_the_root(
    any_client: GoferClient, tree: Tree, watch_outside: list[int]
) -> None:
    c = any_client
    assert errno_of(c.open, "/rel_canary", os.O_RDONLY) == errno.ENOENT
    assert read_fd(c.open("/rel_shadow", os.O_RDONLY)) == b"the container's shadow\n"
    assert errno_of(c.open, "/up_outside/canary", os.O_RDONLY) == errno.ENOENT
    for path in ("../outside/canary", "/../outside/canary", "/dir/../../outside/canary"):
        assert errno_of(c.open, path, os.O_RDONLY) == errno.ENOENT
        assert errno_of(c.stat, path) == errno.ENOENT
    assert c.stat("/..").ino == c.stat("/").ino == os.stat(tree.root).st_ino
    assert c.stat("/../../..").ino == os.stat(tree.root).st_ino
    # creating through an escaping parent lands inside (or nowhere), never outside
    assert errno_of(c.mkdir, "/up_outside/planted", 0o755) == errno.ENOENT
    assert errno_of(c.open, "/abs_outside/planted", os.O_CREAT | os.O_WRONLY, 0o600) == errno.ENOENT
    assert errno_of(c.symlink, "x", "/../outside/planted") == errno.ENOENT
    assert errno_of(c.mknod, "/up_outside/fifo", stat.S_IFIFO | 0o600) == errno.ENOENT
    assert errno_of(c.bind, "/abs_outside/s.sock") == errno.ENOENT
    assert errno_of(c.unlink, "/up_outside/canary") == errno.ENOENT
    assert errno_of(c.chmod, "/abs_canary", 0o777) == errno.ENOENT
    assert errno_of(c.chown, "/rel_canary", 1, 1) == errno.ENOENT
    assert errno_of(c.truncate, "/abs_canary", 0) == errno.ENOENT
    assert errno_of(c.setxattr, "/abs_canary", "user.x", b"x") == errno.ENOENT
    assert errno_of(c.utimens, "/abs_canary", (0, 0), (0, 0)) == errno.ENOENT
    assert c.readlink("/abs_canary") == os.fsencode(tree.canary)


def test_dangling_escape_symlink_with_o_creat_creates_inside(
    any_client: GoferClient, tree: Tree, watch_outside: list[int]
) -> None:
    (tree.root / str(tree.outside).lstrip("/")).mkdir(parents=True)
    fd = any_client.open("/abs_canary", os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"created inside")
    os.close(fd)
    inside = tree.root / str(tree.canary).lstrip("/")
    assert inside.read_bytes() == b"created inside"  # (the canary: checked by watch_outside)


@pytest.fixture
def proc_in_rootfs(tree: Tree) -> Iterator[None]:
    """A real procfs at <rootfs>/proc, as a container has one: the magic links in it
    lead straight out of the root (/proc/self/root is the host's /)."""
    kernel.mount("proc", str(tree.root / "proc"), "proc", kernel.MS_NOSUID | kernel.MS_NODEV)
    try:
        yield
    finally:
        kernel.umount2(str(tree.root / "proc"), kernel.MNT_DETACH)


@pytest.mark.parametrize("confine", [True, False], ids=["confined", "unconfined"])
def test_proc_magic_links_are_refused(
    proc_in_rootfs: None, tree: Tree, confine: bool, watch_outside: list[int]
) -> None:
    """The same directory as mount 0 and as an extra source (mount 1). The
    confined gofer binds both without their submounts: no proc there at all.
    Unconfined, mount 0 never steps onto another mount (the kernel's:
    KernelPath), and mount 1, resolved with RESOLVE_IN_ROOT alone, meets
    the magic links and refuses them."""
    with running(tree, confine=confine, mounts=[MountSource(str(tree.root))]) as g:
        c = g.client(ROOT)
        for mount, expected in ((0, KERNEL), (1, errno.ELOOP)):
            if confine:
                expected = errno.ENOENT
            paths = [
                "/proc_passwd",
                "/proc/self/root/etc/passwd",
                "/proc/1/root/etc/passwd",
                "/proc/self/cwd",
                "/proc/self/exe",
                f"/proc/self/root{tree.canary}",
                f"/proc/thread-self/root{tree.canary}",
            ]
            for path in paths:
                # /proc/1/...: the ptrace check on the host's init may come first (EACCES)
                allowed = {expected}
                if path.startswith("/proc/1/") and expected != KERNEL:
                    allowed.add(errno.EACCES)
                assert answer(c.open, path, os.O_RDONLY, mount=mount) in allowed, path
                assert answer(c.stat, path, mount=mount) in allowed, path
                assert answer(c.open, path, os.O_PATH, mount=mount) in allowed, path
            fd = os.open(tree.canary, os.O_PATH)  # an fd number the gofer may also hold
            try:
                for n in range(0, 8):
                    got = answer(c.stat, f"/proc/self/fd/{n}/", mount=mount)
                    assert got in (expected, errno.ENOENT), n
            finally:
                os.close(fd)
            got = answer(c.link, "/proc/self/root/etc/passwd", "/stolen", follow=True, mount=mount)
            assert got == expected
            assert answer(c.connect, "/proc/self/root/run/x.sock", mount=mount) == expected


def _swapper(tree: Tree, stop: threading.Event, counter: list[int]) -> None:
    """Keep exchanging <root>/race (a directory) with a symlink to the outside."""
    race = os.fsencode(tree.root / "race")
    swap = os.fsencode(tree.root / "race_swap")
    while not stop.is_set():
        kernel.renameat2(kernel.AT_FDCWD, race, kernel.AT_FDCWD, swap, kernel.RENAME_EXCHANGE)
        counter[0] += 1


@pytest.mark.parametrize("target", ["absolute", "relative"])
def test_racing_symlink_swap_never_leads_outside(
    any_client: GoferClient, tree: Tree, target: str, watch_outside: list[int]
) -> None:
    c = any_client
    os.symlink(str(tree.outside) if target == "absolute" else "../outside", tree.root / "race_swap")
    inside = host_id(tree.root / "race/canary")
    canary = tree.canary_id()
    stop = threading.Event()
    swaps = [0]
    thread = threading.Thread(target=_swapper, args=(tree, stop, swaps))
    thread.start()
    opened = failed = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            try:
                fd = c.open("/race/canary", os.O_RDONLY)
            except OSError as e:
                assert e.errno in (errno.ENOENT, errno.EAGAIN, errno.EXDEV, errno.ELOOP), e
                failed += 1
            else:
                got = fd_id(fd)
                os.close(fd)
                assert got != canary, "opened the canary outside the root"
                assert got == inside
                opened += 1
            try:
                st = c.stat("/race/canary")
                assert (st.dev, st.ino) != canary
            except OSError as e:
                assert e.errno in (errno.ENOENT, errno.EAGAIN, errno.EXDEV, errno.ELOOP), e
            with contextlib.suppress(OSError):
                c.chmod("/race/canary", 0o600)
            with contextlib.suppress(OSError):
                os.close(c.open("/race/planted", os.O_CREAT | os.O_WRONLY, 0o600))
            with contextlib.suppress(OSError):
                c.unlink("/race/planted")
    finally:
        stop.set()
        thread.join()
    assert swaps[0] > 100 and opened > 10, (swaps, opened, failed)


def test_rename_cannot_name_outside(
    any_client: GoferClient, tree: Tree, watch_outside: list[int]
) -> None:
    c = any_client
    for old, new in [
        ("/abs_outside/canary", "/stolen"),
        ("/up_outside/canary", "/stolen"),
        ("/../outside/canary", "/stolen"),
        ("/dir/file", "/abs_outside/planted"),
        ("/dir/file", "/up_outside/planted"),
        ("/dir/file", "/../outside/planted"),
        ("/dir/file", "/../../../outside/canary"),
    ]:
        assert errno_of(c.rename, old, new) == errno.ENOENT, (old, new)
        assert errno_of(c.rename, old, new, kernel.RENAME_EXCHANGE) == errno.ENOENT, (old, new)
    # renaming the escaping symlinks themselves is fine: they are the container's
    c.rename("/abs_canary", "/moved_link")
    assert os.readlink(tree.root / "moved_link") == str(tree.canary)
    assert errno_of(c.stat, "/moved_link") == errno.ENOENT


def test_hard_links_cannot_name_outside(
    any_client: GoferClient, tree: Tree, watch_outside: list[int]
) -> None:
    c = any_client
    assert errno_of(c.link, "/abs_canary", "/hl", follow=True) == errno.ENOENT
    assert errno_of(c.link, "/rel_canary", "/hl", follow=True) == errno.ENOENT
    assert errno_of(c.link, "/abs_outside/canary", "/hl") == errno.ENOENT
    assert errno_of(c.link, "/up_outside/canary", "/hl") == errno.ENOENT
    assert errno_of(c.link, "/../outside/canary", "/hl") == errno.ENOENT
    assert errno_of(c.link, "/dir/file", "/abs_outside/planted") == errno.ENOENT
    assert errno_of(c.link, "/dir/file", "/up_outside/planted", follow=True) == errno.ENOENT
    # without follow the escaping symlink itself is linked: still nothing outside
    c.link("/abs_canary", "/hl")
    assert stat.S_ISLNK(os.lstat(tree.root / "hl").st_mode)
    assert host_id(tree.root / "hl") != tree.canary_id()
    assert os.stat(tree.canary).st_nlink == 1


def test_the_confinement(gofer: Gofer, tree: Tree) -> None:
    status = status_of(gofer.pid)  # before any request: the gofer's own credentials
    mask = sum(1 << cap for cap in GOFER_CAPABILITIES)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[field], 16) == mask, field
    assert int(status["CapInh"], 16) == 0 and int(status["CapAmb"], 16) == 0
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    assert status["NSpid"].split()[-1] == "1"  # alone in a pid namespace of its own
    assert Path(f"/proc/{gofer.pid}/comm").read_text() == "gofer\n"
    # its root holds the container's files and its own /proc, nothing of the host
    root = Path(f"/proc/{gofer.pid}/root")
    assert sorted(os.listdir(root)) == ["proc", "root"]
    assert sorted(os.listdir(root / "root")) == sorted(os.listdir(tree.root))
    assert os.listdir(root / "proc") and all(
        n.isdigit() or n in ("self", "thread-self") for n in os.listdir(root / "proc")
    )
    assert [n for n in os.listdir(root / "proc") if n.isdigit()] == ["1"]
    with open(f"/proc/{gofer.pid}/mountinfo") as f:
        mountpoints = sorted(line.split()[4] for line in f)
    assert mountpoints == ["/", "/proc", "/root"]
    # no network: a loopback interface, and nothing else
    with open(f"/proc/{gofer.pid}/net/dev") as f:
        interfaces = [line.split(":")[0].strip() for line in f.readlines()[2:]]
    assert interfaces == ["lo"]
    # "/etc/passwd" is the container's, whoever asks
    assert read_fd(gofer.client(ROOT).open("/etc/passwd", os.O_RDONLY)).startswith(b"root:x")
    assert "confined" in gofer.report and "confined" in log_text(tree)


def test_unknown_and_malformed_requests_get_einval(gofer: Gofer, c: GoferClient) -> None:
    sock = gofer.sock
    good = p.encode_request(p.OP_STAT, 9, ROOT, (0,), (b"/etc/passwd",))

    def exchange(data: bytes, fds: list[int] | None = None) -> tuple[int, int, int, int]:
        if fds:
            sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", *fds))])
        else:
            sock.send(data)
        reply, anc, _flags, _addr = sock.recvmsg(p.MAX_REPLY, socket.CMSG_SPACE(4))
        assert not anc
        op, flags, _reserved, rid, err = p.REPLY.unpack_from(reply)
        return op, flags, rid, err

    unknown = bytearray(good)
    unknown[0] = 99
    bad_mount = bytearray(good)
    struct.pack_into("<H", bad_mount, 2, 7)
    nul = p.encode_request(p.OP_STAT, 9, ROOT, (0,), (b"/etc\0passwd",))
    assert exchange(b"\x01") == (0, 0, 0, errno.EINVAL)
    assert exchange(bytes(unknown)) == (99, 0, 9, errno.EINVAL)
    assert exchange(good[:-3]) == (p.OP_STAT, 0, 9, errno.EINVAL)
    assert exchange(good + b"junk") == (p.OP_STAT, 0, 9, errno.EINVAL)
    assert exchange(bytes(bad_mount)) == (p.OP_STAT, 0, 9, errno.EINVAL)
    assert exchange(nul) == (p.OP_STAT, 0, 9, errno.EINVAL)
    assert exchange(good[:8] + b"\0" * p.MAX_REQUEST) == (p.OP_STAT, 0, 9, errno.EINVAL)
    assert exchange(p.encode_request(p.OP_STAT, 9, ROOT, (0x1,), (b"/",))) == (
        p.OP_STAT,
        0,
        9,
        errno.EINVAL,
    )
    # an fd sent to the gofer is dropped by the kernel; the request is served
    extra = os.open("/dev/null", os.O_RDONLY)
    try:
        assert exchange(good, [extra]) == (p.OP_STAT, 0, 9, 0)
    finally:
        os.close(extra)
    # ...and the gofer goes on
    assert c.stat("/etc/passwd").size > 0


def test_the_gofer_leaks_no_fds(gofer: Gofer, c: GoferClient) -> None:
    def count() -> int:
        return len(os.listdir(f"/proc/{gofer.pid}/fd"))

    c.stat("/")  # the first request: credentials and buffers in place
    before = count()
    mine = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        c.stat("/etc/passwd")
        os.close(c.walk("/dir")[0])
        os.close(c.open("/dir/file", os.O_RDONLY))
        errno_of(c.open, "/missing", os.O_RDONLY)
        errno_of(c.open, "/secret", os.O_RDONLY, cred=USER)
        errno_of(c.rename, "/dir/file", "/missing/x")
        errno_of(c.link, "/file_link", "/dir/file", follow=True)
        errno_of(c.connect, "/secret")
        errno_of(c.bind, "/secret/x")
        os.close(c.bind("/run/s"))
        c.unlink("/run/s")
        errno_of(c.getxattr, "/dir/file", "user.none")
        c.statfs("/")
    assert count() == before
    assert len(os.listdir("/proc/self/fd")) == mine


def test_the_gofer_exits_when_the_sentry_hangs_up_and_dies_closed(tree: Tree) -> None:
    with running(tree) as g:
        c = g.client(ROOT)
        c.stat("/")
    assert g.status is not None and os.WIFEXITED(g.status) and os.WEXITSTATUS(g.status) == 0
    g2 = start(str(tree.root), log_fd=-1)
    try:
        c = g2.client(ROOT)
        os.kill(g2.pid, kernel.SIGKILL)
        os.waitpid(g2.pid, 0)
        g2.status = 0
        with pytest.raises(GoferGone) as info:
            c.stat("/")
        assert info.value.errno == errno.EIO
    finally:
        g2.sock.close()


def test_a_crash_in_an_operation_answers_eio_and_is_logged(tree: Tree) -> None:
    """A bug in an op (here: one that raises) must not take the loop down."""

    class Buggy(Server):
        def op_readlink(self, req: p.Request) -> tuple[bytes, int]:
            raise ZeroDivisionError("a bug")

        def op_mkdir(self, req: p.Request) -> tuple[bytes, int]:
            raise OSError("no errno")  # raised by Python, not the kernel

    ours, theirs = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
    log_r, log_w = os.pipe()
    root = os.open(tree.root, os.O_PATH | os.O_DIRECTORY)
    umask = os.umask(0o022)
    server = Buggy(theirs, [root], log_fd=log_w)
    os.umask(umask)
    thread = threading.Thread(target=server.serve)
    thread.start()
    try:
        c = GoferClient(ours, server.creds.own)  # the server's own: no switch on its thread
        assert errno_of(c.readlink, "/file_link") == errno.EIO
        assert errno_of(c.mkdir, "/x", 0o755) == errno.EIO
        assert c.stat("/etc/passwd").size > 0
    finally:
        ours.close()
        thread.join()
        server.close()
        theirs.close()
        os.close(root)
        os.close(log_w)
    with os.fdopen(log_r) as f:
        log = f.read()
    assert "readlink (request 1) failed: ZeroDivisionError('a bug')" in log
    assert "in op_readlink" in log and "mkdir (request 2) failed" in log


def test_stat_round_trip_time(c: GoferClient, capsys: pytest.CaptureFixture[str]) -> None:
    times = []
    for _ in range(3000):
        t0 = time.perf_counter_ns()
        c.stat("/etc/passwd")
        times.append(time.perf_counter_ns() - t0)
    times.sort()
    median = times[len(times) // 2]
    with capsys.disabled():
        print(f"\ngofer stat round trip: median {median} ns, p90 {times[len(times) * 9 // 10]} ns")
    assert median < 1_000_000


def test_a_directory_becomes_a_root_of_its_own(c: GoferClient, tree: Tree) -> None:
    """ROOT (chroot's): the directory's ``..`` and absolute symlinks stay inside
    it, and the same directory keeps its number."""
    jail = tree.root / "dir"
    os.symlink("/file", jail / "abs")
    os.symlink("../../../etc/passwd", jail / "up")
    number, dev, ino = c.add_root(b"/dir")
    assert number >= 1 and (dev, ino) == (os.stat(jail).st_dev, os.stat(jail).st_ino)
    assert c.add_root(b"/dir_link/")[0] == number  # the same directory, the same root
    assert c.stat(b"/abs", mount=number).ino == os.stat(jail / "file").st_ino
    assert errno_of(c.stat, b"/up", mount=number) == errno.ENOENT  # /etc is not in it
    assert c.stat(b"/../../file", mount=number).ino == os.stat(jail / "file").st_ino
    c.mkdir(b"/made", 0o700, mount=number)
    assert (jail / "made").is_dir() and not (tree.root / "made").exists()
    c.mount = number  # the default for requests that name no mount
    assert c.readlink(b"/abs") == b"/file"
    c.unlink(b"/abs")
    assert not (jail / "abs").exists()
    c.mount = 0
    assert errno_of(c.add_root, b"/etc/passwd") == errno.ENOTDIR
    assert errno_of(c.add_root, b"/missing") == errno.ENOENT
    assert errno_of(c.stat, b"/", mount=99) == errno.EINVAL
