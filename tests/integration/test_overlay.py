"""--overlay in real containers: by default the workload's writes land in a
size-limited memory layer and the bundle's rootfs is never written
(oci/overlay.py); ``none`` is runc's behaviour."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runner, give_to_mapped_root, wait_for
from tests.integration.helpers import fails


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path of the rootfs with its size, mode and mtime (ns)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mode, st.st_mtime_ns)
    return out


def _writable(bundle: Bundle, script: str) -> None:
    bundle.config["root"]["readonly"] = False
    bundle.args("sh", "-c", script)


# The file system type of the container's / (field 5 is the mount point; the
# type follows the " - " separator).
ROOT_FSTYPE = 'awk \'$5 == "/" { sub(/.* - /, ""); print $1 }\' /proc/self/mountinfo'
WRITE = (
    "echo hello > /newfile && cat /newfile && rm /bin/ls && echo gone > /etc/hostname"
    f" && mkdir -p /var/made && {ROOT_FSTYPE}"
)


def test_default_writes_never_reach_the_rootfs(runtime: Runner, bundle: Bundle) -> None:
    _writable(bundle, WRITE)
    bundle.config["mounts"].append({"destination": "/newmnt", "type": "tmpfs", "source": "tmpfs"})
    bundle.write()
    before = _tree(bundle.rootfs)
    res = runtime("run", "--bundle", str(bundle.path), "ov-default")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["hello", "overlay"]
    # not one byte, mode or mtime of the bundle changed; the runtime's own
    # mount point (/newmnt) was made in the upper layer too
    assert _tree(bundle.rootfs) == before


def test_none_writes_the_rootfs_as_runc_does(runtime: Runner, bundle: Bundle) -> None:
    _writable(bundle, "echo hello > /newfile")
    res = runtime("--overlay", "none", "run", "--bundle", str(bundle.path), "ov-none")
    assert res.returncode == 0, res.stderr
    assert (bundle.rootfs / "newfile").read_text() == "hello\n"


def test_annotation_chooses_when_the_command_line_does_not(runtime: Runner, bundle: Bundle) -> None:
    _writable(bundle, "echo hello > /newfile")
    bundle.config["annotations"] = {"io.github.pysandbox.overlay": "none"}
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), "ov-annot")
    assert res.returncode == 0, res.stderr
    assert (bundle.rootfs / "newfile").exists()


def test_a_full_upper_layer_is_enospc(runtime: Runner, bundle: Bundle) -> None:
    _writable(
        bundle,
        "dd if=/dev/zero of=/big bs=64k count=64 2>&1; echo rc=$?; df -k / | tail -1",
    )
    before = _tree(bundle.rootfs)
    res = runtime(
        "--overlay", "root:memory,size=1m", "run", "--bundle", str(bundle.path), "ov-full"
    )
    assert res.returncode == 0, res.stderr
    assert "No space left on device" in res.stdout
    assert "rc=1" in res.stdout
    assert res.stdout.strip().splitlines()[-1].split()[1] == "1024"  # 1 MiB, not the host's
    assert _tree(bundle.rootfs) == before


def test_memory_limit_sizes_the_upper_layer(runtime: Runner, bundle: Bundle) -> None:
    _writable(bundle, "df -k / | tail -1")
    bundle.config["linux"]["resources"] = {"memory": {"limit": 64 << 20}}
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), "ov-limit")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[1] == str(32 << 10)  # half the limit, in KiB


def test_exec_sees_the_same_upper_layer(runtime: Runner, bundle: Bundle) -> None:
    _writable(bundle, "echo from-init > /shared-note; sleep 30")
    cid = "ov-exec"
    assert runtime("run", "-d", "--bundle", str(bundle.path), cid).returncode == 0
    try:
        wait_for(lambda: runtime("exec", cid, "cat", "/shared-note").stdout == "from-init\n")
        assert not (bundle.rootfs / "shared-note").exists()
    finally:
        runtime("delete", "-f", cid)


def test_dir_upper_layer_lives_on_disk_until_delete(
    runtime: Runner, bundle: Bundle, tmp_path: Path
) -> None:
    upper_root = tmp_path / "uppers"
    _writable(bundle, "echo kept > /on-disk; sleep 30")
    cid = "ov-dir"
    flag = ("--overlay", f"root:dir={upper_root}")
    assert runtime(*flag, "run", "-d", "--bundle", str(bundle.path), cid).returncode == 0
    try:
        note = upper_root / cid / "upper" / "on-disk"
        wait_for(note.exists)
        assert note.read_text() == "kept\n"
        assert not (bundle.rootfs / "on-disk").exists()
    finally:
        assert runtime("delete", "-f", cid).returncode == 0
    assert not (upper_root / cid).exists()


def test_read_only_root_gets_no_overlay(runtime: Runner, bundle: Bundle) -> None:
    bundle.config["root"]["readonly"] = True
    bundle.args("sh", "-c", f"{ROOT_FSTYPE}; touch /x")
    res = runtime("run", "--bundle", str(bundle.path), "ov-ro")
    assert res.stdout.split()[0] != "overlay"
    assert "Read-only file system" in res.stderr + res.stdout


def test_invalid_overlay_is_refused_before_anything_exists(runtime: Runner, bundle: Bundle) -> None:
    fails(
        runtime,
        "--overlay",
        "root:disk",
        "create",
        "--bundle",
        str(bundle.path),
        "ov-bad",
        msg="invalid overlay 'root:disk'",
    )
    assert not (runtime.root / "ov-bad").exists()


def test_dir_upper_layer_of_a_failed_create_is_removed(
    runtime: Runner, bundle: Bundle, tmp_path: Path
) -> None:
    upper_root = tmp_path / "uppers"
    bundle.config["root"]["readonly"] = False
    bundle.config["hooks"] = {"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "exit 3"]}]}
    bundle.args("sleep", "30")
    fails(
        runtime,
        "--overlay",
        f"root:dir={upper_root}",
        "create",
        "--bundle",
        str(bundle.path),
        "ov-dir-failed",
        msg="prestart",
    )
    assert not (upper_root / "ov-dir-failed").exists()
    assert not (runtime.root / "ov-dir-failed").exists()


def test_dir_upper_layer_of_a_killed_create_goes_with_delete(
    runtime: Runner, bundle: Bundle, tmp_path: Path
) -> None:
    # A createRuntime hook SIGKILLs create mid-way: delete must find the layer.
    upper_root = tmp_path / "uppers"
    cid = "ov-dir-killed"
    bundle.config["root"]["readonly"] = False
    bundle.config["hooks"] = {
        "createRuntime": [
            {"path": "/bin/sh", "args": ["sh", "-c", "cat >/dev/null; kill -9 $PPID"]}
        ]
    }
    bundle.args("sleep", "30")
    flag = ("--overlay", f"root:dir={upper_root}")
    res = runtime(*flag, "create", "--bundle", str(bundle.path), cid)
    assert res.returncode == -9, (res.returncode, res.stderr)
    assert (upper_root / cid).exists()
    assert runtime("delete", "-f", cid).returncode == 0
    assert not (upper_root / cid).exists()


@pytest.mark.usefixtures("traversable")
def test_overlay_in_a_user_namespace(runtime: Runner, bundle: Bundle) -> None:
    # The image belongs to the mapped root, as podman and docker --userns-remap
    # prepare it; the overlay is made inside the container's user namespace.
    give_to_mapped_root(bundle.rootfs)
    cfg = bundle.config
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    _writable(bundle, f"echo hello > /newfile && cat /newfile && {ROOT_FSTYPE} && id -u")
    before = _tree(bundle.rootfs)
    res = runtime("run", "--bundle", str(bundle.path), "ov-userns")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["hello", "overlay", "0"]
    assert _tree(bundle.rootfs) == before


def test_annotation_may_not_name_a_host_directory(
    runtime: Runner, bundle: Bundle, tmp_path: Path
) -> None:
    # A pod spec or an image chooses annotations; a host path is the admin's.
    target = tmp_path / "victim"
    bundle.config["annotations"] = {"io.github.pysandbox.overlay": f"root:dir={target}"}
    bundle.write()
    fails(
        runtime,
        "create",
        "--bundle",
        str(bundle.path),
        "ov-annot-dir",
        msg="may not choose root:dir",
    )
    assert not target.exists()
    assert not (runtime.root / "ov-annot-dir").exists()


def test_an_existing_directory_is_refused_and_kept(
    runtime: Runner, bundle: Bundle, tmp_path: Path
) -> None:
    upper_root = tmp_path / "uppers"
    keep = upper_root / "ov-dir-exists" / "precious"
    keep.parent.mkdir(parents=True)
    keep.write_text("mine\n")
    bundle.config["root"]["readonly"] = False
    bundle.write()
    fails(
        runtime,
        "--overlay",
        f"root:dir={upper_root}",
        "create",
        "--bundle",
        str(bundle.path),
        "ov-dir-exists",
        msg="already exists",
    )
    assert keep.read_text() == "mine\n"  # create's clean-up removed nothing of it


def test_dir_upper_layer_with_a_user_namespace_is_refused(
    runtime: Runner, bundle: Bundle, tmp_path: Path
) -> None:
    bundle.config["linux"]["namespaces"].append({"type": "user"})
    bundle.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 1}]
    bundle.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 1}]
    bundle.write()
    fails(
        runtime,
        "--overlay",
        f"root:dir={tmp_path / 'uppers'}",
        "create",
        "--bundle",
        str(bundle.path),
        "ov-dir-userns",
        msg="not supported with a user namespace",
    )
    assert not (tmp_path / "uppers").exists()


INODES_C = r"""
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
/* For each directory named: every entry's d_ino (readdir) against its
   st_ino (lstat), and its st_dev against the directory's. */
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        struct stat top;
        if (lstat(argv[i], &top) != 0) return 2;
        DIR *d = opendir(argv[i]);
        if (!d) return 2;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char path[4096];
            struct stat st;
            snprintf(path, sizeof path, "%s/%s", argv[i], e->d_name);
            if (lstat(path, &st) != 0) return 2;
            printf("%s ino %s dev %s\n", path, e->d_ino == st.st_ino ? "same" : "differs",
                   st.st_dev == top.st_dev ? "same" : "differs");
        }
        closedir(d);
    }
    return 0;
}
"""


def test_inode_numbers_and_devices_are_as_on_one_file_system(
    runtime: Runner, bundle: Bundle, tmp_path: Path
) -> None:
    """The memory overlay's layers are on two file systems (the image's and a
    tmpfs). Mounted with xino, it gives what one file system would, as docker's
    overlay2 does: a directory's st_ino is readdir's d_ino (Python's test_os
    checks it; find and tar rely on it), and every file shows the root's st_dev,
    whichever layer holds it. Without xino, both differed."""
    import subprocess

    src = tmp_path / "inodes.c"
    src.write_text(INODES_C)
    exe = bundle.rootfs / "inodes"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(exe), str(src)], check=True)
    _writable(
        bundle,
        "mkdir -p /tmp/t/dir /lowerdir-new && touch /tmp/t/file && /inodes /tmp/t /bin /",
    )
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), "ov-inodes")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert "/tmp/t/dir ino same dev same" in lines  # made in the upper layer
    assert "/tmp/t/file ino same dev same" in lines
    assert "/bin/sh ino same dev same" in lines  # the image's (lower layer)
    # / holds the kernel's mount points (/proc, /dev, /sys): other file systems
    differs = {x.split()[0] for x in lines if "differs" in x}
    assert differs <= {"//proc", "//dev", "//sys"}, differs
