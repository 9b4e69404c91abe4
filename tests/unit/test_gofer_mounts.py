"""gofer/mounts.py's plan (which mounts the gofer serves) and gofer/walk.py's
walks into served mounts, in this process on a small tree (the integration
tests run them in containers, against runc: tests/integration/test_bind_mounts.py)."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysandbox.gofer import protocol as p
from pysandbox.gofer.mounts import ServedMount, mount_flags, mountinfo_mounts, plan_mounts
from pysandbox.gofer.walk import FILE_NAME, FILE_RESOLVE, RESOLVE_ROOTFS, Walker
from pysandbox.oci import kernel
from tests.unit.test_gofer_walk import errno_of

# --- the plan ------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for d in ("proc", "dev/pts", "dev/shm", "data/sub", "run", "mnt/fuse", "srv"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/hosts").write_text("")
    return tmp_path


RW = ["rw", "relatime"]


def test_binds_are_served_and_the_kernels_own_file_systems_are_not(root: Path) -> None:
    plan = plan_mounts(
        [
            ("/proc", "proc", ["rw", "nosuid"]),
            ("/dev", "tmpfs", ["rw", "nosuid"]),
            ("/dev/pts", "devpts", RW),
            ("/dev/shm", "ext4", RW),  # a bind below the kernel's /dev: the kernel's too
            ("/etc/hosts", "ext4", ["rw", "nosuid", "noexec", "relatime"]),
            ("/data", "xfs", ["ro", "noatime"]),
            ("/data/sub", "tmpfs", RW),  # a host tmpfs bound in: host files, served
            ("/run", "tmpfs", RW),  # config.json's own tmpfs: the kernel's
            ("/mnt/fuse", "fuse.sshfs", RW),
            ("/sys/fs/cgroup", "cgroup2", RW),
        ],
        ["/dev", "run/"],
        str(root),
    )
    assert plan.served == (
        ServedMount("/etc/hosts", True, kernel.MS_NOSUID | kernel.MS_NOEXEC | kernel.MS_RELATIME),
        ServedMount("/data", False, kernel.MS_RDONLY | kernel.MS_NOATIME),
        ServedMount("/data/sub", False, kernel.MS_RELATIME),
    )
    assert plan.served[1].readonly and not plan.served[0].readonly
    assert plan.kernel == (
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/run",
        "/mnt/fuse",
        "/sys/fs/cgroup",
    )


def test_hidden_mounts_are_left_out(root: Path) -> None:
    plan = plan_mounts(
        [
            ("/data/sub", "ext4", RW),
            ("/data", "ext4", RW),  # on top of /data/sub: that one is out of sight
            ("/srv", "ext4", RW),
            ("/srv", "tmpfs", RW),  # the same point twice: the last is on top
        ],
        ["/srv"],
        str(root),
    )
    assert [m.point for m in plan.served] == ["/data"]
    assert plan.kernel == ("/srv",)


def test_a_point_that_cannot_be_looked_at_is_the_kernels(root: Path) -> None:
    plan = plan_mounts([("/gone", "ext4", RW)], [], str(root))
    assert plan.served == () and plan.kernel == ("/gone",)


def test_mountinfo_lines(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "76 47 0:44 / / ro,relatime - overlay overlay rw,lowerdir=/x\n"
        "83 76 254:0 /srv/a\\040b /my\\040vol rw,nosuid shared:7 - ext4 /dev/vda rw\n"
        "not a mountinfo line\n"
    )
    assert mountinfo_mounts(str(info)) == [
        ("/", "overlay", ["ro", "relatime"]),
        ("/my vol", "ext4", ["rw", "nosuid"]),
    ]


def test_mount_flags() -> None:
    assert mount_flags(["ro", "nodev", "nosuid", "strictatime", "x-y"]) == (
        kernel.MS_RDONLY | kernel.MS_NOSUID | kernel.MS_STRICTATIME
    )


# --- walks into served mounts -------------------------------------------------------------


@pytest.fixture
def walker(tmp_path: Path) -> Iterator[Walker]:
    """A root with /vol (a directory mount point) and /etc/note (a file one),
    and their sources beside it: a volume with links that lead back into the
    root, and a file mount's directory holding the file as FILE_NAME."""
    r = tmp_path / "root"
    for d in ("etc", "vol", "proc"):
        (r / d).mkdir(parents=True)
    (r / "etc/passwd").write_text("root\n")
    (r / "etc/note").write_text("")
    vol = tmp_path / "volume"
    (vol / "a/b").mkdir(parents=True)
    (vol / "a/b/c").write_text("c\n")
    os.symlink("..", vol / "up")
    os.symlink("/etc", vol / "abs")
    os.symlink("../../../../..", vol / "esc")
    os.symlink("a/b", vol / "ab")
    (vol / "proc").mkdir()
    wrapper = tmp_path / "note-mount"
    wrapper.mkdir()
    (wrapper / os.fsdecode(FILE_NAME)).write_text("note\n")
    fds = [os.open(d, os.O_PATH | os.O_DIRECTORY) for d in (r, vol, wrapper)]
    before = set(os.listdir("/proc/self/fd"))
    try:
        yield Walker(
            fds[0],
            ["/proc", "/vol/proc"],
            {b"/vol": (fds[1], False), b"/etc/note/": (fds[2], True)},
        )
        assert set(os.listdir("/proc/self/fd")) == before  # the walk leaks no fd
    finally:
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize(
    ("path", "follow", "canonical"),
    [
        (b"/vol/a/b/c", True, b"/vol/a/b/c"),
        (b"/vol/ab/c", True, b"/vol/a/b/c"),
        (b"/vol", True, b"/vol"),
        (b"/vol", False, b"/vol"),
        (b"/vol/", False, b"/vol"),
        (b"/vol/a/..", True, b"/vol"),
        (b"/vol/..", True, b"/"),  # the mount point's parent, not the volume's
        (b"/vol/up/etc/passwd", True, b"/etc/passwd"),
        (b"/vol/abs/passwd", True, b"/etc/passwd"),  # an absolute link: the container's root
        (b"/vol/esc", True, b"/"),
        (b"/vol/a/b/../../../etc", True, b"/etc"),
        (b"/etc/note", True, b"/etc/note"),
        (b"/etc/note", False, b"/etc/note"),
        (b"/etc/note/", True, b"/etc/note/"),  # ENOTDIR is the operation's
        (b"/etc/../vol/a", True, b"/vol/a"),
    ],
)
def test_walks_enter_served_mounts(
    walker: Walker, path: bytes, follow: bool, canonical: bytes
) -> None:
    assert not walker.plain(path)  # the fast path never skips a served mount
    assert walker.walk(path, follow) == canonical


