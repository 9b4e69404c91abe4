"""pysandbox under the real podman 4.3 (with conmon): ``podman --runtime``.

Podman runs with storage, run root, events log, temporary files, network
configuration and pysandbox's state all under one temporary directory
(``--root``, ``--runroot``, ``--storage-driver vfs`` and a containers.conf given
through CONTAINERS_CONF), the cgroupfs manager and ``--network none``. The image
is the busybox-static rootfs, ``podman import``-ed.

pysandbox keeps its state in its default root (/run/pysandbox), as it does for
anyone running podman: podman does not hand ``--runtime-flag`` to the cleanup
process conmon starts when a container exits (its ``delete --force`` would look
in the wrong root), and it calls the runtime with a scrubbed environment, so
neither a flag nor $PYSANDBOX_ROOT can move it. The leak check follows the
container ids in podman's event log instead.

This machine's quirk (../shared/reference/RUNC-CONTRACT.md): root lacks
CAP_SYS_RESOURCE, so podman's default ulimits (hard nofile and nproc at
1048576) cannot be set; pysandbox refuses them with a clear error, as it should.
The containers.conf here sets sane defaults instead; one test checks the error.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pysandbox.oci.state import DEFAULT_ROOT
from tests.conftest import PYSANDBOX
from tests.engines.common import (
    cgroup_children,
    kill_pids,
    mounts_under,
    pids_matching,
    unmount_under,
    write_rootfs_tar,
)

pytestmark = pytest.mark.engine

IMAGE = "localhost/pysandbox-busybox:latest"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def containers_conf(base: Path) -> str:
    return f"""\
[containers]
# Root here lacks CAP_SYS_RESOURCE: podman's default hard limits (1048576)
# cannot be set, so give containers limits this host can grant.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]
netns = "none"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"
tmp_dir = "{base}/tmp"
volume_path = "{base}/storage/volumes"

[network]
network_config_dir = "{base}/networks"
"""


@dataclass
class Podman:
    base: Path
    env: dict[str, str]

    def container_ids(self) -> set[str]:
        """Every container this podman ever had, from its event log."""
        ids: set[str] = set()
        try:
            lines = (self.base / "events.log").read_text().splitlines()
        except OSError:
            return ids
        for line in lines:
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if event.get("Type") == "container" and event.get("ID"):
                    ids.add(event["ID"])
        return ids

    def argv(self, *args: str) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.base / "storage"),
            "--runroot",
            str(self.base / "run"),
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
            "--runtime",
            PYSANDBOX,
            *args,
        ]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            self.argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {res.returncode}\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}"
            )
        return res

    def inspect(self, name: str, fmt: str) -> str:
        return self("inspect", name, "--format", fmt).stdout.strip()

    def cgroup_dir(self, controller: str, name: str) -> Path:
        """The container's cgroup, read from its init's /proc/PID/cgroup."""
        pid = int(self.inspect(name, "{{.State.Pid}}"))
        v2 = (CGROUP_ROOT / "cgroup.controllers").exists()
        for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if v2 and controllers == "":
                return CGROUP_ROOT / path.lstrip("/")
            if controller in controllers.split(","):
                return CGROUP_ROOT / controllers / path.lstrip("/")
        raise AssertionError(f"no {controller} cgroup for {name}")

    def leftovers(self) -> dict[str, list[str]]:
        ids = self.container_ids()
        found = {
            "containers": self("ps", "-aq", check=False).stdout.split(),
            "runtime state": sorted(
                str(Path(DEFAULT_ROOT) / cid) for cid in ids if (Path(DEFAULT_ROOT) / cid).exists()
            ),
            "cgroups": [
                c for c in cgroup_children("libpod_parent") if c.rsplit("libpod-", 1)[-1] in ids
            ],
        }
        return {k: v for k, v in found.items() if v}


def _conmons_of(base: Path) -> list[int]:
    return pids_matching(
        lambda argv: argv[0].endswith("conmon") and any(str(base) in a for a in argv)
    )


@pytest.fixture(scope="module")
def podman_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    base = tmp_path_factory.mktemp("podman")
    conf = base / "containers.conf"
    conf.write_text(containers_conf(base))
    env = dict(os.environ, CONTAINERS_CONF=str(conf), TMPDIR=str(base / "tmp"))
    env.pop("PYSANDBOX_ROOT", None)  # podman would not pass it on anyway
    (base / "tmp").mkdir()
    engine = Podman(base, env)
    rootfs_tar = write_rootfs_tar(base / "busybox-rootfs.tar")
    engine("import", str(rootfs_tar), IMAGE)
    problems: dict[str, list[str]] = {}
    try:
        yield engine
    finally:
        problems.update(engine.leftovers())
        engine("rm", "--all", "--force", "--time", "0", check=False)
        conmons = _conmons_of(base)
        if conmons:
            problems["conmon"] = [str(p) for p in conmons]
            kill_pids(conmons)
        mounts = mounts_under(base)
        if mounts:
            problems["mounts"] = mounts
            unmount_under(base)
    if problems:
        raise AssertionError(f"podman teardown found leftovers: {problems}")


@pytest.fixture
def podman(podman_engine: Podman) -> Iterator[Podman]:
    """The module's podman; after each test no container or pysandbox state may be left."""
    yield podman_engine
    # `run --rm` removes the container from conmon's exit command, a moment later.
    deadline = time.monotonic() + 5
    left = podman_engine.leftovers()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = podman_engine.leftovers()
    if left:
        podman_engine("rm", "--all", "--force", "--time", "0", check=False)
        pytest.fail(f"test left things behind in podman: {left}")


