"""A private containerd for the engine tests, and the ``ctr`` that drives it.

Everything lives under one temporary directory: containerd's root and state,
its gRPC/ttrpc sockets, the "opt" plugin's directory, the shim's runtime root
(``--runc-root``, where pysandbox keeps its state) and ctr's IO fifos. Nothing
touches /var/lib/containerd or /opt/containerd; the one thing containerd 1.6
does not let us move is the shim's socket (/run/containerd/s/<hash>), which the
shim removes when it exits. Containers run in a containerd
namespace of their own, so their cgroups sit under ``/<namespace>/<id>``; the
fixture removes that parent afterwards (runc's callers leave it behind too).

On the way out the fixture kills and deletes every task and container, stops
containerd, and then fails if a shim, a mount or a cgroup was left.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import PYSANDBOX
from tests.engines.common import (
    BUSYBOX_REF,
    cgroup_children,
    kill_pids,
    mounts_under,
    pids_matching,
    remove_top_cgroup,
    unmount_under,
)

CRI_PLUGIN = "io.containerd.grpc.v1.cri"
REPO = Path(__file__).resolve().parents[2]
SNIPPET = REPO / "deploy" / "containerd" / "config.toml.snippet"


class ContainerdError(AssertionError):
    pass


@dataclass
class Containerd:
    base: Path
    proc: subprocess.Popen[bytes]
    namespace: str
    runtime: str = PYSANDBOX
    log_path: Path = field(default_factory=Path)

    @property
    def address(self) -> str:
        return str(self.base / "containerd.sock")

    @property
    def runc_root(self) -> Path:
        return self.base / "runc"

    @property
    def fifo_dir(self) -> Path:
        return self.base / "fifo"

    def ctr(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = ["ctr", "--address", self.address, "--namespace", self.namespace, *args]
        res = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise ContainerdError(
                f"{' '.join(cmd)} exited {res.returncode}\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}\n"
                f"containerd log (tail):\n{self.log_tail()}"
            )
        return res

    def run_flags(self) -> list[str]:
        """The flags that make ``ctr run`` use pysandbox through the runc v2 shim."""
        return [
            "--runc-binary",
            self.runtime,
            "--runc-root",
            str(self.runc_root),
            "--fifo-dir",
            str(self.fifo_dir),
        ]

    def run(
        self, cid: str, *args: str, flags: tuple[str, ...] = (), check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``ctr run <pysandbox flags> [flags] IMAGE cid args...``."""
        return self.ctr("run", *self.run_flags(), *flags, BUSYBOX_REF, cid, *args, check=check)

    def exec(
        self, cid: str, exec_id: str, *args: str, detach: bool = False, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``ctr task exec``, its IO fifos in our directory (ctr leaves a detached
        process's fifos behind)."""
        flags = ["--fifo-dir", str(self.fifo_dir), "--exec-id", exec_id]
        if detach:
            flags.append("--detach")
        return self.ctr("task", "exec", *flags, cid, *args, check=check)

    def task_pid(self, cid: str) -> int:
        for line in self.ctr("task", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == cid:
                return int(parts[1])
        raise ContainerdError(f"no task {cid}")

    def task_status(self, cid: str) -> str:
        for line in self.ctr("task", "ls").stdout.splitlines()[1:]:
            parts = line.split()
            if parts and parts[0] == cid:
                return parts[2]
        return ""

    def cgroup_dir(self, controller: str, cid: str) -> Path:
        root = Path("/sys/fs/cgroup")
        if (root / "cgroup.controllers").exists():
            return root / self.namespace / cid
        return root / controller / self.namespace / cid

    def remove_everything(self) -> list[str]:
        """Kill and delete every task and container of our namespace; return their ids."""
        ids = self.ctr("containers", "ls", "-q", check=False).stdout.split()
        for cid in ids:
            self.ctr("task", "kill", "-a", "-s", "KILL", cid, check=False)
        for cid in ids:
            deadline = time.monotonic() + 10
            while self.task_status(cid) not in ("STOPPED", "") and time.monotonic() < deadline:
                time.sleep(0.05)
            self.ctr("task", "rm", "-f", cid, check=False)
            self.ctr("containers", "rm", cid, check=False)
        return ids

    def leftovers(self) -> dict[str, list[str]]:
        """What a finished test must not leave: tasks, containers, runtime
        state, container cgroups."""
        found = {
            "containers": self.ctr("containers", "ls", "-q", check=False).stdout.split(),
            "tasks": self.ctr("task", "ls", "-q", check=False).stdout.split(),
            "runtime state": sorted(
                str(p) for p in (self.runc_root / self.namespace).glob("*") if p.is_dir()
            ),
            "cgroups": cgroup_children(self.namespace),
        }
        return {k: v for k, v in found.items() if v}

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def write_config(base: Path, *, cri: bool = False, extra: str = "") -> Path:
    """containerd's config.toml: every path under `base`; the CRI plugin off
    unless asked for."""
    disabled = "" if cri else f'"{CRI_PLUGIN}"'
    lines = [
        "version = 2",
        f'root = "{base}/root"',
        f'state = "{base}/state"',
        f"disabled_plugins = [{disabled}]",
        "[grpc]",
        f'  address = "{base}/containerd.sock"',
        "[ttrpc]",
        f'  address = "{base}/containerd.sock.ttrpc"',
        "[debug]",
        '  address = ""',
        "[metrics]",
        '  address = ""',
        '[plugins."io.containerd.internal.v1.opt"]',
        f'  path = "{base}/opt"',
    ]
    if cri:
        # Keep the CRI plugin's own directories and its streaming server local.
        lines += [
            f'[plugins."{CRI_PLUGIN}"]',
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            f'[plugins."{CRI_PLUGIN}".cni]',
            f'  conf_dir = "{base}/cni/conf"',
            f'  bin_dir = "{base}/cni/bin"',
        ]
    path = base / "config.toml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def _shims_of(base: Path) -> list[int]:
    address = str(base / "containerd.sock")
    return pids_matching(
        lambda argv: argv[0].endswith("containerd-shim-runc-v2") and address in argv
    )


@contextlib.contextmanager
def running_containerd(
    base: Path,
    *,
    cri: bool = False,
    extra_config: str = "",
    config_text: str | None = None,
    namespace: str | None = None,
) -> Iterator[Containerd]:
    """Start containerd with everything under `base`; stop it, its shims and
    their containers afterwards, and fail if anything was left behind.

    `config_text` replaces the generated config.toml; it must put every path
    under `base` and the gRPC socket at ``base/containerd.sock``."""
    base.mkdir(parents=True, exist_ok=True)
    if config_text is None:
        config = write_config(base, cri=cri, extra=extra_config)
    else:
        config = base / "config.toml"
        config.write_text(config_text)
    log_path = base / "containerd.log"
    ns = namespace or "pysbx-" + uuid.uuid4().hex[:8]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", str(config), "--log-level", "info"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    daemon = Containerd(base, proc, ns, log_path=log_path)
    problems: dict[str, list[str]] = {}
    try:
        deadline = time.monotonic() + 20
        while daemon.ctr("version", check=False, timeout=10).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise ContainerdError(f"containerd did not start:\n{daemon.log_tail()}")
            time.sleep(0.1)
        yield daemon
    finally:
        if proc.poll() is None:
            if daemon.remove_everything():
                problems["containers at teardown"] = ["(removed)"]
            problems.update(daemon.leftovers())
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Shims outlive containerd by design; ours must be gone by now.
        time.sleep(0.1)
        shims = _shims_of(base)
        if shims:
            problems["shims"] = [str(p) for p in shims]
            kill_pids(shims)
        mounts = mounts_under(base)
        if mounts:
            problems["mounts"] = mounts
            unmount_under(base)
        remove_top_cgroup(ns)
    if problems:
        raise ContainerdError(f"containerd teardown found leftovers: {problems}")
