"""The overlay root: the workload never writes the bundle's rootfs.

``--overlay root:memory`` (the default, as gVisor's ``--overlay2``) puts a
kernel overlay over the rootfs inside the container's mount namespace, with
the upper layer on a tmpfs of a fixed size: writes land in memory, are gone
with the container, and a full upper layer is ENOSPC for the writer, never
the host's memory (tmpfs pages are also charged to the container's memory
cgroup). ``root:dir=PATH`` keeps the upper layer on disk in PATH/<id> (delete
removes it); ``none`` is runc's behaviour: the rootfs itself is written.

Size of root:memory: ``size=`` when given (``root:memory,size=512m``), else
half the container's memory limit (the upper layer's pages count against the
limit too: at the full limit the OOM killer would come before ENOSPC), else
half of the host's memory (tmpfs's own default).

The layers are stacked without any host path of our own: the rootfs bind is
held by an O_PATH fd, a tmpfs is mounted over the rootfs path, the overlay is
assembled on a directory of that tmpfs (lower = the held fd) and moved onto
the rootfs path, over the tmpfs. Mount targets, devices and the working
directory are created after this, so they too land in the upper layer.
"""

from __future__ import annotations

import errno
import os

from pysandbox.oci import kernel as k
from pysandbox.oci.records import record

__all__ = [
    "DEFAULT_OVERLAY",
    "Overlay",
    "OverlayError",
    "mount_overlay",
    "parse_overlay",
    "tmpfs_size",
]

DEFAULT_OVERLAY = "root:memory"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class OverlayError(ValueError):
    """An --overlay value that cannot be used (the message says why)."""


@record
class Overlay:
    """A parsed --overlay: medium "memory", "dir" or "none"."""

    medium: str
    path: str = ""  # root:dir=PATH
    size: int = 0  # bytes; 0: decided by tmpfs_size


def _parse_size(text: str) -> int:
    t = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = t[-1:] if t[-1:] in _UNITS else ""
    try:
        value = int(t[: len(t) - len(unit)]) * _UNITS[unit]
    except ValueError:
        raise OverlayError(f"invalid overlay size {text!r}") from None
    if value <= 0:
        raise OverlayError(f"invalid overlay size {text!r}: must be positive")
    return value


def parse_overlay(text: str) -> Overlay:
    """``none``, ``root:memory[,size=N]`` or ``root:dir=PATH``."""
    if text == "none":
        return Overlay("none")
    if not text.startswith("root:"):
        raise OverlayError(
            f"invalid overlay {text!r}: root:memory, root:memory,size=N, root:dir=PATH or none"
        )
    medium, *options = text[len("root:") :].split(",")
    if medium == "memory":
        size = 0
        for opt in options:
            key, _, value = opt.partition("=")
            if key != "size" or not value:
                raise OverlayError(f"invalid overlay option {opt!r}: only size=N")
            size = _parse_size(value)
        return Overlay("memory", size=size)
    if medium.startswith("dir="):
        path = medium[len("dir=") :]
        if options or not os.path.isabs(path):
            raise OverlayError(f"invalid overlay {text!r}: root:dir= takes one absolute path")
        return Overlay("dir", path=path)
    raise OverlayError(
        f"invalid overlay {text!r}: root:memory, root:memory,size=N, root:dir=PATH or none"
    )


def tmpfs_size(overlay: Overlay, memory_limit: int | None) -> int:
    """Bytes of the root:memory upper layer (see the module docstring)."""
    if overlay.size:
        return overlay.size
    if memory_limit:
        return max(memory_limit // 2, 1 << 20)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def mount_overlay(rootfs: str, overlay: Overlay, size: int, upper_dir: str = "") -> None:
    """Stack the overlay on ``rootfs`` (a mount point of ours) in the current
    mount namespace. ``upper_dir``: root:dir's per-container directory."""
    lower = os.open(rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if overlay.medium == "memory":
            k.mount(
                "pysandbox-overlay",
                rootfs,
                "tmpfs",
                k.MS_NOSUID | k.MS_NODEV,
                f"size={size},mode=0755",
            )
            base = rootfs
        else:
            base = upper_dir
        for name in ("upper", "work", "merged"):
            os.makedirs(os.path.join(base, name), mode=0o755, exist_ok=True)
        # The upper root takes the lower root's owner and mode: the overlay's
        # root directory shows the upper's.
        st = os.stat(f"/proc/self/fd/{lower}")
        os.chown(os.path.join(base, "upper"), st.st_uid, st.st_gid)
        os.chmod(os.path.join(base, "upper"), st.st_mode & 0o7777)
        # Layers named through fds: no host path in the container's
        # mountinfo, and no "," or ":" of a path can break the options.
        upper = os.open(os.path.join(base, "upper"), os.O_PATH | os.O_CLOEXEC)
        work = os.open(os.path.join(base, "work"), os.O_PATH | os.O_CLOEXEC)
        try:
            merged = os.path.join(base, "merged")
            layers = (
                f"lowerdir=/proc/self/fd/{lower},upperdir=/proc/self/fd/{upper},"
                f"workdir=/proc/self/fd/{work}"
            )
            try:
                # The layers are on two file systems (the image's and a tmpfs):
                # without xino a directory's st_ino changes from mount to mount
                # and is not the d_ino readdir gives, and a file reports its
                # layer's st_dev (overlayfs.rst, "Inode properties"). With it,
                # both are as on one file system, as under docker's overlay2.
                k.mount("overlay", merged, "overlay", 0, layers + ",xino=on")
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                k.mount("overlay", merged, "overlay", 0, layers)  # a kernel without xino
        finally:
            os.close(upper)
            os.close(work)
        k.mount(merged, rootfs, None, k.MS_MOVE)
    finally:
        os.close(lower)