def test_run_rm_output_and_exit_code(podman: Podman) -> None:
    res = podman(
        "run", "--rm", "--network", "none", IMAGE,
        "sh", "-c", "echo out; echo err >&2; ulimit -n; exit 3",
        check=False,
    )  # fmt: skip
    assert res.returncode == 3, res
    assert res.stdout.split() == ["out", "1024"]
    assert "err" in res.stderr
    assert podman.container_ids(), "the leak check can see podman's containers"


def test_run_from_rootfs_directory(podman: Podman, busybox_rootfs: Path, tmp_path: Path) -> None:
    # podman adds mount points (/etc/hosts, /run/.containerenv) to a --rootfs:
    # give it a copy, not the session's shared rootfs.
    rootfs = tmp_path / "rootfs"
    shutil.copytree(busybox_rootfs, rootfs, symlinks=True)
    res = podman(
        "run", "--rm", "--network", "none", "--rootfs", str(rootfs), "sh", "-c", "echo $0 ok",
    )  # fmt: skip
    assert res.stdout.strip() == "sh ok"


def test_volumes_through_the_gofer(podman: Podman, tmp_path: Path) -> None:
    """podman's -v (a bind, :ro too) and its /etc/hosts: the gofer serves them, and
    the workload's writes reach the host's directory."""
    vol, ro = tmp_path / "vol", tmp_path / "ro"
    vol.mkdir()
    ro.mkdir()
    (ro / "kept").write_text("kept\n")
    res = podman(
        "run", "--rm", "--network", "none", "-v", f"{vol}:/vol", "-v", f"{ro}:/ro:ro", IMAGE,
        "sh", "-c",
        "echo from-podman > /vol/out && mkdir /vol/d && mv /vol/out /vol/d/"
        " && cat /ro/kept && (touch /ro/x 2>&1 || true) && grep -c localhost /etc/hosts"
        " && grep -E ' /(vol|ro) ' /proc/self/mountinfo | cut -d' ' -f5,6 | sort",
    )  # fmt: skip
    lines = res.stdout.splitlines()
    assert lines[0] == "kept" and "Read-only file system" in lines[1], lines
    assert int(lines[2]) >= 1  # podman's /etc/hosts, a file bind
    assert [x.split()[0] for x in lines[3:]] == ["/ro", "/vol"]
    assert [x.split()[1].split(",")[0] for x in lines[3:]] == ["ro", "rw"]
    assert (vol / "d" / "out").read_text() == "from-podman\n"


