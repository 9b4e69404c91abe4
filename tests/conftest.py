"""Shared fixtures: a real busybox-static bundle, a runtime root per test, the
installed ``pysandbox`` command, and a leak check after every test.

Container ids made by ``cid`` start with ``pst-``; the leak check looks for
anything of theirs left behind: state directories, processes, cgroups and
mounts. Cleaning up after a leak keeps one failure from cascading.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci.bundle import make_busybox_rootfs
from pysandbox.oci.specgen import default_spec

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SPECS = SHARED / "reference" / "specs"
PYSANDBOX = os.environ.get("PYSANDBOX_BIN", str(REPO / ".venv" / "bin" / "pysandbox"))
CGROUP_ROOT = Path("/sys/fs/cgroup")
ID_PREFIX = "pst-"


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rootfs = tmp_path_factory.mktemp("image") / "rootfs"
    make_busybox_rootfs(rootfs)
    return rootfs


@dataclass
class Bundle:
    path: Path
    config: dict[str, Any]

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"

    def write(self) -> Bundle:
        (self.path / "config.json").write_text(json.dumps(self.config, indent=2))
        return self

    def args(self, *argv: str) -> Bundle:
        self.config["process"]["args"] = list(argv)
        return self.write()


@pytest.fixture
def bundle(tmp_path: Path, busybox_rootfs: Path) -> Bundle:
    """A fresh bundle: a private copy of the busybox rootfs and runc's default
    config with terminal off and args ``true``."""
    path = tmp_path / "bundle"
    path.mkdir()
    shutil.copytree(busybox_rootfs, path / "rootfs", symlinks=True)
    config = default_spec(["true"], terminal=False)
    return Bundle(path, config).write()


@dataclass
class Runner:
    root: Path
    extra_global: list[str] = field(default_factory=list)

    def cmd(self, *args: str) -> list[str]:
        return [PYSANDBOX, "--root", str(self.root), *self.extra_global, *args]

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        timeout: float = 60,
        check: bool = False,
        stdin: int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run pysandbox; ``env`` adds variables to (not replaces) ours."""
        # Files, not pipes: a created container inherits our stdout/stderr and
        # would hold a pipe open long after pysandbox itself has exited.
        with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run(
                self.cmd(*args),
                input=input,
                stdin=stdin if input is None else None,
                stdout=out,
                stderr=err,
                text=True,
                timeout=timeout,
                env={**os.environ, **env} if env else None,
            )
            out.seek(0)
            err.seek(0)
            res = subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
        if check and res.returncode != 0:
            raise AssertionError(
                f"pysandbox {' '.join(args)} exited {res.returncode}\n"
                f"stdout: {res.stdout}\nstderr: {res.stderr}"
            )
        return res

    def state(self, cid: str) -> dict[str, Any]:
        res = self("state", cid, check=True)
        doc: dict[str, Any] = json.loads(res.stdout)
        return doc


@pytest.fixture
def runtime(tmp_path: Path) -> Runner:
    root = tmp_path / "state"
    return Runner(root)


@pytest.fixture
def cid() -> str:
    return ID_PREFIX + uuid.uuid4().hex[:10]


# --- leak check ---------------------------------------------------------------


def _our_cgroups() -> list[Path]:
    found: list[Path] = []
    for hierarchy in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else []:
        with contextlib.suppress(OSError):
            for entry in hierarchy.iterdir():
                if entry.name.startswith(ID_PREFIX) and entry.is_dir():
                    found.append(entry)
    return found


def _our_processes(tmp: Path) -> list[int]:
    pids: list[int] = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        pid = int(name)
        try:
            cg = Path(f"/proc/{pid}/cgroup").read_text()
        except OSError:
            continue
        if f"/{ID_PREFIX}" in cg:
            pids.append(pid)
            continue
        try:
            root = os.readlink(f"/proc/{pid}/root")
            # a sentry or its watchdog: outside the container, forked from
            # a pysandbox whose command line names the test's state root
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if root.startswith(str(tmp)) or str(tmp).encode() in cmdline:
            pids.append(pid)
    return pids


def _our_mounts(tmp: Path) -> list[str]:
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mountpoint = line.split()[4]
            if mountpoint.startswith(str(tmp)):
                out.append(mountpoint)
    return out


def leftovers(tmp: Path, before: dict[str, set[str]] | None = None) -> dict[str, list[str]]:
    """What containers of ours left behind; ``before`` (a snapshot taken when the
    test started) excludes what other tests running at the same time own."""
    state_dirs = [str(p) for p in (tmp / "state").iterdir()] if (tmp / "state").is_dir() else []
    state_dirs = [d for d in state_dirs if not d.endswith("/.cache")]
    found = {
        "processes": [str(p) for p in _our_processes(tmp)],
        "cgroups": [str(p) for p in _our_cgroups()],
        "mounts": _our_mounts(tmp),
        "state": state_dirs,
    }
    if before:
        found = {k: [x for x in v if x not in before.get(k, set())] for k, v in found.items()}
    return {k: v for k, v in found.items() if v}


def _clean(tmp: Path) -> None:
    for pid in _our_processes(tmp):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    for cg in sorted(_our_cgroups(), key=lambda p: len(p.parts), reverse=True):
        for sub in sorted(cg.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if sub.is_dir():
                with contextlib.suppress(OSError):
                    sub.rmdir()
        with contextlib.suppress(OSError):
            cg.rmdir()
    for m in sorted(_our_mounts(tmp), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)
    if (tmp / "state").is_dir():
        shutil.rmtree(tmp / "state", ignore_errors=True)


@pytest.fixture(autouse=True)
def leak_check(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    before = {k: set(v) for k, v in leftovers(tmp_path).items()}
    yield
    if request.node.get_closest_marker("allow_leftovers"):
        _clean(tmp_path)
        return
    deadline = time.monotonic() + 3.0
    left = leftovers(tmp_path, before)
    # A killed process takes a moment to leave its cgroup.
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = leftovers(tmp_path, before)
    if left:
        _clean(tmp_path)
        pytest.fail(f"test left things behind: {left}")


def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until predicate() is truthy; return its value or fail."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def traversable(tmp_path: Path) -> Iterator[None]:
    """Let other uids (the container's mapped root) walk down to the bundle:
    pytest makes its base directory 0700."""
    changed: list[tuple[Path, int]] = []
    for d in [tmp_path, *tmp_path.parents]:
        mode = d.stat().st_mode & 0o7777
        if mode & 0o001 == 0:
            changed.append((d, mode))
            d.chmod(mode | 0o011)
    yield
    for d, mode in changed:
        d.chmod(mode)


def give_to_mapped_root(rootfs: Path, host_id: int = 100000) -> None:
    """Make the image belong to a user namespace's root mapped to ``host_id``,
    as podman and docker --userns-remap prepare it."""
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in [*dirnames, *filenames, "."]:
            os.chown(os.path.join(dirpath, name), host_id, host_id, follow_symlinks=False)
