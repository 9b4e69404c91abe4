"""Helpers for tests that check a config field from inside a real container:
run a shell script in the busybox rootfs and parse what it prints."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import Bundle, Runner, leftovers

SHARED = Path(__file__).resolve().parents[3] / "shared"
SPECS = SHARED / "reference" / "specs"


def run_sh(runtime: Runner, bundle: Bundle, cid: str, script: str, *, rc: int = 0) -> str:
    """Run ``sh -c script`` in a container; return its stdout, checking the exit code."""
    bundle.args("sh", "-c", script)
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode == rc, (
        f"exit {res.returncode} (wanted {rc})\nstdout: {res.stdout}\nstderr: {res.stderr}"
    )
    return res.stdout


def mine_left(tmp: Path, cid: str) -> dict[str, list[str]]:
    """What this test's container left behind. (conftest's ``leftovers`` also
    sees other tests' containers when several test runs share the machine.)"""
    found = leftovers(tmp)
    procs = []
    for pid in found.get("processes", []):
        try:
            cg = Path(f"/proc/{pid}/cgroup").read_text()
            root = os.readlink(f"/proc/{pid}/root")
        except OSError:
            continue
        if cid in cg or root.startswith(str(tmp)):
            procs.append(pid)
    found["processes"] = procs
    found["cgroups"] = [c for c in found.get("cgroups", []) if cid in c]
    return {k: v for k, v in found.items() if v}


def fields(text: str) -> dict[str, str]:
    """``key: value`` / ``key=value`` lines (as /proc/self/status prints them) -> dict."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        for sep in (":", "="):
            key, found, value = line.partition(sep)
            if found:
                out[key.strip()] = value.strip()
                break
    return out


def mountinfo(text: str) -> dict[str, tuple[set[str], str, set[str], set[str]]]:
    """/proc/self/mountinfo -> {mountpoint: (mount options, fstype, super options,
    optional fields)}; the last entry for a mount point wins (it is the visible one)."""
    out: dict[str, tuple[set[str], str, set[str], set[str]]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 7 or "-" not in parts:
            continue
        sep = parts.index("-")
        point = parts[4]
        out[point] = (
            set(parts[5].split(",")),
            parts[sep + 1],
            set(parts[sep + 3].split(",")) if len(parts) > sep + 3 else set(),
            set(parts[6:sep]),
        )
    return out


def ns_inode(link: str) -> int:
    """``net:[4026531840]`` -> 4026531840."""
    return int(link.strip().rsplit("[", 1)[1].rstrip("]"))


def host_ns(name: str) -> int:
    return os.stat(f"/proc/self/ns/{name}").st_ino


_PROBE_C = r"""
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/syscall.h>
/* probe NR [ARG...]: make one raw syscall, print "ret errno". */
int main(int argc, char **argv) {
    long a[6] = {0, 0, 0, 0, 0, 0};
    if (argc < 2) return 2;
    for (int i = 2; i < argc && i < 8; i++) a[i - 2] = strtol(argv[i], 0, 0);
    errno = 0;
    long r = syscall(strtol(argv[1], 0, 0), a[0], a[1], a[2], a[3], a[4], a[5]);
    printf("%ld %d\n", r, r < 0 ? errno : 0);
    return 0;
}
"""


def build_probe(dest: Path) -> Path:
    """Compile the static syscall probe into ``dest`` (a file in a rootfs)."""
    gcc = shutil.which("gcc")
    if gcc is None:  # make setup installs it: its absence is a broken set-up, not a skip
        import pytest

        pytest.fail("gcc is not installed (make setup installs it)")
    src = dest.with_suffix(".c")
    src.write_text(_PROBE_C)
    subprocess.run([gcc, "-static", "-O1", "-o", str(dest), str(src)], check=True)
    src.unlink()
    return dest
