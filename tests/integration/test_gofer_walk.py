"""The gofer's path walk (gofer/walk.py), for real: symlinks, ``..`` and the
container's kernel mounts, through confined and unconfined gofer processes.

Wherever the gofer serves the answer, the reference is the kernel itself: a
forked child chroot()s into the same tree and makes the same call, and both
must give the same errno and the same object (st_ino). The chroot's tree has
no mounts, so the kernel mounts (/proc, the file /etc/hosts, /dev/pts) are
plain directories and files there: a path that leads into one must be
answered KernelPath by the gofer, and is not compared.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pysandbox.gofer import protocol as p
from pysandbox.gofer.client import GoferClient, KernelPath
from pysandbox.gofer.process import Gofer, start
from pysandbox.oci import kernel
from tests.forked import run_in_child

ALL_CAPS = (1 << (kernel.cap_last_cap() + 1)) - 1
ROOT = p.Credentials(0, 0, (), ALL_CAPS)
USER = p.Credentials(1000, 1000, (), 0)
KERNEL_MOUNTS = ["/proc", "/etc/hosts", "/dev/pts"]
KERNEL = "kernel"
R_OK, W_OK, X_OK = os.R_OK, os.W_OK, os.X_OK
# An answer: ["kernel"], [errno], or [0, st_ino or readlink target (hex)].
Answer = list[object]
# (call, path, its integer argument: O_ flags or access mode, follow the last component)
Op = tuple[str, str, int, bool]


def build(root: Path) -> None:
    """The tree both the gofer and the chroot reference look at."""
    for d in ("etc", "dir/sub", "proc", "dev/pts", "home/user", "locked/in"):
        (root / d).mkdir(parents=True)
    (root / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (root / "etc/hosts").write_text("the file a container's hosts is bound over\n")
    (root / "dir/file").write_text("file\n")
    (root / "dir/sub/file").write_text("sub file\n")
    (root / "secret").write_text("root only\n")
    (root / "secret").chmod(0o600)
    (root / "tool").write_text("#!/bin/sh\n")
    (root / "tool").chmod(0o755)
    (root / "locked").chmod(0o700)  # root's: uid 1000 may not search it
    (root / "locked/inner").write_text("behind a locked door\n")
    os.chown(root / "home/user", 1000, 1000)
    links = {
        "abs_file": "/dir/sub/file",
        "rel_file": "dir/sub/file",
        "chain1": "chain2",
        "chain2": "/chain3",
        "chain3": "rel_file",
        "dir_link": "dir",
        "dir_link_slash": "dir/",
        "sub_link": "/dir/sub",
        "dir/sub/up": "..",
        "dir/sub/to_etc": "../../etc",
        "dir/sub/root": "/",
        "dir/sub/dot": ".",
        "loop_a": "loop_b",
        "loop_b": "loop_a",
        "self_loop": "self_loop/x",
        "dangling": "dir/created",
        "dangling_abs": "/dir/created_abs",
        "dangling_deep": "/nodir/x",
        "dangling_slash": "dir/newdir/",
        "escape": "../../../../etc/passwd",
        "locked_link": "locked/inner",
        "locked_up": "locked/in/..",
        "etc/mtab": "../proc/self/mounts",
        "rel_mtab": "etc/mtab",
        "mounts_abs": "/proc/self/mounts",
        "dev/fd": "/proc/self/fd",
        "x": "/proc",
        "hosts_link": "etc/hosts",
        "pts_link": "dev/pts",
        "dev_link": "/dev",
    }
    for i in range(41):  # n0 -> n1 -> ... -> n40 -> the file: n0 follows 41 links
        links[f"n{i}"] = f"n{i + 1}" if i < 40 else "dir/sub/file"
    for name, target in links.items():
        os.symlink(target, root / name)


# Paths whose answer is the kernel's: when the last component is followed
# (stat, open, access), and when it is not (lstat, O_NOFOLLOW, readlink's name).
KERNEL_EITHER_WAY = {
    "/proc",
    "/proc/",
    "/proc/self/status",
    "proc/self",
    "/./proc",
    "//proc//",
    "/etc/../proc/x",
    "/dir/sub/../../proc",
    "/dir/sub/up/../proc/1",
    "/dir/sub/root/proc",
    "/dev/fd/0",
    "/proc/self",
    "/x/self",
    "/x/self/exe",
    "/etc/mtab/",
    "/dev/pts",
    "/dev/pts/0",
    "/pts_link/0",
    "/dev_link/pts/ptmx",
    "/etc/hosts",
    "/etc/hosts/",
    "/etc/hosts/x",
    "/dir/sub/to_etc/hosts",
}
KERNEL_WHEN_FOLLOWED = {"/etc/mtab", "/rel_mtab", "/mounts_abs", "/dev/fd", "/x", "/hosts_link"}
SERVED = [
    "/",
    "",
    "/etc/passwd",
    "etc/passwd",
    "//etc//passwd",
    "/./etc/./passwd",
    "/etc/passwd/",
    "/etc/passwd/.",
    "/etc/passwd/x",
    "/dir/",
    "/dir/.",
    "/dir//sub/",
    "/abs_file",
    "/rel_file",
    "/rel_file/",
    "/rel_file/x",
    "/chain1",
    "/chain1/",
    "/dir_link",
    "/dir_link/",
    "/dir_link/.",
    "/dir_link_slash",
    "/dir_link/sub/file",
    "/sub_link/..",
    "/sub_link/../file",
    "/dir/sub/up/sub/file",
    "/dir/sub/to_etc/passwd",
    "/dir/sub/dot/dot/file",
    "/dir/sub/root/etc/passwd",
    "/escape",
    "/loop_a",
    "/loop_a/x",
    "/self_loop",
    "/n0",
    "/n1",
    "/n0/",
    "/..",
    "/../../etc/passwd",
    "/dir/../..",
    "/dir/sub/../../../etc/passwd",
    "/missing",
    "/missing/",
    "/missing/x",
    "/dangling",
    "/dangling/",
    "/dangling_deep",
    "/dev",
    "/dev/",
    "/dev/ptsx",
    "/etc/hostsx",
    "/procx/self",
    "/dev_link",
    "/dir/" + "n" * 256,
    "/" + "n" * 256 + "/x",
    "/secret",
    "/tool",
    "/locked/inner",
    "/locked_link",
    "/locked_up",
    "/locked/../etc/passwd",
]


def expect_kernel(path: str, follow: bool) -> bool:
    return path in KERNEL_EITHER_WAY or (follow and path in KERNEL_WHEN_FOLLOWED)


def object_ops(paths: list[str]) -> list[Op]:
    ops: list[Op] = []
    for path in paths:
        ops += [
            ("stat", path, 0, True),
            ("stat", path, 0, False),
            ("access", path, os.F_OK, True),
            ("access", path, R_OK | W_OK, True),
            ("access", path, X_OK, True),
            ("access", path, W_OK, False),
        ]
        for flags in (
            os.O_RDONLY,
            os.O_PATH,
            os.O_PATH | os.O_NOFOLLOW,
            os.O_RDONLY | os.O_NOFOLLOW,
            os.O_RDONLY | os.O_DIRECTORY,
        ):
            ops.append(("open", path, flags, not flags & os.O_NOFOLLOW))
    return ops


READLINKS = [
    "/rel_file",
    "/etc/mtab",
    "/x",
    "/dev/fd",
    "/hosts_link",
    "/dir_link/../chain2",
    "/sub_link/up",
    "/etc/passwd",
    "/missing",
    "/proc",
    "/proc/self",
    "/dev/fd/0",
    "/etc/hosts",
    "/x/self/exe",
]


def gofer_answer(c: GoferClient, op: Op, cred: p.Credentials) -> Answer:
    kind, path, arg, follow = op
    try:
        if kind == "stat":
            return [0, c.stat(path, follow=follow, cred=cred).ino]
        if kind == "open":
            fd = c.open(path, arg, cred=cred)
            try:
                return [0, os.fstat(fd).st_ino]
            finally:
                os.close(fd)
        if kind == "access":
            c.access(path, arg, follow=follow, cred=cred)
            return [0]
        assert kind == "readlink"
        return [0, c.readlink(path, cred=cred).hex()]
    except KernelPath as e:
        assert e.path == os.fsencode(path)
        return [KERNEL]
    except OSError as e:
        return [e.errno]


def kernel_answers(root: Path, ops: list[Op], uid: int = 0) -> list[Answer]:
    """The same calls, made by the kernel in a child chroot()ed into ``root``."""

    def child() -> list[Answer]:
        os.chroot(root)
        os.chdir("/")
        if uid:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        out: list[Answer] = []
        for kind, name, arg, follow in ops:
            path = os.fsencode(name)
            try:
                if kind == "stat":
                    out.append([0, os.stat(path, follow_symlinks=follow).st_ino])
                elif kind == "open":
                    fd = os.open(path, arg | os.O_CLOEXEC)
                    out.append([0, os.fstat(fd).st_ino])
                    os.close(fd)
                elif kind == "access":
                    flags = kernel.AT_EACCESS | (0 if follow else kernel.AT_SYMLINK_NOFOLLOW)
                    kernel.faccessat2(kernel.AT_FDCWD, path, arg, flags)
                    out.append([0])
                else:
                    out.append([0, os.readlink(path).hex()])
            except OSError as e:
                out.append([e.errno])
        return out

    status, result = run_in_child(child)
    assert status == 0 and isinstance(result, list), result
    return result


@pytest.fixture(params=["confined", "unconfined"])
def gofer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Gofer]:
    build(tmp_path / "rootfs")
    log = os.open(tmp_path / "gofer.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        g = start(
            str(tmp_path / "rootfs"),
            confine=request.param == "confined",
            log_fd=log,
            kernel_mounts=KERNEL_MOUNTS,
        )
    finally:
        os.close(log)
    try:
        yield g
    finally:
        status = g.stop()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
            status,
            (tmp_path / "gofer.log").read_text(),
        )


def compare(c: GoferClient, root: Path, ops: list[Op], cred: p.Credentials, uid: int) -> None:
    got = [gofer_answer(c, op, cred) for op in ops]
    served = [(op, answer) for op, answer in zip(ops, got, strict=True) if answer != [KERNEL]]
    reference = kernel_answers(root, [op for op, _a in served], uid)
    mismatches = [
        (op, answer, ref)
        for (op, answer), ref in zip(served, reference, strict=True)
        if answer != ref
    ]
    assert not mismatches, "\n".join(f"{op}: gofer {a}, kernel {r}" for op, a, r in mismatches)
    wrong_kernel = [
        (op, answer)
        for op, answer in zip(ops, got, strict=True)
        if (answer == [KERNEL]) != expect_kernel(op[1], op[3])
    ]
    assert not wrong_kernel, wrong_kernel


def test_object_ops_match_the_kernel(gofer: Gofer, tmp_path: Path) -> None:
    paths = SERVED + sorted(KERNEL_EITHER_WAY) + sorted(KERNEL_WHEN_FOLLOWED)
    # readlink never follows the last component
    ops = object_ops(paths) + [("readlink", path, 0, False) for path in READLINKS]
    compare(gofer.client(ROOT), tmp_path / "rootfs", ops, ROOT, 0)


def test_as_a_user_the_walk_is_judged_by_the_callers_rights(gofer: Gofer, tmp_path: Path) -> None:
    paths = [
        "/locked/inner",
        "/locked_link",
        "/locked_up",
        "/locked/../etc/passwd",
        "/locked/in/../../x",
        "/secret",
        "/tool",
        "/rel_file",
        "/etc/mtab",
        "/home/user",
    ]
    compare(gofer.client(USER), tmp_path / "rootfs", object_ops(paths), USER, 1000)


def test_the_answers_that_matter(gofer: Gofer, tmp_path: Path) -> None:
    """The cases the reference comparison covers, stated outright."""
    c = gofer.client(ROOT)
    root = tmp_path / "rootfs"

    def answer(fn: Callable[..., object], *args: object, **kwargs: object) -> object:
        try:
            result = fn(*args, **kwargs)
        except KernelPath:
            return KERNEL
        except OSError as e:
            return e.errno
        if isinstance(result, int):
            os.close(result)
            return 0
        return 0 if result is None else result

    ino = {name: os.lstat(root / name).st_ino for name in ("dir", "dir/sub/file", "dev", "x")}
    assert c.stat("/n1").ino == ino["dir/sub/file"]  # 40 links: the kernel's limit
    assert answer(c.stat, "/n0") == errno.ELOOP  # 41
    assert answer(c.stat, "/loop_a") == errno.ELOOP
    assert c.stat("/sub_link/..").ino == ino["dir"]  # the physical parent, as Linux
    assert c.stat("/../../..").ino == os.stat(root).st_ino
    assert answer(c.stat, "/etc/passwd/") == errno.ENOTDIR
    assert answer(c.stat, "/rel_file/x") == errno.ENOTDIR
    assert c.stat("/dev").ino == ino["dev"]  # /dev itself is no kernel mount here
    assert c.stat("/x", follow=False).ino == ino["x"]  # the symlink, not /proc
    assert c.readlink("/etc/mtab") == b"../proc/self/mounts"
    for path in ("/proc/self/status", "/proc", "/mounts_abs", "/etc/mtab", "/etc/../proc/x"):
        assert answer(c.stat, path) == KERNEL, path
    for path in ("/dev/pts/0", "/etc/hosts", "/dev/fd/0", "/x"):
        assert answer(c.open, path, os.O_RDONLY) == KERNEL, path
        assert answer(c.access, path, R_OK) == KERNEL, path
    assert answer(c.open, "/rel_file", os.O_RDONLY | os.O_NOFOLLOW) == errno.ELOOP
    assert answer(c.open, "/rel_file", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600) == errno.EEXIST
    assert answer(c.access, "/secret", R_OK, cred=USER) == errno.EACCES
    assert answer(c.access, "/locked_link", os.F_OK, cred=USER) == errno.EACCES
    assert answer(c.access, "/tool", X_OK, cred=USER) == 0
    assert answer(c.access, "/secret", X_OK) == errno.EACCES  # root too needs an x bit
    with pytest.raises(KernelPath) as info:
        c.stat("/x/self")
    assert not isinstance(info.value, OSError) and info.value.path == b"/x/self"


# --- operations that change the tree: the gofer on one copy, the kernel on another


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    out: dict[str, tuple[int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else ""
            out[os.path.relpath(full, root)] = (stat.S_IFMT(st.st_mode), target)
    return out


CHANGES: list[tuple[str, tuple[object, ...]]] = [
    ("open", ("/dangling", os.O_CREAT | os.O_WRONLY, 0o600)),
    ("open", ("/dangling_abs", os.O_CREAT | os.O_WRONLY, 0o600)),
    ("open", ("/dangling_deep", os.O_CREAT | os.O_WRONLY, 0o600)),
    ("open", ("/dangling_slash", os.O_CREAT | os.O_WRONLY, 0o600)),
    ("open", ("/rel_file", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)),
    ("open", ("/loop_a", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)),
    ("open", ("/dir_link/sub/new", os.O_CREAT | os.O_WRONLY, 0o600)),
    ("open", ("/sub_link/up/new2", os.O_CREAT | os.O_WRONLY, 0o600)),
    ("open", ("/dir/newfile/", os.O_CREAT | os.O_WRONLY, 0o600)),
    ("open", ("/dir_link/../escape", os.O_CREAT | os.O_WRONLY, 0o600)),
    ("mkdir", ("/dir_link/sub/made", 0o755)),
    ("mkdir", ("/dir/sub/up/made2", 0o755)),
    ("mkdir", ("/sub_link/../made3/", 0o755)),
    ("mkdir", ("/dangling", 0o755)),
    ("mkdir", ("/rel_file/x", 0o755)),
    ("mkdir", ("/loop_a/x", 0o755)),
    ("unlink", ("/dir_link/file",)),
    ("unlink", ("/sub_link/up/sub/to_etc",)),
    ("unlink", ("/dir_link",)),
    ("unlink", ("/etc/mtab",)),  # the symlink itself: a file of the root
    ("rmdir", ("/chain1/",)),
    ("rmdir", ("/sub_link/dot/up/sub",)),
    ("symlink", ("target", "/sub_link/newlink")),
    ("rename", ("/abs_file", "/sub_link/../renamed")),
    ("link", ("/chain1", "/dir_link/hard")),
    ("readlink_noop", ("/dir/sub/up",)),
]
KERNEL_CHANGES: list[tuple[str, tuple[object, ...]]] = [
    ("mkdir", ("/proc", 0o755)),
    ("mkdir", ("/proc/x", 0o755)),
    ("mkdir", ("/x/new", 0o755)),
    ("mkdir", ("/dev/pts/", 0o755)),
    ("unlink", ("/hosts_link/x",)),
    ("link", ("/etc/passwd", "/dev/pts/l")),
    ("symlink", ("t", "/x/l")),
    ("mknod", ("/dev/fd/fifo", stat.S_IFIFO | 0o600)),
    ("open", ("/mounts_abs", os.O_CREAT | os.O_WRONLY, 0o600)),
    ("open", ("/x/new", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)),
    ("bind", ("/proc/sock",)),
]


# Removing or renaming a mount point: Linux's EBUSY (the parent is writable),
# EISDIR or ENOTDIR for the wrong kind, answered by the gofer itself.
MOUNT_POINT_CHANGES: list[tuple[str, tuple[Any, ...], int]] = [
    ("unlink", ("/etc/hosts",), errno.EBUSY),
    ("rmdir", ("/etc/hosts",), errno.ENOTDIR),
    ("unlink", ("/dev/pts",), errno.EISDIR),
    ("rmdir", ("/dev/pts",), errno.EBUSY),
    ("rmdir", ("/etc/../proc/",), errno.EBUSY),
    ("rename", ("/etc/hosts", "/h2"), errno.EBUSY),
    ("rename", ("/etc/passwd", "/etc/hosts"), errno.EBUSY),
]


def test_changes_match_the_kernel(gofer: Gofer, tmp_path: Path) -> None:
    c = gofer.client(ROOT)
    root = tmp_path / "rootfs"
    twin = tmp_path / "twin"
    build(twin)
    before = snapshot(root)
    for name, args in KERNEL_CHANGES:
        with pytest.raises(KernelPath):
            fd = getattr(c, name)(*args)
            if isinstance(fd, int):
                os.close(fd)
        assert snapshot(root) == before, (name, args)
    for name, args, err in MOUNT_POINT_CHANGES:
        with pytest.raises(OSError) as caught:
            getattr(c, name)(*args)
        assert caught.value.errno == err, (name, args)
        assert snapshot(root) == before, (name, args)

    got: list[int] = []
    for name, args in CHANGES:
        try:
            if name == "readlink_noop":
                c.readlink(str(args[0]))
            else:
                fd = getattr(c, name)(*args)
                if isinstance(fd, int):
                    os.close(fd)
            got.append(0)
        except OSError as e:
            assert e.errno is not None
            got.append(e.errno)

    def child() -> list[int]:
        os.chroot(twin)
        os.chdir("/")
        os.umask(0)
        out: list[int] = []
        for name, args in CHANGES:
            a: list[Any] = [os.fsencode(x) if isinstance(x, str) else x for x in args]
            try:
                if name == "open":
                    os.close(os.open(a[0], a[1] | os.O_CLOEXEC, a[2]))
                elif name == "link":
                    os.link(a[0], a[1], follow_symlinks=False)
                elif name == "readlink_noop":
                    os.readlink(a[0])
                else:
                    getattr(os, name)(*a)
                out.append(0)
            except OSError as e:
                out.append(e.errno or -1)
        return out

    status, reference = run_in_child(child)
    assert status == 0, reference
    assert got == reference, [
        (change, g, r) for change, g, r in zip(CHANGES, got, reference, strict=True) if g != r
    ]
    assert snapshot(root) == snapshot(twin)
    assert (root / "dir/created").exists() and (root / "dir/created_abs").exists()
    assert (root / "dir/sub/made").is_dir() and (root / "dir/made2").is_dir()
    assert not (root / "etc/mtab").is_symlink()
