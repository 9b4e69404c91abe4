"""Small helpers shared by the CLI/lifecycle integration tests."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import subprocess

from tests.conftest import CGROUP_ROOT, ID_PREFIX, Bundle, Runner, wait_for

RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z$")
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")
SHARED = Path(__file__).resolve().parents[3] / "shared"
CGROUP_V2 = (CGROUP_ROOT / "cgroup.controllers").exists()


def cgroup_dir(controller: str, cid: str) -> Path:
    """The container's cgroup directory for one controller (v1) or the unified one (v2)."""
    return CGROUP_ROOT / cid if CGROUP_V2 else CGROUP_ROOT / controller / cid


def cgroup_procs(cid: str) -> set[int]:
    text = (cgroup_dir("pids", cid) / "cgroup.procs").read_text()
    return {int(x) for x in text.split()}


def in_container_cgroup(pid: int, cid: str) -> bool:
    return pid in cgroup_procs(cid)


def cgroups_named(names: set[str]) -> set[str]:
    """Cgroup directories (any hierarchy, top level) with one of these names.

    Other test sessions may run on this machine at the same time, so checks
    look only at the ids a test used, never at every pst- cgroup."""
    found: set[str] = set()
    for hierarchy in CGROUP_ROOT.iterdir():
        try:
            for entry in hierarchy.iterdir():
                if entry.name in names and entry.is_dir():
                    found.add(str(entry))
        except OSError:
            continue
    return found


def snapshot(runtime: Runner, cid: str | None = None, *others: str) -> dict[str, Any]:
    """Everything an error must not change: the state dirs, the cgroups of the
    ids involved, and the container's state."""
    root = runtime.root
    names = {n for n in (cid, *others) if n}
    snap: dict[str, Any] = {
        "dirs": sorted(p.name for p in root.iterdir()) if root.is_dir() else [],
        "cgroups": cgroups_named(names | {ID_PREFIX + "does-not-exist"}),
    }
    if cid is not None:
        res = runtime("state", cid)
        snap["state"] = res.stdout if res.returncode == 0 else None
    return snap


def fails(runtime: Runner, *args: str, msg: str, rc: int = 1, input: str | None = None) -> str:
    """Run a command that must fail with exit code rc and msg in its stderr."""
    res = runtime(*args, input=input)
    assert res.returncode == rc, (args, res.returncode, res.stdout, res.stderr)
    assert msg in res.stderr, (args, res.stderr)
    return res.stderr


def status(runtime: Runner, cid: str) -> str:
    s: str = runtime.state(cid)["status"]
    return s


def wait_status(runtime: Runner, cid: str, want: str, timeout: float = 10.0) -> None:
    wait_for(lambda: status(runtime, cid) == want, timeout)


def read_in(pid: int, path: str) -> str:
    """A file as the container process sees it (through /proc/PID/root)."""
    try:
        return Path(f"/proc/{pid}/root{path}").read_text()
    except OSError:
        return ""


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rindex(b")") + 2 :].split()[0] not in (b"Z", b"X")


def pid_ns(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/pid")


# --- C probes compared with runc ------------------------------------------------

# What the AF_UNIX probes (test_unix_bind, test_unix_connect) begin with: headers,
# T(name, expr) printing "name result errno-name", and sockaddr_un helpers.
UNIX_SOCKET_PROBE_HEAD = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static void show(const char *name, long r, int err) {
    printf("%s %ld %s\n", name, r < 0 ? -1L : r, r < 0 ? strerrorname_np(err) : "-");
}

#define T(name, expr)           \
    do {                        \
        errno = 0;              \
        long r_ = (long)(expr); \
        show(name, r_, errno);  \
    } while (0)

static struct sockaddr_un sun_of(const char *path) {
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path, sizeof a.sun_path);
    return a;
}

static int bind_path(int s, const char *path) {
    struct sockaddr_un a = sun_of(path);
    return bind(s, (struct sockaddr *)&a, sizeof a);
}

