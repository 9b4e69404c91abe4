"""Bind mounts through the gofer (issue 5): a container's binds of host
directories and files are served like its root, and the kernel's own view of
them is read-only, so the workload writes a volume only through the gofer.

Each shell script runs under pysandbox and under runc with the same bundle
and must print the same lines (errors included)."""

from __future__ import annotations

import os
import shutil
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
        # a host file beside the volume: links in the volume must not reach it
        (base / "secret").write_text("host secret\n")
        (self.data / "peek").symlink_to("../secret")
        (self.data / "peek_abs").symlink_to(base / "secret")

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
cat /data/peek 2>&1; cat /data/peek_abs 2>&1; ls /data/up/ | grep -c secret
try sh -c 'echo planted > /data/peek'
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
    assert "host secret" not in got.stdout
    # what the workload wrote is on the host, in the volume
    for vols in (ours, theirs):
        assert (vols.base / "secret").read_text() == "host secret\n"
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


def _options(mountinfo: str, point: str) -> list[str]:
    """The per-mount options of the (last) line of ``point``."""
    lines = [x.split(" ") for x in mountinfo.splitlines() if x.split(" ")[4] == point]
    assert lines, (point, mountinfo)
    return lines[-1][5].split(",")


def test_the_kernels_view_of_a_bind_is_read_only(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """The workload writes its volumes through the gofer alone: the kernel's own
    mount of each served bind is read-only in the container's namespace, the
    container's mount table still says what config.json asked for, and a
    write through the gofer lands in the host's directory."""
    vols = Volumes(tmp_path / "vols")
    _bundle_with(bundle, vols, "").args("sleep", "30").write()
    assert runtime("run", "-d", "--bundle", str(bundle.path), cid).returncode == 0
    try:
        pid = int(runtime.state(cid)["pid"])
        kernel_view = Path(f"/proc/{pid}/mountinfo").read_text()
        shown = runtime("exec", cid, "cat", "/proc/self/mountinfo").stdout
        res = runtime("exec", cid, "sh", "-c", "echo through > /data/gofer && cat /data/gofer")
        assert res.stdout == "through\n", res.stderr
    finally:
        runtime("delete", "-f", cid)
    for point in ("/", "/data", "/data/nested", "/etc/note.txt", "/ro"):
        assert _options(kernel_view, point)[0] == "ro", point
    assert _options(kernel_view, "/data/scratch")[0] == "rw"  # a tmpfs: the kernel's
    assert [_options(shown, p)[0] for p in ("/data", "/data/nested", "/etc/note.txt", "/ro")] == [
        "rw",
        "rw",
        "rw",
        "ro",
    ]
    assert (vols.data / "gofer").read_text() == "through\n"


def test_binds_in_a_user_namespace(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """A user namespace locks the binds' flags in the gofer's copy of the
    container's mounts (nosuid, noexec here): the gofer's own binds keep them,
    and the mapped root writes the volume it owns as that user."""
    from tests.conftest import give_to_mapped_root

    give_to_mapped_root(bundle.rootfs)
    vol = tmp_path / "vol"
    vol.mkdir()
    os.chown(vol, 100000, 100000)
    (tmp_path / "note").write_text("note\n")
    os.chown(tmp_path / "note", 100000, 100000)  # writable by the caller: EROFS is the mount's
    cfg = bundle.config
    cfg["root"]["readonly"] = False
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["mounts"] += [
        {
            "destination": "/vol",
            "type": "bind",
            "source": str(vol),
            "options": ["rbind", "nosuid", "noexec"],
        },
        {
            "destination": "/note",
            "type": "bind",
            "source": str(tmp_path / "note"),
            "options": ["bind", "ro"],
        },
    ]
    bundle.args(
        "sh",
        "-c",
        "echo mine > /vol/f && mkdir /vol/d && cat /vol/f /note && ls /vol | wc -l"
        " && (echo no >> /note) 2>&1; cp /bin/busybox /vol/bb && /vol/bb true 2>&1; echo $?",
    ).write()
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[:3] == ["mine", "note", "2"], lines
    assert "Read-only file system" in lines[3]
    assert "Permission denied" in lines[4] and lines[5] == "126"  # noexec kept
    assert (os.stat(vol / "f").st_uid, os.stat(vol / "d").st_uid) == (100000, 100000)


def test_search_permission_above_a_bind(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """A user who may not search a directory above a bind's mount point cannot
    reach the bind, by its path or through a link: the gofer's fast path into
    the mount checks the directories above it, as the kernel's walk does."""
    vol = tmp_path / "vol"
    vol.mkdir()
    vol.chmod(0o777)  # only the directories above it stand in the way
    (vol / "f").write_text("in the volume\n")
    (vol / "f").chmod(0o644)
    (bundle.rootfs / "locked/open").mkdir(parents=True)
    (bundle.rootfs / "locked").chmod(0o700)
    (bundle.rootfs / "shortcut").symlink_to("locked/open/vol")
    bundle.config["mounts"].append(
        {"destination": "/locked/open/vol", "type": "bind", "source": str(vol), "options": ["bind"]}
    )
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    script = (
        "for p in /locked/open/vol/f /shortcut/f /locked/open/vol; do"
        " cat $p 2>&1 || true; ls -d $p 2>&1 || true; (echo x > $p.new) 2>&1; done"
    )
    bundle.args("sh", "-c", script).write()
    got = runtime("run", "--bundle", str(bundle.path), cid)
    want = run_runc(tmp_path, bundle, cid + "-runc")
    assert got.stdout.splitlines() == want.stdout.splitlines(), got.stderr
    assert "Permission denied" in got.stdout
    assert sorted(os.listdir(vol)) == ["f"]


def test_mounts_made_on_the_host_later_reach_the_bind(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """A container's mounts are slaves of the host's (rootfsPropagation rslave,
    runc's default): a file system the host mounts inside a volume's source
    after the start shows up in the container, as under runc, and the
    gofer's copy of the mounts must see it too (it leaves it to the kernel)."""
    from pysandbox.oci import kernel

    vol = tmp_path / "vol"
    (vol / "later").mkdir(parents=True)
    (vol / "later" / "underneath").write_text("hidden by the mount\n")
    bundle.config["root"]["readonly"] = False
    bundle.config["mounts"].append(
        {"destination": "/data", "type": "bind", "source": str(vol), "options": ["rbind"]}
    )
    bundle.args("sleep", "30").write()
    # a shared mount of the volume's source, as systemd makes every mount
    kernel.mount(str(vol), str(vol), None, kernel.MS_BIND)
    mounted = [vol]
    try:
        kernel.mount(None, str(vol), None, kernel.MS_SHARED)
        assert runtime("run", "-d", "--bundle", str(bundle.path), cid).returncode == 0
        kernel.mount("tmpfs", str(vol / "later"), "tmpfs", 0)
        mounted.append(vol / "later")
        (vol / "later" / "fresh").write_text("mounted after the start\n")
        res = runtime("exec", cid, "sh", "-c", "ls /data/later; cat /data/later/fresh")
        assert res.stdout.splitlines() == ["fresh", "mounted after the start"], res
        res = runtime("exec", cid, "sh", "-c", "echo made > /data/later/made; cat /data/later/made")
        assert res.stdout == "made\n", res
    finally:
        runtime("delete", "-f", cid)
        for path in reversed(mounted):
            kernel.umount2(str(path), kernel.MNT_DETACH)


def test_a_directory_holding_a_mount_point_is_not_renamed(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """A deviation from Linux, which moves the mounts with the directory: the
    sentry and the gofer know the container's mounts by their paths, so a
    rename of a directory above one is EBUSY (after the checks Linux makes
    first). The mount point itself is EBUSY in Linux too."""
    vol = tmp_path / "vol"
    vol.mkdir()
    (vol / "f").write_text("in the volume\n")
    bundle.config["root"]["readonly"] = False
    bundle.config["mounts"].append(
        {"destination": "/srv/vol", "type": "bind", "source": str(vol), "options": ["bind"]}
    )
    script = (
        "mv /srv /srv2 2>&1; mv /srv/vol /srv/v2 2>&1; mkdir /srv/d && mv /srv/d /srv/e"
        " && cat /srv/vol/f && ls /srv"
    )
    bundle.args("sh", "-c", script).write()
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.stdout.splitlines() == [
        "mv: can't rename '/srv': Device or resource busy",
        "mv: can't rename '/srv/vol': Device or resource busy",
        "in the volume",
        "e",
        "vol",
    ], res.stderr


CONNECT_PROBE = r"""
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
int main(int argc, char **argv) {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, argv[1], sizeof a.sun_path - 1);
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("connect"); return 1; }
    char buf[64] = {0};
    read(s, buf, sizeof buf - 1);
    printf("%s", buf);
    return 0;
}
"""


def test_a_bound_host_socket_is_reached(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """docker's -v /var/run/docker.sock:/var/run/docker.sock: a bind of a host
    socket file is a file mount of the gofer, and connect(2) to it reaches the
    host's listener (the gofer connects the workload's own socket)."""
    import socket
    import threading

    from tests.integration.helpers import compile_probe

    probe = compile_probe(tmp_path, CONNECT_PROBE, "connect")
    (bundle.rootfs / "connect").write_bytes(probe.read_bytes())
    (bundle.rootfs / "connect").chmod(0o755)
    path = tmp_path / "host.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(4)

    def serve() -> None:
        conn, _ = listener.accept()
        conn.sendall(b"hello from the host\n")
        conn.close()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        bundle.config["mounts"].append(
            {
                "destination": "/run/host.sock",
                "type": "bind",
                "source": str(path),
                "options": ["bind"],
            }
        )
        bundle.args("/connect", "/run/host.sock").write()
        res = runtime("run", "--bundle", str(bundle.path), cid)
        assert (res.returncode, res.stdout) == (0, "hello from the host\n"), res.stderr
        server.join(5)
    finally:
        listener.close()


def test_the_host_changes_a_volume_under_a_running_container(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """A volume is shared with the host, which may replace its directories at any
    time (a `git checkout`, an editor, a kubelet): the sentry's lookups must not
    answer from directories it opened before. Its directory cache keeps the
    container's root only, which nothing but the container changes."""
    vol = tmp_path / "vol"
    (vol / "d").mkdir(parents=True)
    (vol / "d" / "f").write_text("one\n")
    bundle.config["mounts"].append(
        {"destination": "/vol", "type": "bind", "source": str(vol), "options": ["rbind"]}
    )
    bundle.args("sleep", "30").write()
    assert runtime("run", "-d", "--bundle", str(bundle.path), cid).returncode == 0
    try:
        look = "cat /vol/d/f; stat -c %s /vol/d/f; ls /vol/d"
        first = runtime("exec", cid, "sh", "-c", look)
        assert first.stdout.split() == ["one", "4", "f"], first
        shutil.rmtree(vol / "d")
        (vol / "d").mkdir()
        (vol / "d" / "f").write_text("second\n")
        (vol / "d" / "g").write_text("")
        again = runtime("exec", cid, "sh", "-c", look)
        assert again.stdout.split() == ["second", "7", "f", "g"], again
    finally:
        runtime("delete", "-f", cid)
