"""A gofer that serves a running container's files as its workload sees them:
joined to the container's mount namespace, the gofer's root is the overlay
root (not the bundle), and a bind mount is another of its mounts. The first
step of putting the gofer in the workload's path (issue 5)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pysandbox.gofer import protocol as p
from pysandbox.gofer.process import Gofer, MountSource, start
from pysandbox.oci import kernel
from tests.conftest import Bundle, Runner, wait_for

ROOT = p.Credentials(0, 0, (), (1 << (kernel.cap_last_cap() + 1)) - 1)


@pytest.fixture
def container(runtime: Runner, bundle: Bundle, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A running container with a writable (overlay) root and a bind at /data;
    yields (init's host pid, the bind's host directory)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "note").write_text("from the host\n")
    bundle.config["root"]["readonly"] = False
    bundle.config["mounts"].append(
        {"destination": "/data", "type": "bind", "source": str(data), "options": ["rbind"]}
    )
    bundle.args("sh", "-c", "echo inside > /written-inside; exec sleep 30")
    assert runtime("run", "-d", "--bundle", str(bundle.path), "gofer-ct").returncode == 0
    try:
        pid = int(runtime.state("gofer-ct")["pid"])
        yield pid, data
    finally:
        runtime("delete", "-f", "gofer-ct")


@pytest.fixture
def gofer(container: tuple[int, Path]) -> Iterator[Gofer]:
    pid, _data = container
    g = start("/", mounts=[MountSource("/data")], mount_ns_of=pid)
    try:
        yield g
    finally:
        g.stop()


def _in_container(runtime: Runner, *argv: str) -> str:
    res = runtime("exec", "gofer-ct", *argv)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_the_gofer_sees_the_workloads_root(
    runtime: Runner, bundle: Bundle, container: tuple[int, Path], gofer: Gofer
) -> None:
    client = gofer.client(ROOT)
    wait_for(lambda: _in_container(runtime, "cat", "/written-inside") == "inside\n")
    # the workload's write is in the overlay, and the gofer sees it there
    st = client.stat("/written-inside")
    inside = _in_container(runtime, "stat", "-c", "%d %i %s", "/written-inside").split()
    assert [st.dev, st.ino, st.size] == [int(x) for x in inside]
    assert not (bundle.rootfs / "written-inside").exists()
    # what the gofer creates, the workload sees; the bundle still does not
    fd = client.open("/made-by-gofer", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, b"from the gofer\n")
    finally:
        os.close(fd)
    assert _in_container(runtime, "cat", "/made-by-gofer") == "from the gofer\n"
    assert not (bundle.rootfs / "made-by-gofer").exists()


def test_a_bind_mount_is_another_gofer_mount(
    runtime: Runner, container: tuple[int, Path], gofer: Gofer
) -> None:
    _pid, data = container
    client = gofer.client(ROOT)
    st = client.stat("/note", mount=1)
    assert (st.dev, st.ino) == (os.stat(data / "note").st_dev, os.stat(data / "note").st_ino)
    # mount 0 is the root file system alone: /data there is the empty mount point
    with pytest.raises(FileNotFoundError):
        client.stat("/data/note")


def test_the_joined_gofer_stays_confined(container: tuple[int, Path], gofer: Gofer) -> None:
    status = Path(f"/proc/{gofer.pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    pid, _data = container
    # its own mount namespace: neither the host's nor the container's
    mine = os.stat(f"/proc/{gofer.pid}/ns/mnt").st_ino
    assert mine not in (os.stat("/proc/self/ns/mnt").st_ino, os.stat(f"/proc/{pid}/ns/mnt").st_ino)
