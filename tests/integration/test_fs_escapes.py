"""Attempts from inside a real container to reach the host's files (issue 5's
security list, as far as the kernel's view defends them today; the gofer's
RESOLVE_IN_ROOT lookups will take over the path walk). Each attempt names a
host canary that exists, so a failure to reach it means the wall held."""

from __future__ import annotations

import os
from pathlib import Path

from tests.conftest import Bundle, Runner
from tests.integration.inside import run_sh

CANARY_TEXT = "host-canary-must-not-be-read"


def _canary(tmp_path: Path) -> Path:
    canary = tmp_path / "host-only" / "canary"
    canary.parent.mkdir()
    canary.write_text(CANARY_TEXT + "\n")
    return canary


def test_image_symlinks_pointing_at_host_files(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    canary = _canary(tmp_path)
    depth = "../" * 30
    (bundle.rootfs / "abs-link").symlink_to(canary)
    (bundle.rootfs / "etc" / "rel-link").symlink_to(depth + str(canary).lstrip("/"))
    (bundle.rootfs / "dir-link").symlink_to(canary.parent)
    out = run_sh(
        runtime,
        bundle,
        cid,
        "cat /abs-link /etc/rel-link /dir-link/canary 2>&1;"
        " cat /proc/self/root/abs-link /proc/1/root/etc/rel-link 2>&1; echo done",
    )
    assert CANARY_TEXT not in out
    assert out.count("No such file or directory") == 5, out


def test_hard_links_and_renames_stay_inside(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["root"]["readonly"] = False
    bundle.write()
    out = run_sh(
        runtime,
        bundle,
        cid,
        # /proc and /sys are other file systems: no link or rename reaches across
        "ln /proc/self/status /proc-link 2>&1; mv /etc/hostname /proc/hostname 2>&1;"
        " ln /sys/kernel/uevent_seqnum /sys-link 2>&1; echo done",
    )
    lines = out.splitlines()
    assert lines[-1] == "done"
    assert lines[:-1] == [
        "ln: /proc-link: Invalid cross-device link",
        # busybox mv copies across devices, and proc has no such file to create
        "mv: can't create '/proc/hostname': No such file or directory",
        "ln: /sys-link: Invalid cross-device link",
    ], out


def test_device_nodes_are_refused(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["root"]["readonly"] = False
    bundle.write()
    out = run_sh(runtime, bundle, cid, "mknod /dev/evil b 8 0 2>&1; echo rc=$?")
    assert "rc=1" in out and "Operation not permitted" in out  # no CAP_MKNOD
    caps = bundle.config["process"]["capabilities"]
    for kind in caps:
        caps[kind] = [*caps[kind], "CAP_MKNOD"]
    bundle.write()
    # With CAP_MKNOD the node can be made, but the devices cgroup refuses to open it.
    out = run_sh(
        runtime, bundle, cid + "b", "mknod /dev/evil b 8 0 && head -c1 /dev/evil 2>&1; echo rc=$?"
    )
    assert "Operation not permitted" in out and "rc=1" in out, out


def test_read_only_bind_mounts_stay_read_only(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep").write_text("original\n")
    bundle.config["mounts"].append(
        {"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind", "ro"]}
    )
    bundle.write()
    out = run_sh(
        runtime,
        bundle,
        cid,
        "exec 2>&1; echo changed > /data/keep; touch /data/new;"
        " mount -o remount,rw /data; echo changed > /data/keep; echo done",
    )
    assert (data / "keep").read_text() == "original\n"
    assert not (data / "new").exists()
    assert out.count("Read-only file system") >= 3, out
    assert "mount: permission denied" in out, out  # no CAP_SYS_ADMIN, and mount is denied


def test_no_runtime_fd_or_cwd_reaches_the_workload(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    # CVE-2024-21626: a leaked directory fd or a cwd outside the root.
    out = run_sh(
        runtime,
        bundle,
        cid,
        "ls /proc/self/fd; readlink /proc/self/cwd; cd /proc/self/cwd/.. && pwd",
    )
    lines = out.split()
    fds = sorted(int(x) for x in lines if x.isdigit())
    assert fds == [0, 1, 2, 3], out  # 3: ls's own directory fd
    assert "/" in lines
    assert not any(os.path.isabs(x) and x.startswith(str(bundle.path)) for x in lines), out