static int connect_path(int c, const char *path) {
    struct sockaddr_un a = sun_of(path);
    return connect(c, (struct sockaddr *)&a, sizeof a);
}

"""


def compile_probe(directory: Path, source: str, name: str) -> Path:
    """A static C probe (the busybox rootfs has no libc) built from ``source``."""
    import subprocess

    src = directory / f"{name}.c"
    src.write_text(source)
    exe = directory / name
    res = subprocess.run(
        ["gcc", "-static", "-O1", "-Wall", "-pthread", "-o", str(exe), str(src)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    return exe


def probe_bundle(
    tmp: Path, rootfs: Path, name: str, probe: Path, *argv: str, free: tuple[str, ...] = ()
) -> Bundle:
    """A writable copy of ``rootfs`` running ``probe`` (as /<its name>) with ``argv``;
    ``free``: directories the probe works in, which must be the root's (no mount)."""
    import shutil

    from pysandbox.oci.specgen import default_spec

    path = tmp / name
    path.mkdir()
    shutil.copytree(rootfs, path / "rootfs", symlinks=True)
    shutil.copy(probe, path / "rootfs" / probe.name)
    config = default_spec([f"/{probe.name}", *argv], terminal=False)
    config["root"]["readonly"] = False
    assert not [m for m in config["mounts"] if m["destination"] in free]
    return Bundle(path, config).write()


def run_runc(tmp: Path, bundle: Bundle, cid: str) -> subprocess.CompletedProcess[str]:
    """``runc run`` of ``bundle``, for the reference answers."""
    import subprocess

    return subprocess.run(
        ["runc", "--root", str(tmp / "runc-state"), "run", "--bundle", str(bundle.path), cid],
        capture_output=True,
        text=True,
        timeout=60,
    )


def split_named(out: str) -> tuple[list[str], list[str]]:
    """(the lines compared with runc, the ``name ...`` lines that differ by design)."""
    lines = out.splitlines()
    return [x for x in lines if not x.startswith("name ")], [
        x for x in lines if x.startswith("name ")
    ]


class ProbeRun:
    """A probe run under pysandbox (with --strace) and under runc."""

    def __init__(
        self,
        ours: Bundle,
        theirs: Bundle,
        lines: list[str],
        names: list[str],
        ref_names: list[str],
        log: str,
    ) -> None:
        self.ours = ours  # the bundles, to look at what each wrote
        self.theirs = theirs
        self.lines = lines  # the lines both printed alike (checked)
        self.names = names  # the "name ..." lines, which differ by design
        self.ref_names = ref_names
        self.log = log  # the sentry's log


def probe_against_runc(
    runtime: Runner, tmp: Path, rootfs: Path, probe: Path, cid: str, free: tuple[str, ...]
) -> ProbeRun:
    """Run ``probe`` under both runtimes; its lines but the ``name ...`` ones
    must be runc's, line by line."""
    ours = probe_bundle(tmp, rootfs, "ours", probe, free=free)
    logs = tmp / "logs"
    logs.mkdir()
    res = runtime("--debug-log", f"{logs}/", "--strace", "run", "--bundle", str(ours.path), cid)
    assert res.returncode == 0, res.stdout + res.stderr
    theirs = probe_bundle(tmp, rootfs, "theirs", probe, free=free)
    ref = run_runc(tmp, theirs, cid + "-runc")
    assert ref.returncode == 0, ref.stderr
    lines, names = split_named(res.stdout)
    ref_lines, ref_names = split_named(ref.stdout)
    mismatches = [(a, b) for a, b in zip(lines, ref_lines, strict=False) if a != b]
    assert not mismatches and lines == ref_lines, mismatches
    log = (logs / f"{cid}.sentry.log").read_text()
    return ProbeRun(ours, theirs, lines, names, ref_names, log)
