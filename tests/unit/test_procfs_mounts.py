"""The mount tables the sentry serves (syscalls/procfs.py): the rewrite of the
root's line on samples captured from real containers, and which paths name
which task's table."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import cast

from pysandbox.sentry.loop import Call, Errno, InstallFd
from pysandbox.syscalls import procfs

# `pysandbox run` of busybox, root.readonly false, default --overlay root:memory
OVERLAY_MOUNTINFO = """\
72 44 0:42 / / ro,relatime - overlay overlay rw,lowerdir=/proc/self/fd/9,upperdir=/proc/self/fd/10,workdir=/proc/self/fd/12,uuid=on
73 72 0:45 / /proc rw,relatime - proc proc rw
74 72 0:46 / /dev rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
75 74 0:47 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
76 74 0:48 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k
78 72 0:49 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
81 80 0:35 /pst-miprobe /sys/fs/cgroup/blkio ro,nosuid,nodev,noexec,relatime - cgroup cgroup rw,blkio
45 73 0:45 /bus /proc/bus ro,relatime - proc proc rw
50 73 0:46 /null /proc/keys rw,nosuid - tmpfs tmpfs rw,size=65536k,mode=755
"""  # noqa: E501 (verbatim lines of the kernel)
OVERLAY_MOUNTS = """\
overlay / overlay ro,relatime,lowerdir=/proc/self/fd/9,upperdir=/proc/self/fd/10,workdir=/proc/self/fd/12,uuid=on 0 0
proc /proc proc rw,relatime 0 0
tmpfs /dev tmpfs rw,nosuid,size=65536k,mode=755 0 0
sysfs /sys sysfs ro,nosuid,nodev,noexec,relatime 0 0
proc /proc/bus proc ro,relatime 0 0
"""  # noqa: E501 (verbatim lines of the kernel)
# root.readonly true (no overlay: a read-only bind of the bundle), and
# --overlay none with a writable root (the same bind, read-only in the kernel's view)
BIND_MOUNTINFO = """\
68 44 254:0 /tmp/miproben94h8kt1/bundle/rootfs / ro,relatime - ext4 /dev/vda rw,discard,resv_strict,resuid=65534,resgid=65534
69 68 0:41 / /proc rw,relatime - proc proc rw
"""  # noqa: E501 (verbatim lines of the kernel)
BIND_MOUNTS = """\
/dev/vda / ext4 ro,relatime,discard,resv_strict,resuid=65534,resgid=65534 0 0
proc /proc proc rw,relatime 0 0
"""


def _rest(text: str) -> list[str]:
    return text.splitlines()[1:]


def test_writable_overlay_root_says_rw_without_its_layers() -> None:
    out = procfs.render_mountinfo(OVERLAY_MOUNTINFO, root_writable=True)
    assert out.splitlines()[0] == "72 44 0:42 / / rw,relatime - overlay overlay rw"
    assert _rest(out) == _rest(OVERLAY_MOUNTINFO)  # the container's own mounts, unchanged
    assert out.endswith("\n")
    mounts = procfs.render_mounts(OVERLAY_MOUNTS, root_writable=True)
    assert mounts.splitlines()[0] == "overlay / overlay rw,relatime 0 0"
    assert _rest(mounts) == _rest(OVERLAY_MOUNTS)


def test_readonly_root_stays_ro() -> None:
    out = procfs.render_mountinfo(OVERLAY_MOUNTINFO, root_writable=False)
    assert out.splitlines()[0] == "72 44 0:42 / / ro,relatime - overlay overlay rw"
    mounts = procfs.render_mounts(OVERLAY_MOUNTS, root_writable=False)
    assert mounts.splitlines()[0] == "overlay / overlay ro,relatime 0 0"


def test_bind_root_hides_the_bundle_path_and_keeps_its_options() -> None:
    for writable, mode in ((False, "ro"), (True, "rw")):
        out = procfs.render_mountinfo(BIND_MOUNTINFO, root_writable=writable)
        assert out.splitlines()[0] == (
            f"68 44 254:0 / / {mode},relatime - ext4 /dev/vda"
            " rw,discard,resv_strict,resuid=65534,resgid=65534"
        )
        assert _rest(out) == _rest(BIND_MOUNTINFO)
        mounts = procfs.render_mounts(BIND_MOUNTS, root_writable=writable)
        assert mounts == BIND_MOUNTS.replace("/ ext4 ro,", f"/ ext4 {mode},")


def test_a_readonly_super_block_stays_ro() -> None:
    # The bundle on a read-only file system: the gofer could not write it either.
    text = BIND_MOUNTINFO.replace("/dev/vda rw,", "/dev/vda ro,")
    assert procfs.root_superblock_readonly(text)
    assert not procfs.root_superblock_readonly(BIND_MOUNTINFO)
    assert not procfs.root_superblock_readonly(OVERLAY_MOUNTINFO)
    assert procfs.root_superblock_readonly("")  # no root line: nothing to say rw about
    out = procfs.render_mountinfo(text, root_writable=True)
    assert out.split()[5] == "ro,relatime"


def test_optional_fields_and_other_overlay_options() -> None:
    line = (
        "30 1 0:27 / / ro,nosuid shared:1 master:2 - overlay overlay"
        " rw,sync,lowerdir=/a:/b,upperdir=/u,workdir=/w,redirect_dir=on,index=on,"
        "metacopy=on,xino=auto,nfs_export=off,userxattr,uuid=null\n"
    )
    assert procfs.render_mountinfo(line, root_writable=True) == (
        "30 1 0:27 / / rw,nosuid shared:1 master:2 - overlay overlay rw,sync\n"
    )
    mounts = "overlay / overlay ro,sync,nosuid,noatime,lowerdir=/a,upperdir=/u,workdir=/w 0 0\n"
    assert procfs.render_mounts(mounts, root_writable=True) == (
        "overlay / overlay rw,sync,nosuid,noatime 0 0\n"
    )


def test_only_the_line_of_slash_changes() -> None:
    # An overlay elsewhere (a mount point with an escaped space) is the container's own.
    text = (
        "72 44 0:42 / / ro,relatime - overlay overlay rw,lowerdir=/x\n"
        "90 72 0:50 / /mnt/a\\040b ro,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u\n"
        "not a mountinfo line\n"
    )
    out = procfs.render_mountinfo(text, root_writable=True).splitlines()
    assert out[0] == "72 44 0:42 / / rw,relatime - overlay overlay rw"
    assert out[1:] == text.splitlines()[1:]
    mounts = "overlay /mnt/a\\040b overlay ro,lowerdir=/l 0 0\n"
    assert procfs.render_mounts(mounts, root_writable=True) == mounts
    assert procfs.render_mountinfo("", root_writable=True) == ""


# --- which path names which table --------------------------------------------


class _Caller:
    """The parts of a Call that serve_path uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.tracing = False
        self.detail: str | None = None
        self.verified = 0

    def verify(self) -> None:
        self.verified += 1


