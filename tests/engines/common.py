"""Helpers the engine tests share: offline busybox images and process hunting.

No registry is reachable: every image is built here from the busybox-static
rootfs (``make_busybox_rootfs``), either as a plain rootfs tarball (``podman
import``, ``docker import``) or as a docker-archive tarball (``docker load``,
``podman load``, ``ctr images import`` all read it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

from pysandbox.oci.bundle import make_busybox_rootfs

BUSYBOX_REF = "localhost/pysandbox-busybox:latest"


def rootfs_tar_bytes(rootfs: Path) -> bytes:
    """An uncompressed tar of `rootfs`, entries relative to it, in a stable order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in sorted(rootfs.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(rootfs)), recursive=False)
    return buf.getvalue()


def write_rootfs_tar(dest: Path, rootfs: Path | None = None) -> Path:
    """A busybox rootfs as a plain tarball (what ``podman import`` takes)."""
    if rootfs is None:
        rootfs = dest.parent / (dest.name + ".rootfs")
        make_busybox_rootfs(rootfs)
    dest.write_bytes(rootfs_tar_bytes(rootfs))
    return dest


def write_image_tar(dest: Path, ref: str = BUSYBOX_REF, rootfs: Path | None = None) -> Path:
    """A one-layer busybox image in docker-archive format (``docker save``'s),
    tagged `ref`: ``ctr images import``, ``docker load`` and ``podman load`` read it."""
    if rootfs is None:
        rootfs = dest.parent / (dest.name + ".rootfs")
        make_busybox_rootfs(rootfs)
    layer = rootfs_tar_bytes(rootfs)
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "pysandbox tests: busybox-static rootfs"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": ["layer.tar"]}]
    members = (
        (config_name, config_bytes),
        ("layer.tar", layer),
        ("manifest.json", json.dumps(manifest).encode()),
    )
    with tarfile.open(dest, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return dest


def pids_matching(pred: Callable[[list[str]], bool]) -> list[int]:
    """Pids whose command line (as a list) satisfies `pred`."""
    found: list[int] = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if argv and pred(argv):
            found.append(int(name))
    return found


def kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def mounts_under(base: Path) -> list[str]:
    out: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mountpoint = line.split()[4]
            if mountpoint == str(base) or mountpoint.startswith(str(base) + "/"):
                out.append(mountpoint)
    return out


def unmount_under(base: Path) -> None:
    for mountpoint in sorted(mounts_under(base), key=len, reverse=True):
        subprocess.run(["umount", "-l", mountpoint], capture_output=True)


def remove_cgroup_tree(path: Path) -> None:
    """rmdir a cgroup directory and its children, deepest first (best effort)."""
    if not path.is_dir():
        return
    subdirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for sub in [*subdirs, path]:
        with contextlib.suppress(OSError):
            sub.rmdir()


def cgroup_children(name: str) -> list[str]:
    """Child cgroups of the top-level cgroup `name`, in every hierarchy."""
    found: list[str] = []
    root = Path("/sys/fs/cgroup")
    for hierarchy in [root, *root.iterdir()]:
        parent = hierarchy / name
        with contextlib.suppress(OSError):
            if parent.is_dir():
                found.extend(str(p) for p in parent.iterdir() if p.is_dir())
    return found


def remove_top_cgroup(name: str) -> None:
    root = Path("/sys/fs/cgroup")
    for hierarchy in [root, *root.iterdir()]:
        with contextlib.suppress(OSError):
            remove_cgroup_tree(hierarchy / name)
