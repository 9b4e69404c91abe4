"""The embedded busybox bundle: a real rootfs that runs, and a config that loads."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pysandbox.oci.bundle import BundleError, make_busybox_rootfs, write_bundle
from pysandbox.oci.config import load_bundle


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bb") / "rootfs"
    make_busybox_rootfs(path)
    return path


def test_layout(rootfs: Path) -> None:
    for name in ("proc", "sys", "dev", "tmp", "etc", "root", "bin"):
        assert (rootfs / name).is_dir()
    assert (rootfs / "tmp").stat().st_mode & 0o7777 == 0o1777
    assert (rootfs / "root").stat().st_mode & 0o777 == 0o700
    busybox = rootfs / "bin" / "busybox"
    assert busybox.read_bytes() == Path("/bin/busybox").read_bytes()
    assert os.access(busybox, os.X_OK)


def test_applet_links(rootfs: Path) -> None:
    sh = rootfs / "bin" / "sh"
    assert sh.is_symlink()
    assert os.readlink(sh) == "busybox"
    applets = subprocess.run(
        ["/bin/busybox", "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for name in applets:
        if name != "busybox":
            assert os.readlink(rootfs / "bin" / name) == "busybox"


def test_etc_files(rootfs: Path) -> None:
    passwd = (rootfs / "etc" / "passwd").read_text().splitlines()
    assert passwd[0].startswith("root:x:0:0:")
    assert passwd[1].startswith("nobody:x:65534:65534:")
    group = (rootfs / "etc" / "group").read_text()
    assert "root:x:0:" in group
    assert "nobody:x:65534:" in group
    assert (rootfs / "etc" / "hostname").read_text() == "pysandbox\n"


def test_rootfs_runs(rootfs: Path) -> None:
    # Runs as root (as CI does): chroot needs CAP_SYS_CHROOT.
    result = subprocess.run(
        ["chroot", str(rootfs), "/bin/sh", "-c", "echo hi"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout == "hi\n"


def test_idempotent(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    make_busybox_rootfs(rootfs)
    (rootfs / "bin" / "ls").unlink()
    (rootfs / "bin" / "cat").unlink()
    (rootfs / "bin" / "cat").symlink_to("elsewhere")
    (rootfs / "bin" / "mine").write_text("keep")
    make_busybox_rootfs(rootfs)
    assert os.readlink(rootfs / "bin" / "ls") == "busybox"
    assert os.readlink(rootfs / "bin" / "cat") == "busybox"
    assert (rootfs / "bin" / "mine").read_text() == "keep"
    # No temporary files left behind by the atomic replace.
    assert not [p for p in (rootfs / "bin").iterdir() if p.name.startswith(".")]
    assert not [p for p in (rootfs / "etc").iterdir() if p.name.startswith(".")]


def test_rejects_dynamic_busybox(tmp_path: Path) -> None:
    dynamic = tmp_path / "busybox"
    shutil.copy("/bin/ls", dynamic)  # any dynamically linked binary
    with pytest.raises(BundleError, match=r"dynamically linked \(interpreter /lib.*busybox-static"):
        make_busybox_rootfs(tmp_path / "rootfs", busybox=dynamic)
    assert not (tmp_path / "rootfs").exists()


def test_rejects_non_elf(tmp_path: Path) -> None:
    script = tmp_path / "busybox"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(BundleError, match="not an ELF executable"):
        make_busybox_rootfs(tmp_path / "rootfs", busybox=script)


def test_missing_busybox(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not found; install Debian's busybox-static"):
        make_busybox_rootfs(tmp_path / "rootfs", busybox=tmp_path / "nope")


def test_write_bundle_loads(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path / "b", ["echo", "hi"])
    assert bundle == tmp_path / "b"
    spec = load_bundle(str(bundle))
    assert spec.process is not None
    assert spec.process.args == ["echo", "hi"]
    assert spec.process.terminal is False
    assert spec.root.path == str((tmp_path / "b" / "rootfs").resolve())
    assert spec.linux.namespace("user") is None


def test_write_bundle_default_args_and_rewrite(tmp_path: Path) -> None:
    write_bundle(tmp_path / "b", ["true"])
    bundle = write_bundle(tmp_path / "b", rootless=True)
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["sh"]
    assert config["process"]["terminal"] is False
    spec = load_bundle(str(bundle))
    assert spec.linux.namespace("user") is not None
    assert spec.linux.uid_mappings[0].host_id == os.geteuid()
