"""/proc/meminfo, cpuinfo, stat and uptime inside real sandboxed containers
reflect the container's cgroup limits (syscalls/procfs.py); without the
sentry (as under runc) the same commands show the host's figures."""

from __future__ import annotations

import os
from typing import Any

from tests.conftest import Bundle, Runner

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