@pytest.mark.parametrize(
    ("path", "err"),
    [
        (b"/etc/note/x", errno.ENOTDIR),
        (b"/vol/missing/x", errno.ENOENT),
        (b"/vol/proc/self", p.KERNEL_SERVED),  # a kernel mount inside a served one
        (b"/vol/up/proc", p.KERNEL_SERVED),
    ],
)
def test_walk_errors_in_served_mounts(walker: Walker, path: bytes, err: int) -> None:
    assert errno_of(walker.walk, path, True) == err


def test_place_finds_the_mount_a_canonical_path_is_in(walker: Walker) -> None:
    vol = walker.served[b"/vol"][0]
    note = walker.served[b"/etc/note"][0]
    assert walker.place(b"/vol/a/b") == (vol, b"/a/b", RESOLVE_ROOTFS)
    assert walker.place(b"/vol") == (vol, b".", RESOLVE_ROOTFS)
    assert walker.place(b"/vol/") == (vol, b"/", RESOLVE_ROOTFS)
    assert walker.place(b"/etc/note") == (note, FILE_NAME, FILE_RESOLVE)
    assert walker.place(b"/etc/note/") == (note, FILE_NAME + b"/", FILE_RESOLVE)
    assert walker.place(b"/volume") == (walker.root, b"/volume", RESOLVE_ROOTFS)
    assert walker.place(b"/etc/passwd") == (walker.root, b"/etc/passwd", RESOLVE_ROOTFS)


def test_a_mount_point_as_a_name(walker: Walker) -> None:
    assert errno_of(walker.walk_parent, b"/vol", b"/", b"vol") == p.KERNEL_SERVED
    assert errno_of(walker.walk_parent, b"/etc/note", b"/etc", b"note") == p.KERNEL_SERVED
    assert walker.walk_parent(b"/etc/note", b"/etc", b"note", True) == b"/etc"
    assert walker.names_point(b"/etc", b"note") and walker.names_point(b"/", b"vol/")
    assert not walker.names_point(b"/vol", b"a")
    assert walker.walk_parent(b"/vol/new", b"/vol", b"new") == b"/vol"
    assert walker.walk_parent(b"/vol/up/x", b"/vol/up", b"x") == b"/"


@pytest.mark.parametrize(
    ("path", "fast"),
    [
        (b"/vol/a/b/c", (b"/vol", b"/a/b/c", b"/.")),
        (b"/vol", (b"/vol", b".", b"/.")),
        (b"/etc/note", (b"/etc/note", FILE_NAME, b"/etc/.")),
        (b"/etc/note/x", None),  # ENOTDIR: the walk's to say
        (b"/vol/a/", None),
        (b"/vol/a/.", None),
        (b"/vol//a", None),
        (b"/vol/./a", None),
        (b"/vol/a/../b", None),
        (b"vol/a", None),
        (b"/vol/proc/x", None),  # a kernel mount on the way
        (b"/volume/x", None),
        (b"/etc/passwd", None),
    ],
)
def test_the_fast_path_into_served_mounts(
    walker: Walker, path: bytes, fast: tuple[bytes, bytes, bytes] | None
) -> None:
    got = walker.into_served(path)
    if fast is None:
        assert got is None
        return
    point, rel, above = fast
    fd, file = walker.served[point]
    assert got == (fd, rel, above, FILE_RESOLVE if file else RESOLVE_ROOTFS)


def test_no_fast_path_into_a_mount_inside_another(tmp_path: Path) -> None:
    fds = [os.open(tmp_path, os.O_PATH | os.O_DIRECTORY) for _ in range(3)]
    try:
        w = Walker(fds[0], (), {b"/a": (fds[1], False), b"/a/b": (fds[2], False)})
        assert w.into_served(b"/a/x") == (fds[1], b"/x", b"/.", RESOLVE_ROOTFS)
        assert w.into_served(b"/a/b/x") is None  # /a/b's search permission is /a's
        assert w.into_served(b"/a/b") is None
    finally:
        for fd in fds:
            os.close(fd)
