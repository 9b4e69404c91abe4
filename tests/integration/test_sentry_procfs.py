"""/proc/meminfo, cpuinfo, stat, uptime and loadavg inside real sandboxed containers
reflect the container's cgroup limits (syscalls/procfs.py); without the
sentry (as under runc) the same commands show the host's figures."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci import kernel
from tests.conftest import Bundle, Runner
from tests.integration.helpers import compile_probe

LIMITS = {"memory": {"limit": 64 << 20}, "cpu": {"quota": 50000, "period": 100000}}
SCRIPT = (
    "grep ^MemTotal: /proc/meminfo; grep ^MemFree: /proc/meminfo;"
    " echo cpus $(grep -c ^processor /proc/cpuinfo);"
    " echo statcpus $(grep -c '^cpu[0-9]' /proc/stat);"
    " echo uptime $(cut -d' ' -f1 /proc/uptime);"
    " free -k | grep ^Mem:"
)


def _host_kb(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError(key)


def _run(
    runtime: Runner,
    bundle: Bundle,
    cid: str,
    resources: dict[str, Any],
    *flags: str,
    env: dict[str, str] | None = None,
) -> dict[str, list[str]]:
    bundle.config["linux"]["resources"] = resources
    bundle.args("sh", "-c", SCRIPT)
    res = runtime(*flags, "run", "--bundle", str(bundle.path), cid, env=env)
    assert res.returncode == 0, res.stderr
    out: dict[str, list[str]] = {}
    for line in res.stdout.splitlines():
        key, *rest = line.split()
        out[key.rstrip(":")] = rest
    return out


def test_limits_show_in_proc_under_the_sentry(runtime: Runner, bundle: Bundle) -> None:
    out = _run(runtime, bundle, "procfs-limits", LIMITS)
    assert out["MemTotal"] == ["65536", "kB"]
    free_kb = int(out["MemFree"][0])
    assert 0 < free_kb < 65536  # the shell and grep use some of it
    assert out["cpus"] == ["1"]  # quota 0.5 CPU rounds up to one
    assert out["statcpus"] == ["1"]
    assert float(out["uptime"][0]) < 60.0  # since the container started
    total, used, free = (int(x) for x in out["Mem"][:3])
    assert total == 65536
    assert 0 < used < total and free == total - used  # busybox free: sysinfo agrees


def test_unlimited_container_sees_the_host(runtime: Runner, bundle: Bundle) -> None:
    out = _run(runtime, bundle, "procfs-host", {})
    host_total = _host_kb("MemTotal")
    assert out["MemTotal"] == [str(host_total), "kB"]
    assert out["cpus"] == [str(os.cpu_count())]
    assert out["statcpus"] == [str(os.cpu_count())]


def test_without_the_sentry_proc_is_the_hosts(runtime: Runner, bundle: Bundle) -> None:
    # What runc shows: the limit is enforced but /proc does not say so.
    out = _run(runtime, bundle, "procfs-none", LIMITS, "--sandbox", "none")
    assert out["MemTotal"] == [str(_host_kb("MemTotal")), "kB"]
    assert out["cpus"] == [str(os.cpu_count())]


def test_cgroup_v2_container_without_controllers(runtime: Runner, bundle: Bundle) -> None:
    # The hybrid host's unified hierarchy has no memory or cpu controller: no
    # limit is readable, so the host's figures are the honest answer.
    out = _run(runtime, bundle, "procfs-v2", {}, env={"PYSANDBOX_CGROUP_MODE": "v2"})
    assert out["MemTotal"] == [str(_host_kb("MemTotal")), "kB"]
    assert out["cpus"] == [str(os.cpu_count())]


AFFINITY_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static void probe(const char *name, long pid, long len) {
    unsigned char mask[128];
    memset(mask, 0xff, sizeof mask);
    errno = 0;
    long r = syscall(SYS_sched_getaffinity, pid, len, mask);
    printf("%s %ld %s %02x\n", name, r, r < 0 ? strerrorname_np(errno) : "-", mask[0]);
}

int main(void) {
    probe("self", 0, 128);
    probe("pid1", 1, 128);
    probe("exact", 0, 8);
    probe("short", 0, 4);
    probe("unaligned", 0, 12);
    probe("nosuch", 99999, 128);
    probe("negative", -5, 128);
    return 0;
}
"""


def _affinity_probe(bundle: Bundle, tmp_path: Path, name: str = "affinity") -> None:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the static probe")
    src = tmp_path / f"{name}.c"
    src.write_text({"affinity": AFFINITY_C, "largefile": LARGEFILE_C}[name])
    out = bundle.rootfs / name
    subprocess.run(["gcc", "-static", "-O1", "-w", "-o", str(out), str(src)], check=True)


