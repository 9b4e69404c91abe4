"""Bind mounts through the gofer (issue 5): a container's binds of host
directories and files are served like its root, and the kernel's own view of
them is read-only, so the workload writes a volume only through the gofer.

Each shell script runs under pysandbox and under runc with the same bundle
and must print the same lines (errors included)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runner
from tests.integration.helpers import run_runc

pytestmark = pytest.mark.usefixtures("traversable")


class Volumes:
    """Host directories and a file bound into a container, fresh per runtime."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.data = base / "data"
        self.ro = base / "ro"
        self.inner = base / "inner"
        self.note = base / "note.txt"
        for d in (self.data, self.ro, self.inner):
            d.mkdir(parents=True)
            d.chmod(0o777)
        (self.data / "hello").write_text("hello from the host\n")
        (self.data / "sub").mkdir()
        (self.data / "sub" / "deep").write_text("deep\n")
        (self.data / "up").symlink_to("..")
        (self.data / "abs").symlink_to("/etc")
        (self.ro / "kept").write_text("read only\n")
        (self.inner / "inside").write_text("nested bind\n")
        self.note.write_text("a file mount\n")
        self.note.chmod(0o666)

    def mounts(self) -> list[dict[str, object]]:
        return [
            {
                "destination": "/data",
                "type": "bind",
                "source": str(self.data),
                "options": ["rbind"],
            },
            {
                "destination": "/ro",
                "type": "bind",
                "source": str(self.ro),
                "options": ["rbind", "ro"],
            },
            {
                "destination": "/data/nested",
                "type": "bind",
                "source": str(self.inner),
                "options": ["bind"],
            },
            {"destination": "/data/scratch", "type": "tmpfs", "source": "tmpfs", "options": []},
            {
                "destination": "/etc/note.txt",
                "type": "bind",
                "source": str(self.note),
                "options": ["bind"],
            },
        ]


SCRIPT = r"""
say() { echo "$*"; }
try() { if out=$("$@" 2>&1); then say "ok: $* $out"; else say "failed: $* $out"; fi; }
cat /data/hello
cat /data/sub/deep /data/up/data/sub/deep /data/sub/../hello
ls /data/abs/ | grep -c passwd
try sh -c 'echo written > /data/new'
cat /data/new
try mkdir /data/dir
try sh -c 'echo x > /data/dir/x'
try mv /data/dir/x /data/dir/y
try ln -s y /data/dir/link
cat /data/dir/link
try ln /data/dir/y /data/dir/hard
stat -c '%h %a' /data/dir/y
try chmod 600 /data/dir/y
stat -c '%a' /data/dir/y
try rm /data/dir/y /data/dir/link /data/dir/hard
try rmdir /data/dir
try cp /data/new /data/copy
try mv /data/new /data/nested/moved
try mv /data/copy /moved
try mv /moved /data/sub/
cat /data/sub/moved
cat /data/nested/moved /data/nested/inside
try sh -c 'echo no > /ro/new'
try rm /ro/kept
cat /ro/kept
try sh -c 'echo appended >> /etc/note.txt'
cat /etc/note.txt
try cat /etc/note.txt/x
try sh -c 'echo t > /data/scratch/t'
cat /data/scratch/t
try rmdir /data/nested
try rm /etc/note.txt
try mkdir /data/nested
ls /data | sort | tr '\n' ' '
echo
cd /data/sub && cat deep ../hello && cd .. && cat sub/deep
"""


@pytest.fixture
def volumes(tmp_path: Path) -> Iterator[tuple[Volumes, Volumes]]:
    yield Volumes(tmp_path / "ours"), Volumes(tmp_path / "runc")


def _bundle_with(bundle: Bundle, vols: Volumes, script: str) -> Bundle:
    bundle.config["root"]["readonly"] = False
    bundle.config["mounts"] = [
        m for m in bundle.config["mounts"] if m["destination"] not in ("/data", "/ro")
    ] + vols.mounts()
    return bundle.args("sh", "-c", script)


def test_binds_behave_as_under_runc(
    runtime: Runner, bundle: Bundle, cid: str, volumes: tuple[Volumes, Volumes], tmp_path: Path
) -> None:
    ours, theirs = volumes
    _bundle_with(bundle, ours, SCRIPT).write()
    got = runtime("run", "--bundle", str(bundle.path), cid)
    _bundle_with(bundle, theirs, SCRIPT).write()
    want = run_runc(tmp_path, bundle, cid + "-runc")
    assert got.stdout.splitlines() == want.stdout.splitlines(), got.stderr
    assert got.returncode == want.returncode == 0
    # what the workload wrote is on the host, in the volume
    for vols in (ours, theirs):
        assert (vols.inner / "moved").read_text() == "written\n"
        assert vols.note.read_text() == "a file mount\nappended\n"
        assert not (vols.ro / "new").exists()
    assert sorted(os.listdir(ours.data)) == sorted(os.listdir(theirs.data))


def test_a_bind_at_dev_gets_no_device_nodes(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """With /dev a bind mount, the runtime makes no device nodes or links in it,
    as runc: they would land in the host's directory. (Found while writing
    the mount plan: "/" + "/dev" normalised to "//dev", so a bind at /dev was
    never recognised.)"""
    listings = []
    for name in ("ours", "runc"):
        dev = tmp_path / f"dev-{name}"
        dev.mkdir()
        (dev / "mine").write_text("host file\n")
        os.mknod(dev / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # runc needs it
        bundle.config["mounts"] = [
            m for m in bundle.config["mounts"] if not m["destination"].startswith("/dev")
        ] + [{"destination": "/dev", "type": "bind", "source": str(dev), "options": ["rbind"]}]
        bundle.args("ls", "/dev").write()
        if name == "ours":
            res = runtime("run", "--bundle", str(bundle.path), cid)
        else:
            res = run_runc(tmp_path, bundle, cid + "-runc")
        assert res.returncode == 0, res.stderr
        listings.append((res.stdout.split(), sorted(os.listdir(dev))))
    assert listings[0] == listings[1] == (["mine", "null"], ["mine", "null"])
