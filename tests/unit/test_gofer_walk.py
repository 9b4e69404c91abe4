"""gofer/walk.py in this process: the lexical fast-path test, the kernel
mount list, and the canonical paths the walk finds in a small tree (the
integration tests compare the gofer's answers with the kernel's)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysandbox.gofer import protocol as p
from pysandbox.gofer.walk import MAXSYMLINKS, Walker, normalize_mounts

MOUNTS = ["/proc", "/etc/hosts", "/dev/pts"]


def test_kernel_mount_points_are_normalized() -> None:
    got = normalize_mounts(["/proc/", "//dev//pts", "/./etc/hosts", b"/sys/fs/cgroup"])
    assert got == {b"/proc", b"/dev/pts", b"/etc/hosts", b"/sys/fs/cgroup"}
    for bad in ("proc", "/", "//", "/a/../b", ""):
        with pytest.raises(ValueError):
            normalize_mounts([bad])


@pytest.mark.parametrize(
    ("path", "plain"),
    [
        (b"/etc/passwd", True),
        (b"etc/passwd", True),
        (b"/", True),
        (b"", True),
        (b"/dev", True),
        (b"/dev/", True),
        (b"/dev/ptsx", True),
        (b"/procfs/x", True),
        (b"/etc/hosts.d", True),
        (b"/x/proc", True),
        (b"/.proc", True),
        (b"/a/..b", True),
        (b"/...", True),
        (b"/proc", False),
        (b"/proc/", False),
        (b"/proc/self/status", False),
        (b"proc/self", False),
        (b"./proc", False),
        (b"//proc", False),
        (b"/./proc/.", False),
        (b"/dev/pts", False),
        (b"/dev//pts/0", False),
        (b"/etc/hosts", False),
        (b"/etc/hosts/", False),
        (b"/..", False),
        (b"/a/../b", False),
        (b"..", False),
        (b"a/..", False),
    ],
)
def test_the_fast_path_takes_no_dotdot_and_no_kernel_mount(path: bytes, plain: bool) -> None:
    assert Walker(-1, MOUNTS).plain(path) is plain
    # with no kernel mounts only ".." leads to the walk
    assert Walker(-1).plain(path) is (b".." not in path.split(b"/"))


@pytest.fixture
def walker(tmp_path: Path) -> Iterator[Walker]:
    r = tmp_path
    for d in ("etc", "dir/sub", "proc", "dev/pts", "locked"):
        (r / d).mkdir(parents=True)
    (r / "etc/passwd").write_text("x\n")
    (r / "etc/hosts").write_text("x\n")
    (r / "dir/sub/file").write_text("x\n")
    links = {
        "rel": "dir/sub/file",
        "abs": "/dir/sub/file",
        "sub_link": "dir/sub",
        "dir/sub/up": "..",
        "dangling": "dir/new",
        "dangling_slash": "dir/newdir/",
        "loop": "loop",
        "etc/mtab": "../proc/self/mounts",
        "x": "/proc",
        "hosts": "etc/hosts",
    }
    for i in range(MAXSYMLINKS + 1):
        links[f"n{i}"] = f"n{i + 1}" if i < MAXSYMLINKS else "dir/sub/file"
    for name, target in links.items():
        os.symlink(target, r / name)
    root = os.open(r, os.O_PATH | os.O_DIRECTORY)
    fds = set(os.listdir("/proc/self/fd"))
    try:
        yield Walker(root, MOUNTS)
        assert set(os.listdir("/proc/self/fd")) == fds  # the walk leaks no fd
    finally:
        os.close(root)


def errno_of(fn: object, *args: object) -> int:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as e:
        assert e.errno is not None
        return e.errno
    return 0


@pytest.mark.parametrize(
    ("path", "follow", "canonical"),
    [
        (b"/rel", True, b"/dir/sub/file"),
        (b"/rel", False, b"/rel"),
        (b"/rel/", False, b"/dir/sub/file/"),  # a trailing slash follows, and says "directory"
        (b"abs", True, b"/dir/sub/file"),
        (b"/sub_link/..", True, b"/dir"),  # the physical parent
        (b"/sub_link/up/sub/up/..", False, b"/"),
        (b"/../../etc/passwd", True, b"/etc/passwd"),
        (b"/dir/sub/../..", True, b"/"),
        (b"/dir/", True, b"/dir/"),
        (b"/dir/.", False, b"/dir/"),
        (b"//dir//sub/./file", True, b"/dir/sub/file"),
        (b"/missing", True, b"/missing"),
        (b"/dir/missing/", True, b"/dir/missing/"),
        (b"/dangling", True, b"/dir/new"),
        (b"/dangling", False, b"/dangling"),
        (b"/dangling_slash", True, b"/dir/newdir/"),
        (b"/etc/passwd/", True, b"/etc/passwd/"),  # ENOTDIR is the operation's
        (b"/etc/mtab", False, b"/etc/mtab"),
        (b"/x", False, b"/x"),
        (b"/hosts", False, b"/hosts"),
        (b"/n1", True, b"/dir/sub/file"),  # MAXSYMLINKS links
        (b"/dev", True, b"/dev"),
        (b"/dev/ptsx", True, b"/dev/ptsx"),
        (b"/", True, b"/"),
        (b".", True, b"/"),
    ],
)
def test_canonical_paths(walker: Walker, path: bytes, follow: bool, canonical: bytes) -> None:
    assert walker.walk(path, follow) == canonical


@pytest.mark.parametrize(
    ("path", "follow", "err"),
    [
        (b"", True, errno.ENOENT),
        (b"/n0", True, errno.ELOOP),  # one link more than the kernel follows
        (b"/loop", True, errno.ELOOP),
        (b"/loop/x", False, errno.ELOOP),
        (b"/rel/x", True, errno.ENOTDIR),
        (b"/etc/passwd/x", False, errno.ENOTDIR),
        (b"/missing/x", True, errno.ENOENT),
        (b"/dangling/x", True, errno.ENOENT),
        (b"/" + b"n" * 256 + b"/x", True, errno.ENAMETOOLONG),
        (b"/proc", False, p.KERNEL_SERVED),
        (b"/proc/self/status", True, p.KERNEL_SERVED),
        (b"/etc/mtab", True, p.KERNEL_SERVED),
        (b"/etc/mtab/", False, p.KERNEL_SERVED),
        (b"/x/self", False, p.KERNEL_SERVED),
        (b"/etc/../proc", True, p.KERNEL_SERVED),
        (b"/hosts", True, p.KERNEL_SERVED),
        (b"/etc/hosts", False, p.KERNEL_SERVED),
        (b"/dev/pts/0", False, p.KERNEL_SERVED),
        (b"/sub_link/up/../dev/pts", False, p.KERNEL_SERVED),
    ],
)
def test_walk_errors(walker: Walker, path: bytes, follow: bool, err: int) -> None:
    assert errno_of(walker.walk, path, follow) == err


def test_walk_parent(walker: Walker) -> None:
    assert walker.walk_parent(b"/sub_link/up/f", b"/sub_link/up", b"f") == b"/dir"
    assert walker.walk_parent(b"/rel2", b"/", b"rel2") == b"/"
    assert walker.walk_parent(b"sub_link/new/", b"sub_link", b"new/") == b"/dir/sub"
    assert errno_of(walker.walk_parent, b"/proc", b"/", b"proc") == p.KERNEL_SERVED
    assert errno_of(walker.walk_parent, b"/dev/pts/", b"/dev", b"pts/") == p.KERNEL_SERVED
    assert errno_of(walker.walk_parent, b"/x/new", b"/x", b"new") == p.KERNEL_SERVED
    assert errno_of(walker.walk_parent, b"/hosts/x", b"/hosts", b"x") == p.KERNEL_SERVED
    # the name itself is never followed: a symlink into a kernel mount is the root's
    assert walker.walk_parent(b"/etc/mtab", b"/etc", b"mtab") == b"/etc"
    assert walker.walk_parent(b"/x", b"/", b"x") == b"/"
    assert errno_of(walker.walk_parent, b"/rel/x", b"/rel", b"x") == 0  # ENOTDIR: the open's
    assert walker.walk_parent(b"/rel/x", b"/rel", b"x") == b"/dir/sub/file"


def test_plain_answers_are_remembered_within_a_bound() -> None:
    w = Walker(-1, MOUNTS)
    for _ in range(2):
        assert not w.plain(b"/proc/self") and w.plain(b"/etc/passwd")
        assert not w.plain(b"/a/../etc/passwd")
    for i in range(5000):
        assert w.plain(b"/tmp/%d" % i)
    assert len(w._known) <= 4096
    assert not w.plain(b"/proc/self") and not w.plain(b"/x/..")