def test_exec_pause_unpause_update_stop(podman: Podman) -> None:
    name = "pst-podman-life"
    podman("run", "-d", "--name", name, "--network", "none", IMAGE, "sleep", "300")
    try:
        res = podman("exec", name, "sh", "-c", "echo exec-$$; exit 5", check=False)
        assert res.returncode == 5, res
        assert res.stdout.startswith("exec-")

        podman("pause", name)
        assert podman.inspect(name, "{{.State.Status}}") == "paused"
        freezer = podman.cgroup_dir("freezer", name)
        if (freezer / "freezer.state").exists():
            assert (freezer / "freezer.state").read_text().strip() == "FROZEN"
        podman("unpause", name)
        assert podman.inspect(name, "{{.State.Status}}") == "running"

        # podman 4.3 hands the new limits to `update --resources=FILE`.
        podman("update", "--memory", "64m", name)
        memory = podman.cgroup_dir("memory", name)
        limit_file = memory / (
            "memory.limit_in_bytes" if (memory / "memory.limit_in_bytes").exists() else "memory.max"
        )
        assert int(limit_file.read_text()) == 64 * 1024 * 1024

        # sleep as pid 1 ignores SIGTERM: podman falls back to SIGKILL after -t.
        podman("stop", "-t", "1", name)
        assert podman.inspect(name, "{{.State.Status}}") == "exited"
        assert podman.inspect(name, "{{.State.ExitCode}}") == "137"
    finally:
        podman("rm", "-f", "-t", "0", name)


def test_stop_delivers_sigterm(podman: Podman) -> None:
    name = "pst-podman-term"
    script = "trap 'exit 9' TERM; while :; do sleep 0.05; done"
    podman("run", "-d", "--name", name, "--network", "none", IMAGE, "sh", "-c", script)
    try:
        podman("stop", "-t", "20", name)
        assert podman.inspect(name, "{{.State.ExitCode}}") == "9"
    finally:
        podman("rm", "-f", "-t", "0", name)


def test_host_ulimits_above_what_root_may_set_fail_clearly(podman: Podman) -> None:
    """Asking for a hard nofile above the runtime's own needs CAP_SYS_RESOURCE,
    which root lacks here: the run fails with the runtime's error, not a hang."""
    hard = int(Path("/proc/self/limits").read_text().split("Max open files")[1].split()[1])
    want = hard + 1
    res = podman(
        "run", "--rm", "--network", "none", "--ulimit", f"nofile={want}:{want}", IMAGE, "true",
        check=False,
    )  # fmt: skip
    if res.returncode == 0:
        pytest.skip("this host lets root raise hard limits (CAP_SYS_RESOURCE)")
    assert "RLIMIT_NOFILE" in res.stderr, res.stderr


def test_containers_conf_can_make_pysandbox_the_default(podman: Podman, tmp_path: Path) -> None:
    """The README's containers.conf (``runtime = "pysandbox"`` plus an
    ``[engine.runtimes]`` entry) selects pysandbox without ``--runtime``."""
    conf = tmp_path / "containers.conf"
    conf.write_text(
        containers_conf(podman.base)
        .replace("[engine]\n", '[engine]\nruntime = "pysandbox"\n', 1)
        .rstrip()
        + f'\n\n[engine.runtimes]\npysandbox = ["{PYSANDBOX}"]\n'
    )
    argv = podman.argv("run", "--rm", "--network", "none", IMAGE, "echo", "default-ok")
    i = argv.index("--runtime")
    del argv[i : i + 2]
    env = dict(podman.env, CONTAINERS_CONF=str(conf))
    res = subprocess.run(
        argv, capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "default-ok"
    info = subprocess.run(
        [*argv[: argv.index("run")], "info", "--format", "{{.Host.OCIRuntime.Path}}"],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert info.stdout.strip() == PYSANDBOX