def _proc(tmp_path: Path) -> Path:
    """A host /proc with a caller (tid 101 of process 100) and its root's /etc/mtab."""
    proc = tmp_path / "proc"
    for tid in (100, 101):
        d = proc / str(tid)
        d.mkdir(parents=True)
        (d / "status").write_text(f"Name:\tsh\nTgid:\t100\nPid:\t{tid}\n")
        (d / "mountinfo").write_text(OVERLAY_MOUNTINFO.replace("72 44", f"{tid} 44"))
        (d / "mounts").write_text(OVERLAY_MOUNTS)
    (proc / "101" / "root" / "etc").mkdir(parents=True)
    os.symlink("../proc/self/mounts", proc / "101" / "root" / "etc" / "mtab")
    return proc


def _serve(
    handlers: procfs.ProcHandlers, path: bytes, flags: int = os.O_RDONLY
) -> str | int | None:
    caller = _Caller(101)
    result = handlers.serve_path(cast(Call, caller), path, flags)
    if result is None:
        return None
    if isinstance(result, Errno):
        return -result.errno
    assert isinstance(result, InstallFd)
    assert caller.verified == 1  # rule 1, before the answer
    try:
        return os.read(result.fd, 1 << 16).decode()
    finally:
        os.close(result.fd)


def _handlers(tmp_path: Path, masked: tuple[str, ...] = ()) -> procfs.ProcHandlers:
    view = procfs.ContainerView({})
    return procfs.ProcHandlers(
        view, host_proc=str(_proc(tmp_path)), masked=masked, root_readonly=False
    )


