"""Which of a container's mounts its gofer serves, and which the kernel does.

The gofer serves the container's root (mount 0) and, as mounts 1.., every
mount that holds files of the host: bind mounts (docker's volumes and
/etc/hosts, Kubernetes' volumes, ``-v`` of podman). The kernel keeps the
file systems a kernel makes for the container, as gVisor's sentry keeps
them itself:

* **pseudo file systems** (:data:`KERNEL_FSTYPES`: proc, sysfs, cgroup,
  devpts, mqueue...), whose files are the kernel's answers, not data;
* **the tmpfs mounts config.json asks for** (``type: tmpfs``: /dev, /dev/shm,
  ``--tmpfs``): memory of the container's own, with nothing of the host;
* **FUSE** mounts: a FUSE server that stops answering would stop the gofer's
  only thread, and every file call of the container with it;
* **anything below a mount the kernel serves** (/dev/shm under /dev, the
  masks under /proc): a walk into it crosses the kernel's mount first, and
  the gofer cannot judge search permission there.

A mount hidden by a later one on the same point or above it is left out:
paths reach what is on top. Everything here is read from /proc/PID/mountinfo
of the container's init once its root is built (paths as the container
names them) and from config.json; nothing is mounted.
"""

from __future__ import annotations

import os
import stat

from pysandbox.oci import kernel
from pysandbox.oci.records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Final

__all__ = [
    "KERNEL_FSTYPES",
    "MountPlan",
    "ServedMount",
    "mount_flags",
    "mountinfo_mounts",
    "plan_mounts",
]

KERNEL_FSTYPES: Final = frozenset(
    {
        "proc",
        "sysfs",
        "cgroup",
        "cgroup2",
        "devpts",
        "mqueue",
        "devtmpfs",
        "securityfs",
        "debugfs",
        "tracefs",
        "bpf",
        "fusectl",
        "configfs",
        "pstore",
        "efivarfs",
        "hugetlbfs",
        "binfmt_misc",
        "autofs",
        "nsfs",
        "rpc_pipefs",
        "selinuxfs",
    }
)

# Per-mount options (mountinfo's sixth field) -> the MS_* flag a bind of the
# mount needs to keep: noexec and the atime rule are the workload's to
# have, and a user namespace locks nosuid, noexec and the atime flags on the
# gofer's copy, so a remount without them fails (EPERM).
_FLAG_OF: Final = {
    "ro": kernel.MS_RDONLY,
    "nosuid": kernel.MS_NOSUID,
    "noexec": kernel.MS_NOEXEC,
    "noatime": kernel.MS_NOATIME,
    "nodiratime": kernel.MS_NODIRATIME,
    "relatime": kernel.MS_RELATIME,
    "strictatime": kernel.MS_STRICTATIME,
}


class ServedMount(NamedTuple):
    """A mount the gofer serves: its point as the container names it, whether
    it is a single file (a bind of a file: /etc/hosts), and the MS_* flags of
    the container's mount (MS_RDONLY among them) its bind must keep."""

    point: str
    file: bool
    flags: int

    @property
    def readonly(self) -> bool:
        return bool(self.flags & kernel.MS_RDONLY)


class MountPlan(NamedTuple):
    """The served mounts (numbered 1.. in this order) and the points the
    kernel serves (every other mount point but the root)."""

    served: tuple[ServedMount, ...]
    kernel: tuple[str, ...]


def mount_flags(options: Iterable[str]) -> int:
    """The MS_* flags :data:`_FLAG_OF` names among a mount's options."""
    flags = 0
    for option in options:
        flags |= _FLAG_OF.get(option, 0)
    return flags


def mountinfo_mounts(path: str) -> list[tuple[str, str, list[str]]]:
    """(mount point, fstype, per-mount options) of every line of a mountinfo
    file, in its order (a mount listed later is on top)."""
    from pysandbox.oci.cgroups import mountinfo_fields, unescape_mountinfo

    return [
        (unescape_mountinfo(fields[4]), fields[sep + 1], fields[5].split(","))
        for fields, sep in mountinfo_fields(path)
    ]


def _under(path: str, point: str) -> bool:
    return path == point or path.startswith(point.rstrip("/") + "/")


def plan_mounts(
    entries: Iterable[tuple[str, str, list[str]]],
    tmpfs_destinations: Iterable[str],
    root: str,
) -> MountPlan:
    """The plan for mountinfo ``entries`` (mount point, fstype, per-mount
    options, in mountinfo's order) of a container whose config.json mounts
    tmpfs at ``tmpfs_destinations``; ``root``: a path to the container's root
    as this process sees it (/proc/PID/root), to tell files from directories."""
    tmpfs = {os.path.normpath("/" + d.lstrip("/")) for d in tmpfs_destinations}
    visible: list[tuple[str, str, list[str]]] = []
    for point, fstype, options in entries:
        if point == "/":
            visible.clear()  # a root mounted over another: what was below is gone
            continue
        visible = [e for e in visible if not _under(e[0], point)]
        visible.append((point, fstype, options))
    served: list[ServedMount] = []
    kernel_points: list[str] = []
    for point, fstype, options in visible:
        kernel_served = (
            fstype in KERNEL_FSTYPES
            or fstype.startswith("fuse")
            or (fstype == "tmpfs" and point in tmpfs)
            or any(_under(point, k) for k in kernel_points)
        )
        if kernel_served:
            kernel_points.append(point)
            continue
        try:
            is_dir = stat.S_ISDIR(os.lstat(root + point).st_mode)
        except OSError:
            kernel_points.append(point)  # unreadable from here: leave it to the kernel
            continue
        served.append(ServedMount(point, not is_dir, mount_flags(options)))
    return MountPlan(tuple(served), tuple(kernel_points))
