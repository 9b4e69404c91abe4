"""A private dockerd for tests and benchmarks: every byte of its state in one
temporary directory, its own socket, its own containerd, and a teardown that
proves nothing was left behind.

dockerd is started with its data root, exec root, pid file and socket inside
``base``; it starts its own containerd (socket under the exec root), whose shims
call the runtimes with ``--root <exec-root>/runtime-runc/moby``, so pysandbox's
state lives there too. daemon.json is written by ``pysandbox install --config``:
the tests use the product's own installer. Networking: ``--iptables=false
--ip-masq=false``, so dockerd only creates its local bridge (docker0), which is
removed again on teardown if it was not there before.

Used by tests/engines/conftest.py and scripts/bench_docker.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYSANDBOX = os.environ.get("PYSANDBOX_BIN", str(REPO / ".venv" / "bin" / "pysandbox"))
# Debian's client, matching the daemon (another client may be earlier on PATH).
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"
CGROUP_ROOT = Path("/sys/fs/cgroup")
BRIDGE = "docker0"
IMAGE = "busybox:test"


class DockerdError(RuntimeError):
    pass


@dataclass
class Runtime:
    """One entry of daemon.json's "runtimes"."""

    name: str
    path: str
    args: list[str] = field(default_factory=list)


def pysandbox_runtimes() -> list[Runtime]:
    return [
        Runtime("pysandbox", PYSANDBOX),
        # runtimeArgs: dockerd wraps them in a script; --debug makes pysandbox
        # record its command line in the task's log.json, so a test can see them.
        Runtime("pysandbox-args", PYSANDBOX, ["--debug"]),
    ]


def parent_cgroups(parent: str) -> list[Path]:
    """dockerd's cgroup parent in every hierarchy (v1 controllers, the v2 mount)."""
    dirs = [h / parent for h in CGROUP_ROOT.iterdir()] + [CGROUP_ROOT / parent]
    return [d for d in dirs if d.is_dir()]


def container_cgroups(parent: str) -> list[str]:
    """Every container cgroup under dockerd's parent, in every hierarchy."""
    found: list[str] = []
    for top in parent_cgroups(parent):
        with contextlib.suppress(OSError):
            found.extend(str(p) for p in top.iterdir() if p.is_dir())
    return found


