"""/proc/self/mountinfo, /proc/mounts and /etc/mtab inside real sandboxed
containers show the root as the workload can use it (syscalls/procfs.py):
``rw`` when the spec's root is writable, although the kernel's own view of it
is read-only (writes go through the gofer), and none of the overlay's layers
or the bundle's host path."""

from __future__ import annotations

import os

from tests.conftest import Bundle, Runner

# Sections of one run, split on "==" lines. /proc/./self/mountinfo names the
# same file but is not a path the sentry serves: it is the kernel's table.
SCRIPT = (
    "cat /proc/self/mountinfo; echo ==; cat /proc/mounts; echo ==; cat /etc/mtab; echo ==;"
    " cat /proc/./self/mountinfo; echo ==; cat /proc/1/mountinfo; echo ==;"
    " cat /proc/1/task/1/mounts; echo ==; cat /proc/thread-self/mountinfo; echo ==;"
    " touch /written && echo touched; true"
)


def _run(runtime: Runner, bundle: Bundle, cid: str, *flags: str, readonly: bool) -> list[str]:
    os.symlink("../proc/self/mounts", bundle.rootfs / "etc" / "mtab")  # as Debian's images have
    bundle.config["root"]["readonly"] = readonly
    bundle.args("sh", "-c", SCRIPT)
    res = runtime(*flags, "run", "--bundle", str(bundle.path), cid)
    assert res.returncode == 0, res.stderr
    sections = res.stdout.split("==\n")
    assert len(sections) == 8, res.stdout
    return sections


def _root_line(table: str, mount_point_field: int) -> list[str]:
    lines = [x.split(" ") for x in table.splitlines() if x.split(" ")[mount_point_field] == "/"]
    assert len(lines) == 1, table
    return lines[0]


def _super_options(fields: list[str]) -> list[str]:
    return fields[fields.index("-", 6) + 3].split(",")


def _check_hidden(bundle: Bundle, *tables: str) -> None:
    for table in tables:
        for word in ("lowerdir=", "upperdir=", "workdir=", "/proc/self/fd/", str(bundle.path)):
            assert word not in table, (word, table)


def test_writable_root_says_rw_and_is_writable(runtime: Runner, bundle: Bundle) -> None:
    info, mounts, mtab, kernel, pid1, task1, thread, touched = _run(
        runtime, bundle, "mounts-rw", readonly=False
    )
    root = _root_line(info, 4)
    assert root[3] == "/" and root[5].split(",")[0] == "rw", root
    assert root[root.index("-", 6) + 1 : root.index("-", 6) + 3] == ["overlay", "overlay"]
    assert _super_options(root) == ["rw"]
    line = _root_line(mounts, 1)
    assert line[:3] == ["overlay", "/", "overlay"] and line[3].split(",")[0] == "rw", line
    assert touched == "touched\n"  # the root really is writable
    assert mtab == mounts  # /etc/mtab -> ../proc/self/mounts is served too
    assert pid1 == info  # sh is pid 1 and reads the same namespace from the same root
    assert task1 == mounts
    assert thread == info
    _check_hidden(bundle, info, mounts, pid1, task1, thread)
    # The kernel's own table: / is read-only in its view, and says so with
    # the overlay's layers; every other line is what the sentry shows.
    kroot = _root_line(kernel, 4)
    assert kroot[5].split(",")[0] == "ro", kroot
    assert any(o.startswith("lowerdir=") for o in _super_options(kroot)), kroot
    ours = [x for x in info.splitlines() if x.split(" ")[4] != "/"]
    theirs = [x for x in kernel.splitlines() if x.split(" ")[4] != "/"]
    assert ours == theirs
    assert any(x.split(" ")[4] == "/proc" for x in ours)
    assert any(x.split(" ")[4] == "/dev" for x in ours)
    # only the per-mount ro, the root, and the super options changed
    assert root[:3] == kroot[:3] and root[6:-1] == kroot[6:-1]
    assert root[5].split(",")[1:] == kroot[5].split(",")[1:]


def test_readonly_root_says_ro(runtime: Runner, bundle: Bundle) -> None:
    info, mounts, mtab, kernel, pid1, _, _, touched = _run(
        runtime, bundle, "mounts-ro", readonly=True
    )
    root = _root_line(info, 4)
    assert root[3] == "/" and root[5].split(",")[0] == "ro", root  # no bundle path as its root
    assert _root_line(mounts, 1)[3].split(",")[0] == "ro"
    assert mtab == mounts
    assert touched == ""  # touch failed: Read-only file system
    _check_hidden(bundle, info, mounts, pid1)
    kroot = _root_line(kernel, 4)
    assert kroot[3].endswith("/bundle/rootfs")  # what the sentry hides: a bind of the bundle
    assert kroot[5] == root[5]


def test_writable_root_without_overlay(runtime: Runner, bundle: Bundle) -> None:
    # --overlay none, as runc: the root is a bind of the bundle's rootfs, written in place.
    info, mounts, mtab, _, _, _, _, touched = _run(
        runtime, bundle, "mounts-none", "--overlay", "none", readonly=False
    )
    root = _root_line(info, 4)
    assert root[3] == "/" and root[5].split(",")[0] == "rw", root
    assert _root_line(mounts, 1)[3].split(",")[0] == "rw"
    assert mtab == mounts
    assert touched == "touched\n"
    assert (bundle.rootfs / "written").exists()
    _check_hidden(bundle, info, mounts)


def test_masked_mount_table_stays_masked(runtime: Runner, bundle: Bundle) -> None:
    # init's /proc/1/mountinfo is masked (the mask, /dev/null, is empty), and
    # so is /proc/self/mountinfo for init itself (sh, which opens the
    # redirections): the sentry leaves every mount table to the kernel then.
    bundle.config["linux"]["maskedPaths"] = [
        *bundle.config["linux"].get("maskedPaths", []),
        "/proc/1/mountinfo",
    ]
    bundle.config["root"]["readonly"] = False
    bundle.args(
        "sh",
        "-c",
        "wc -c < /proc/1/mountinfo; wc -c < /proc/self/mountinfo;"
        " awk '$5 == \"/\"' /proc/self/mountinfo; true",
    )
    res = runtime("run", "--bundle", str(bundle.path), "mounts-masked")
    assert res.returncode == 0, res.stderr
    size, own_size, root = res.stdout.splitlines()
    assert size == own_size == "0"
    assert root.split(" ")[5].split(",")[0] == "ro"  # awk's own table: the kernel's, not ours


def test_without_the_sentry_the_table_is_the_kernels(runtime: Runner, bundle: Bundle) -> None:
    # What runc shows: no gofer and no read-only view, so the kernel's rw is the truth.
    bundle.config["root"]["readonly"] = False
    bundle.args("sh", "-c", "awk '$5 == \"/\"' /proc/self/mountinfo; true")
    res = runtime("--sandbox", "none", "run", "--bundle", str(bundle.path), "mounts-nosentry")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split(" ")[5].split(",")[0] == "rw"
