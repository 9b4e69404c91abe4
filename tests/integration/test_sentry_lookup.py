"""The sentry's own lookups (syscalls/lookup.py), judged by the kernel itself.

The tree is the gofer walk's (tests/integration/test_gofer_walk.py): symlinks
of every kind, ``..``, loops, kernel mounts as plain directories, a directory
only root may search, plus a directory with a POSIX ACL that shuts one user
out although its mode lets everyone in. For every path, stat, lstat,
readlink and the plain walk are answered by :class:`Lookup` and by a child
chroot()ed into the tree making the same calls: as root with every
capability, as root without any (so directory modes count), and as uid
1000. Both must give the same errno and the same object; paths into the
kernel mounts must be KernelPath, and the ACL'd directory NotJudged for the
user it concerns, never a guess.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysandbox.gofer.client import KernelPath
from pysandbox.gofer.walk import normalize_mounts
from pysandbox.oci import kernel
from pysandbox.syscalls.lookup import Lookup, NotJudged, Who
from tests.forked import run_in_child
from tests.integration.test_gofer_walk import (
    KERNEL_EITHER_WAY,
    KERNEL_MOUNTS,
    KERNEL_WHEN_FOLLOWED,
    READLINKS,
    SERVED,
    build,
)

Answer = list[object]
Op = tuple[str, str]  # ("stat" | "lstat" | "readlink" | "access-MODE[-nofollow]", path)
ACCESS_MODES = {"F": os.F_OK, "R": os.R_OK, "X": os.X_OK, "RX": os.R_OK | os.X_OK}
ALL_CAPS = (1 << (kernel.cap_last_cap() + 1)) - 1
KERNEL = "kernel"
NOT_JUDGED = "not judged"

# system.posix_acl_access: version 2, then (tag, perm, id) entries, sorted by tag
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
ACL_SHUTS_OUT_1000 = struct.pack("<I", 2) + b"".join(
    struct.pack("<HHI", tag, perm, ident)
    for tag, perm, ident in (
        (_ACL_USER_OBJ, 7, 0xFFFFFFFF),
        (_ACL_USER, 0, 1000),
        (_ACL_GROUP_OBJ, 5, 0xFFFFFFFF),
        (_ACL_MASK, 5, 0xFFFFFFFF),
        (_ACL_OTHER, 5, 0xFFFFFFFF),
    )
)
EXTRA = [
    "/acl",
    "/acl/file",
    "/acl/.",
    "/acl/../etc/passwd",
    "/locked/.",
    "/locked/..",
    "/dir/sub/file/..",
    "/abs_file/.",
]
ROOT = Who(0, 0, (), True)
ROOT_NO_CAPS = Who(0, 0, (), False)
USER = Who(1000, 1000, (), False)


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Lookup, bool]]:
    root = tmp_path / "rootfs"
    build(root)
    (root / "acl").mkdir()
    (root / "acl/file").write_text("behind an ACL\n")
    try:
        os.setxattr(root / "acl", "system.posix_acl_access", ACL_SHUTS_OUT_1000)
        acl = True
    except OSError:
        acl = False  # no ACLs on this file system: the cases below then prove less
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    lookup = Lookup(fd, normalize_mounts(KERNEL_MOUNTS), watch_after=0)
    try:
        yield root, lookup, acl
    finally:
        lookup.close()
        os.close(fd)


def ops() -> list[Op]:
    paths = [p for p in SERVED if p] + EXTRA
    paths += sorted(KERNEL_EITHER_WAY) + sorted(KERNEL_WHEN_FOLLOWED)
    out: list[Op] = []
    for path in paths:
        out += [("stat", path), ("lstat", path)]
        out += [(f"access-{m}", path) for m in ACCESS_MODES]
        out += [("access-X-nofollow", path)]
    out += [("readlink", path) for path in READLINKS + EXTRA + ["/dir_link/", "/rel_file/"]]
    return out


def _access_op(kind: str) -> tuple[int, bool]:
    parts = kind.split("-")
    return ACCESS_MODES[parts[1]], len(parts) < 3


def lookup_answer(lookup: Lookup, op: Op, who: Who) -> Answer:
    kind, name = op
    path = os.fsencode(name if name.startswith("/") else "/" + name)
    try:
        if kind == "readlink":
            return [0, lookup.readlink(path, who).hex()]
        if kind.startswith("access"):
            mode, follow = _access_op(kind)
            lookup.access(path, mode, follow, who, ALL_CAPS if who.overrides else 0)
            return [0]
        return [0, lookup.stat(path, kind == "stat", who).st_ino]
    except KernelPath:
        return [KERNEL]
    except NotJudged:
        return [NOT_JUDGED]
    except OSError as e:
        return [e.errno]


def kernel_answers(root: Path, todo: list[Op], who: Who) -> list[Answer]:
    def child() -> list[Answer]:
        os.chroot(root)
        os.chdir("/")
        if who.fsuid:
            os.setgroups([])
            os.setresgid(who.fsuid, who.fsuid, who.fsuid)
            os.setresuid(who.fsuid, who.fsuid, who.fsuid)
        elif not who.overrides:
            _eff, permitted, _inh = kernel.capget()
            kernel.capset(0, permitted, 0)  # uid 0, but directory modes count
        out: list[Answer] = []
        for kind, name in todo:
            path = os.fsencode(name)
            try:
                if kind == "readlink":
                    out.append([0, os.readlink(path).hex()])
                elif kind.startswith("access"):
                    mode, follow = _access_op(kind)
                    flags = kernel.AT_EACCESS | (0 if follow else kernel.AT_SYMLINK_NOFOLLOW)
                    kernel.faccessat2(kernel.AT_FDCWD, path, mode, flags)
                    out.append([0])
                else:
                    out.append([0, os.stat(path, follow_symlinks=kind == "stat").st_ino])
            except OSError as e:
                out.append([e.errno])
        return out

    status, result = run_in_child(child)
    assert status == 0 and isinstance(result, list), result
    return result


def is_kernel_path(op: Op) -> bool:
    kind, path = op
    follows = kind == "stat" or (kind.startswith("access") and not kind.endswith("nofollow"))
    return path in KERNEL_EITHER_WAY or (follows and path in KERNEL_WHEN_FOLLOWED)


@pytest.mark.parametrize("who", [ROOT, ROOT_NO_CAPS, USER], ids=["root", "root-no-caps", "user"])
def test_lookups_match_the_kernel(tree: tuple[Path, Lookup, bool], who: Who) -> None:
    root, lookup, acl = tree
    todo = ops()
    got = [lookup_answer(lookup, op, who) for op in todo]
    judged = [(op, a) for op, a in zip(todo, got, strict=True) if a not in ([KERNEL], [NOT_JUDGED])]
    reference = kernel_answers(root, [op for op, _a in judged], who)
    wrong = [(op, a, r) for (op, a), r in zip(judged, reference, strict=True) if a != r]
    assert not wrong, "\n".join(f"{op}: lookup {a}, kernel {r}" for op, a, r in wrong)
    kernel = [op for op, a in zip(todo, got, strict=True) if a == [KERNEL]]
    readlink_kernel = {("readlink", p) for p in READLINKS if is_kernel_path(("stat", p))}
    expected = {op for op in todo if is_kernel_path(op)}
    # readlink does not follow its last component: only the paths that lead
    # into a mount on the way, or name one, are the kernel's
    expected = {op for op in expected if op[0] != "readlink"} | (
        readlink_kernel & {op for op in todo if is_kernel_path(("lstat", op[1]))}
    )
    assert set(kernel) == expected
    not_judged = {op for op, a in zip(todo, got, strict=True) if a == [NOT_JUDGED]}
    if who is USER and acl:
        # the ACL shuts uid 1000 out of /acl: the kernel must say so, not the sentry
        assert ("stat", "/acl/file") in not_judged
        assert kernel_answers(root, [("stat", "/acl/file")], who) == [[errno.EACCES]]
        assert all(p == "/acl" or p.startswith("/acl/") for _k, p in not_judged), not_judged
    else:
        assert not not_judged


def test_the_cache_follows_renames_only_when_told(tree: tuple[Path, Lookup, bool]) -> None:
    root, lookup, _acl = tree
    before = lookup.stat(b"/dir/sub/file", True, ROOT).st_ino
    os.rename(root / "dir/sub", root / "dir/moved")
    (root / "dir/sub").mkdir()
    (root / "dir/sub/file").write_text("a new file\n")
    # the directory fd still names the moved directory until the sentry,
    # which serves every rename, says a name moved
    assert lookup.stat(b"/dir/sub/file", True, ROOT).st_ino == before
    lookup.invalidate()
    assert lookup.stat(b"/dir/sub/file", True, ROOT).st_ino == os.stat(root / "dir/sub/file").st_ino
    assert lookup.stat(b"/dir/moved/file", True, ROOT).st_ino == before


def test_search_permission_is_read_afresh(tree: tuple[Path, Lookup, bool]) -> None:
    root, lookup, _acl = tree
    assert lookup.stat(b"/dir/sub/file", True, USER).st_ino
    os.chmod(root / "dir/sub", 0o700)  # a chmod through an fd is not seen by the sentry
    with pytest.raises(PermissionError):
        lookup.stat(b"/dir/sub/file", True, USER)
    assert lookup.stat(b"/dir/sub/file", True, ROOT_NO_CAPS).st_ino  # the owner may


def test_a_user_namespace_grants_capabilities_on_mapped_inodes_only(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "mapped").mkdir(parents=True)
    (root / "unmapped").mkdir()
    for d in ("mapped", "unmapped"):
        (root / d / "file").write_text("x\n")
        (root / d).chmod(0o700)
    os.chown(root / "mapped", 100000, 100000)
    os.chown(root / "unmapped", 5, 5)
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    lookup = Lookup(fd, frozenset(), lambda uid, gid: uid >= 100000 and gid >= 100000, 0)
    try:
        container_root = Who(100000, 100000, (), True)
        assert lookup.stat(b"/mapped/file", True, container_root)
        with pytest.raises(PermissionError):
            lookup.stat(b"/unmapped/file", True, container_root)
    finally:
        lookup.close()
        os.close(fd)


def test_kept_directory_modes_follow_every_change(tree: tuple[Path, Lookup, bool]) -> None:
    root, lookup, acl = tree
    assert lookup.stat(b"/dir/sub/file", True, USER).st_ino
    assert lookup._perms, "the modes of /, /dir and /dir/sub are kept"
    fd = os.open(root / "dir/sub", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fchmod(fd, 0o700)  # through an fd: only the watch can tell
        with pytest.raises(PermissionError):
            lookup.stat(b"/dir/sub/file", True, USER)
        os.fchmod(fd, 0o755)
        assert lookup.stat(b"/dir/sub/file", True, USER).st_ino
        os.fchown(fd, 1000, 1000)  # an owner change counts too
        os.fchmod(fd, 0o700)
        assert lookup.stat(b"/dir/sub/file", True, USER).st_ino  # the owner may search it
        with pytest.raises(PermissionError):
            lookup.stat(b"/dir/sub/file", True, ROOT_NO_CAPS)
        os.fchmod(fd, 0o755)
        if acl:
            os.setxattr(f"/proc/self/fd/{fd}", "system.posix_acl_access", ACL_SHUTS_OUT_1000)
            with pytest.raises(NotJudged):
                lookup.stat(b"/dir/sub/file", True, Who(1001, 1001, (), False))
    finally:
        os.close(fd)


def test_a_directory_moved_behind_the_caches_back_is_noticed(
    tree: tuple[Path, Lookup, bool],
) -> None:
    root, lookup, _acl = tree
    before = lookup.stat(b"/dir/sub/file", True, USER).st_ino
    os.rename(root / "dir/sub", root / "dir/moved")  # from the host: no invalidate()
    (root / "dir/sub").mkdir()
    (root / "dir/sub/file").write_text("a new file\n")
    now = lookup.stat(b"/dir/sub/file", True, USER).st_ino
    assert now != before and now == os.stat(root / "dir/sub/file").st_ino


def test_no_watch_before_enough_walks(tmp_path: Path) -> None:
    """A short-lived container never makes an inotify instance (its teardown
    at the sentry's exit costs an SRCU grace period); modes are read each time."""
    root = tmp_path / "rootfs"
    build(root)
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    lookup = Lookup(fd, normalize_mounts(KERNEL_MOUNTS), watch_after=3)
    try:
        for _ in range(3):
            lookup.stat(b"/dir/sub/file", True, USER)
            assert not lookup._perms and lookup._notify == -1
        lookup.stat(b"/dir/sub/file", True, USER)
        assert lookup._perms and lookup._notify >= 0
        before = set(lookup._watches)
        lookup.invalidate()  # watches go one by one; the instance stays
        assert lookup._notify >= 0 and not lookup._watches and before
        os.chmod(root / "dir/sub", 0o700)
        with pytest.raises(PermissionError):  # the IN_IGNORED of the old watches is no harm
            lookup.stat(b"/dir/sub/file", True, USER)
    finally:
        lookup.close()
        os.close(fd)