def test_paths_name_the_callers_tables(tmp_path: Path) -> None:
    h = _handlers(tmp_path)
    own = _serve(h, b"/proc/self/mountinfo")
    assert isinstance(own, str) and own.startswith("100 44 0:42 / / rw,relatime - overlay")
    thread = _serve(h, b"/proc/thread-self/mountinfo")
    assert isinstance(thread, str) and thread.startswith("101 44 ")
    mounts = procfs.render_mounts(OVERLAY_MOUNTS, root_writable=True)
    assert _serve(h, b"/proc/mounts") == mounts
    assert _serve(h, b"/proc/self/mounts") == mounts
    assert _serve(h, b"/etc/mtab") == mounts  # through the caller's root
    assert _serve(h, b"/proc/self/mounts", os.O_RDONLY | os.O_CLOEXEC) == mounts


def test_paths_left_to_the_kernel(tmp_path: Path) -> None:
    h = _handlers(tmp_path)
    for path in (
        b"/proc/mountinfo",  # no such file
        b"/proc/self/mountstats",
        b"/proc/./self/mountinfo",
        b"/proc/01/mountinfo",
        b"/proc/thread-self/task/1/mountinfo",
        b"/proc/1/mountinfo",  # no task table to translate the pid
        b"/proc/self/task/1/mounts",
        b"/data/mounts",
    ):
        assert _serve(h, path) is None, path
    assert _serve(h, b"/proc/self/mountinfo", os.O_RDWR) is None  # the kernel's EACCES
    assert _serve(h, b"/proc/self/mountinfo", os.O_RDONLY | os.O_DIRECTORY) is None
    os.unlink(tmp_path / "proc" / "101" / "root" / "etc" / "mtab")
    assert _serve(h, b"/etc/mtab") is None  # a file of its own: the gofer's


def test_a_task_gone_is_the_kernels_errno(tmp_path: Path) -> None:
    h = _handlers(tmp_path)
    os.unlink(tmp_path / "proc" / "100" / "mountinfo")
    assert _serve(h, b"/proc/self/mountinfo") == -errno.ENOENT
    assert isinstance(_serve(h, b"/proc/thread-self/mountinfo"), str)  # thread 101's is there


def test_masks_that_may_cover_a_table_turn_them_all_off(tmp_path: Path) -> None:
    for mask in (
        "/proc/1/mountinfo",
        "/proc/self",
        "/proc",
        "/proc/mounts",
        "/etc/mtab",
        "/etc",
        "/",
    ):
        h = _handlers(tmp_path / mask.replace("/", "_"), masked=(mask,))
        assert _serve(h, b"/proc/self/mountinfo") is None, mask
        assert _serve(h, b"/etc/mtab") is None, mask
    h = _handlers(tmp_path / "runc", masked=("/proc/acpi", "/proc/keys", "/sys/firmware"))
    assert isinstance(_serve(h, b"/proc/self/mountinfo"), str)


def test_readonly_option_keeps_ro(tmp_path: Path) -> None:
    view = procfs.ContainerView({})
    h = procfs.ProcHandlers(view, host_proc=str(_proc(tmp_path)))  # the default: read-only
    out = _serve(h, b"/proc/self/mountinfo")
    assert isinstance(out, str) and out.startswith(
        "100 44 0:42 / / ro,relatime - overlay overlay rw\n"
    )