# openat with the kernel's O_LARGEFILE, as 32-bit-minded code passes it raw.
LARGEFILE_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    char buf[64] = {0};
    int fd = syscall(SYS_openat, AT_FDCWD, "/proc/meminfo", O_RDONLY | 0100000);
    if (fd < 0 || read(fd, buf, 30) < 0) return 1;
    printf("%s\n", buf);
    return 0;
}
"""


def test_open_with_o_largefile_is_served(runtime: Runner, bundle: Bundle, tmp_path: Path) -> None:
    _affinity_probe(bundle, tmp_path, "largefile")
    bundle.config["linux"]["resources"] = LIMITS
    bundle.args("/largefile")
    assert _lines(runtime("run", "--bundle", str(bundle.path), "procfs-largefile"))[0].split()[
        :2
    ] == ["MemTotal:", "65536"]


def _lines(res: subprocess.CompletedProcess[str]) -> list[str]:
    assert res.returncode == 0, res.stderr
    return res.stdout.splitlines()


def test_sched_getaffinity_answers_as_linux_does(
    runtime: Runner, bundle: Bundle, tmp_path: Path
) -> None:
    # Without a CPU limit the sentry's answer is the kernel's, byte for byte.
    _affinity_probe(bundle, tmp_path)
    bundle.args("/affinity")
    ours = _lines(runtime("run", "--bundle", str(bundle.path), "aff-ours"))
    theirs = _lines(runtime("--sandbox", "none", "run", "--bundle", str(bundle.path), "aff-none"))
    assert ours == theirs
    full = f"{(1 << (os.cpu_count() or 1)) - 1:02x}"
    size = kernel.cpumask_size()  # what the raw call returns: the kernel's mask size
    assert ours == [
        f"self {min(128, size)} - {full}",
        f"pid1 {min(128, size)} - {full}",
        f"exact 8 - {full}",
        "short -1 EINVAL ff",
        "unaligned -1 EINVAL ff",
        "nosuch -1 ESRCH ff",
        "negative -1 ESRCH ff",
    ]


def test_a_cpu_quota_narrows_the_affinity(runtime: Runner, bundle: Bundle, tmp_path: Path) -> None:
    _affinity_probe(bundle, tmp_path)
    bundle.config["linux"]["resources"] = LIMITS
    bundle.args("sh", "-c", "/affinity | head -1; nproc; cat /sys/devices/system/cpu/online")
    assert _lines(runtime("run", "--bundle", str(bundle.path), "aff-quota")) == [
        f"self {min(128, kernel.cpumask_size())} - 01",
        "1",
        "0",
    ]
    # runc's view: every host CPU, whatever the quota
    res = runtime("--sandbox", "none", "run", "--bundle", str(bundle.path), "aff-quota-none")
    assert _lines(res)[1] == str(os.cpu_count())


def test_masked_paths_stay_masked(runtime: Runner, bundle: Bundle) -> None:
    # A masked /proc file is the mask's (empty), not the sentry's rendering.
    bundle.config["linux"]["maskedPaths"] = [
        *bundle.config["linux"].get("maskedPaths", []),
        "/proc/meminfo",
        "/sys/devices/system/cpu",
    ]
    bundle.args("sh", "-c", "wc -c < /proc/meminfo; cat /sys/devices/system/cpu/online; echo end")
    res = runtime("run", "--bundle", str(bundle.path), "procfs-masked")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.split()
    assert lines[0] == "0"
    assert lines[-1] == "end" and len(lines) == 2, res.stdout  # the directory is masked: no file


LOADAVG = re.compile(r"^(\d+\.\d\d) (\d+\.\d\d) (\d+\.\d\d) (\d+)/(\d+) (\d+)$")


SYSINFO_PROCS = r"""
#include <stdio.h>
#include <sys/sysinfo.h>
int main(void) { struct sysinfo si; sysinfo(&si); printf("%u\n", si.procs); return 0; }
"""


def test_loadavg_is_the_containers(runtime: Runner, bundle: Bundle, tmp_path: Path) -> None:
    """/proc/loadavg (and sysinfo's loads, which busybox's uptime prints) count
    the container's tasks, not the host's: an idle container starts at 0.00
    with its own few tasks and pids; two busy loops raise it within one 5 s
    sample (syscalls/loadavg.py). sysinfo's procs counts the container's
    threads: sh, the two loops and the probe."""
    shutil.copy2(compile_probe(tmp_path, SYSINFO_PROCS, "procs"), bundle.rootfs / "procs")
    bundle.args(
        "sh",
        "-c",
        "cat /proc/loadavg; (while :; do :; done) & (while :; do :; done) &"
        " sleep 6; cat /proc/loadavg; uptime; grep ^procs_ /proc/stat; /procs;"
        # The first loop's SIGCHLD may interrupt the second kill before the sentry
        # has received it (EINTR: the window ARCHITECTURE.md documents, 1 run in
        # ~10 here); the container's end kills the loops anyway.
        " kill %1 %2 || true",
    )
    res = runtime("run", "--bundle", str(bundle.path), "procfs-loadavg")
    assert res.returncode == 0, res.stderr
    first, second, uptime, procs_running, procs_blocked, procs = res.stdout.splitlines()
    assert procs == "4", procs
    m = LOADAVG.match(first)
    assert m, first
    assert m.groups()[:3] == ("0.00", "0.00", "0.00")  # no sample yet
    running, total, last = (int(x) for x in m.groups()[3:])
    assert running == 1  # the reader itself
    assert 1 <= total <= 3 and 1 <= last <= 3  # sh and cat: not the host's hundreds
    m = LOADAVG.match(second)
    assert m, second
    one = float(m.group(1))
    assert one > 0.05, second  # 2 busy tasks for >= 1 sample: 2 * (1 - e^(-5/60)) = 0.16
    assert int(m.group(4)) >= 3  # the two loops and the reader
    assert f"load average: {one:.2f}" in uptime or "load average: 0." in uptime, uptime
    assert not uptime.endswith("0.00, 0.00, 0.00"), uptime
    # /proc/stat's counts are the container's too: the two loops and grep
    assert (procs_running, procs_blocked) == ("procs_running 3", "procs_blocked 0")


def test_loadavg_without_the_sentry_is_the_hosts(runtime: Runner, bundle: Bundle) -> None:
    bundle.args("cat", "/proc/loadavg")
    res = runtime("--sandbox", "none", "run", "--bundle", str(bundle.path), "procfs-hostload")
    assert res.returncode == 0, res.stderr
    m = LOADAVG.match(res.stdout.strip())
    assert m, res.stdout
    with open("/proc/loadavg") as f:
        host_total = int(f.read().split()[3].split("/")[1])
    assert int(m.group(5)) > 10 and abs(int(m.group(5)) - host_total) < host_total  # the host's