def container_processes(parent: str) -> list[int]:
    """Processes inside a cgroup under dockerd's parent (a container's)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            text = Path(f"/proc/{name}/cgroup").read_text()
        except OSError:
            continue
        if f":/{parent}/" in text:
            pids.append(int(name))
    return pids


def processes_mentioning(text: str) -> list[int]:
    """Processes whose command line names ``text`` (our dockerd, its containerd, shims)."""
    pids = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            pids.append(int(name))
    return pids


def mounts_under(path: Path) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            if mp == str(path) or mp.startswith(str(path) + "/"):
                out.append(mp)
    return out


def bridge_exists(name: str = BRIDGE) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def make_image_tar(dest: Path) -> Path:
    """A busybox-static rootfs as a tarball for `docker import` (no registry)."""
    from pysandbox.oci.bundle import make_busybox_rootfs

    rootfs = dest.parent / "image-rootfs"
    make_busybox_rootfs(rootfs)
    with tarfile.open(dest, "w") as tar:
        for entry in sorted(rootfs.iterdir()):
            tar.add(entry, arcname=entry.name)
    shutil.rmtree(rootfs)
    return dest


class Dockerd:
    def __init__(self, runtimes: Sequence[Runtime], base: Path | None = None) -> None:
        # Short paths: containerd's sockets live under the exec root (108-byte limit).
        self.base = base or Path(tempfile.mkdtemp(prefix="pst-dockerd-", dir="/tmp"))
        self.runtimes = list(runtimes)
        self.data_root = self.base / "data"
        self.exec_root = self.base / "exec"
        self.socket = self.base / "docker.sock"
        self.config = self.base / "daemon.json"
        self.log_path = self.base / "dockerd.log"
        self.state_root = self.exec_root / "runtime-runc" / "moby"
        self.proc: subprocess.Popen[bytes] | None = None
        self.baseline_mounts: set[str] = set()  # mounts of the idle daemon
        self._had_bridge = bridge_exists()
        # Its own cgroup parent (not /docker): what it leaves is told apart
        # from the containers of any other dockerd on the machine.
        self.cgroup_parent = "pysandbox-" + self.base.name.removeprefix("pst-")
        self._had_parents = {str(p) for p in parent_cgroups(self.cgroup_parent)}

    # --- commands -----------------------------------------------------------

    def cgroup_dir(self, cid: str, controller: str) -> Path:
        """A container's cgroup directory: v1 ``<ctrl>/<parent>/<id>``, else v2."""
        v1 = CGROUP_ROOT / controller / self.cgroup_parent / cid
        return v1 if v1.is_dir() else CGROUP_ROOT / self.cgroup_parent / cid

    def cmd(self, *args: str) -> list[str]:
        return [DOCKER, "-H", f"unix://{self.socket}", *args]

    def __call__(
        self,
        *args: str,
        timeout: float = 60,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            self.cmd(*args),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise DockerdError(
                f"docker {' '.join(args)} exited {res.returncode}\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}"
            )
        return res

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # --- start --------------------------------------------------------------

    def write_config(self) -> None:
        # What is already there must survive `pysandbox install`.
        base = {
            "cgroup-parent": self.cgroup_parent,
            "exec-opts": ["native.cgroupdriver=cgroupfs"],
        }
        self.config.write_text(json.dumps(base, indent=4) + "\n")
        for rt in self.runtimes:
            argv = [PYSANDBOX, "install", "--runtime", rt.name, "--config", str(self.config)]
            argv += ["--path", rt.path]
            if rt.args:
                argv += ["--", *rt.args]
            res = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            if res.returncode != 0:
                raise DockerdError(f"pysandbox install failed: {res.stderr.strip()}")
        doc = json.loads(self.config.read_text())
        if {k: doc.get(k) for k in base} != base:
            raise DockerdError(f"pysandbox install lost settings of {self.config}: {doc}")

    def start(self, timeout: float = 60) -> Dockerd:
        self.base.mkdir(parents=True, exist_ok=True)
        self.write_config()
        argv = [
            DOCKERD,
            "--config-file",
            str(self.config),
            "--data-root",
            str(self.data_root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.base / "docker.pid"),
            "-H",
            f"unix://{self.socket}",
            "--iptables=false",
            "--ip-masq=false",
            "--userland-proxy=false",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DockerdError(f"dockerd exited {self.proc.returncode}:\n{self.log_tail()}")
            if self.socket.exists() and self("info", check=False, timeout=10).returncode == 0:
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise DockerdError(f"dockerd did not answer within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def import_image(self, name: str = IMAGE) -> None:
        tar = make_image_tar(self.base / "busybox.tar")
        self("import", str(tar), name, timeout=120)
        tar.unlink()

    # --- stop ---------------------------------------------------------------

    def remove_all_containers(self) -> None:
        ids = self("ps", "-aq", "--no-trunc", check=False).stdout.split()
        if ids:
            self("rm", "-f", *ids, check=False, timeout=120)

    def stop(self, timeout: float = 20) -> dict[str, list[str]]:
        """Stop dockerd (TERM, then KILL), its containerd and shims; report what
        was left behind (before cleaning it up), and remove everything."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.remove_all_containers()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        time.sleep(0.2)
        left = self.leftovers()
        # Whatever of ours survived dockerd (its containerd, shims): by pid.
        for pid in processes_mentioning(str(self.base)):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in container_processes(self.cgroup_parent):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        for mp in sorted(mounts_under(self.base), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)
        self._remove_cgroups()
        if not self._had_bridge and bridge_exists():
            subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
        return left

    def leftovers(self) -> dict[str, list[str]]:
        found = {
            "processes": [str(p) for p in processes_mentioning(str(self.base))],
            "container processes": [str(p) for p in container_processes(self.cgroup_parent)],
            "cgroups": container_cgroups(self.cgroup_parent),
            "mounts": mounts_under(self.base),
            "pysandbox state": self.state_dirs(),
        }
        return {k: v for k, v in found.items() if v}

    def state_dirs(self) -> list[str]:
        """Containers' state directories in pysandbox's root (its .cache is shared)."""
        if not self.state_root.is_dir():
            return []
        return [str(p) for p in self.state_root.iterdir() if p.name != ".cache"]

    def _remove_cgroups(self) -> None:
        for cg in container_cgroups(self.cgroup_parent):
            with contextlib.suppress(OSError):
                os.rmdir(cg)
        for top in parent_cgroups(self.cgroup_parent):
            if str(top) not in self._had_parents:
                with contextlib.suppress(OSError):
                    top.rmdir()
