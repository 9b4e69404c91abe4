"""``update`` and ``events`` on real containers: every way callers pass new
limits (docker's stdin JSON with zeros for "unchanged", podman's file, the
single-value flags), checked in the cgroup files and from inside; stats and
OOM events as the stream callers read."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Bundle, Runner, wait_for
from tests.integration.helpers import CGROUP_V2, cgroup_dir, fails, snapshot

# Verbatim from docker-invocations.log ("update stdin:" lines).
DOCKER_UPDATE_MEMORY = (
    '{"memory":{"limit":67108864,"reservation":0,"swap":134217728,"kernel":0},'
    '"cpu":{"shares":0,"quota":0,"period":0},"blockIO":{"weight":0}}'
)
DOCKER_UPDATE_CPU_PIDS = (
    '{"memory":{"limit":0,"reservation":0,"kernel":0},'
    '"cpu":{"shares":0,"quota":50000,"period":100000},"pids":{"limit":100},'
    '"blockIO":{"weight":0}}'
)

pytestmark = pytest.mark.skipif(CGROUP_V2, reason="the file checks below are cgroup v1's")


def _read(controller: str, cid: str, name: str) -> str:
    return (cgroup_dir(controller, cid) / name).read_text().strip()


def _limits(cid: str) -> dict[str, str]:
    return {
        "memory": _read("memory", cid, "memory.limit_in_bytes"),
        "memsw": _read("memory", cid, "memory.memsw.limit_in_bytes"),
        "shares": _read("cpu", cid, "cpu.shares"),
        "quota": _read("cpu", cid, "cpu.cfs_quota_us"),
        "period": _read("cpu", cid, "cpu.cfs_period_us"),
        "pids": _read("pids", cid, "pids.max"),
    }


@pytest.fixture
def running(runtime: Runner, bundle: Bundle, cid: str) -> Iterator[int]:
    bundle.args("sleep", "100")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    try:
        yield int(runtime.state(cid)["pid"])
    finally:
        runtime("delete", "--force", cid, check=True)


def test_update_docker_stdin(runtime: Runner, running: int, cid: str) -> None:
    start = _limits(cid)
    runtime("update", "--resources", "-", cid, input=DOCKER_UPDATE_MEMORY, check=True)
    after = _limits(cid)
    assert after["memory"] == str(64 << 20) and after["memsw"] == str(128 << 20)
    # the zeros mean "leave as is"
    assert {k: after[k] for k in ("shares", "quota", "period", "pids")} == {
        k: start[k] for k in ("shares", "quota", "period", "pids")
    }
    runtime("update", "--resources", "-", cid, input=DOCKER_UPDATE_CPU_PIDS, check=True)
    after = _limits(cid)
    assert (after["quota"], after["period"], after["pids"]) == ("50000", "100000", "100")
    assert after["memory"] == str(64 << 20) and after["shares"] == start["shares"]
    inside = runtime(
        "exec",
        cid,
        "cat",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/pids/pids.max",
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
        check=True,
    ).stdout.split()
    assert inside == [str(64 << 20), "100", "50000"]


def test_update_podman_file_and_flags(
    runtime: Runner, running: int, cid: str, tmp_path: Path
) -> None:
    res_file = tmp_path / "podman-resources"
    res_file.write_text(json.dumps({"memory": {"limit": 48 << 20}, "pids": {"limit": 77}}))
    runtime("update", f"--resources={res_file}", cid, check=True)
    assert _limits(cid)["memory"] == str(48 << 20) and _limits(cid)["pids"] == "77"
    runtime(
        "update",
        "--memory",
        "64m",
        "--cpu-quota",
        "30000",
        "--cpu-period",
        "60000",
        "--pids-limit",
        "42",
        cid,
        check=True,
    )
    after = _limits(cid)
    assert (after["memory"], after["quota"], after["period"], after["pids"]) == (
        str(64 << 20),
        "30000",
        "60000",
        "42",
    )
    inside = runtime("exec", cid, "cat", "/sys/fs/cgroup/pids/pids.max", check=True).stdout
    assert inside.strip() == "42"


def test_update_errors_change_nothing(
    runtime: Runner, running: int, cid: str, tmp_path: Path
) -> None:
    before = _limits(cid), snapshot(runtime, cid)
    fails(runtime, "update", "--resources", "-", cid, input="{nope", msg="invalid resources JSON")
    fails(runtime, "update", f"--resources={tmp_path / 'missing'}", cid, msg="missing")
    fails(runtime, "update", "--memory", "lots", cid, msg="invalid size")
    fails(runtime, "update", "--pids-limit", "x", cid, msg="--pids-limit")
    assert (_limits(cid), snapshot(runtime, cid)) == before


def test_events_stats_once(runtime: Runner, running: int, cid: str) -> None:
    res = runtime("events", "--stats", cid, check=True)
    lines = res.stdout.splitlines()
    assert len(lines) == 1
    ev = json.loads(lines[0])
    assert ev["type"] == "stats" and ev["id"] == cid
    assert {"cpu", "memory", "pids", "blkio"} <= set(ev["data"])
    assert ev["data"]["pids"]["current"] == 1
    assert ev["data"]["memory"]["usage"]["usage"] > 0


class Lines:
    """Lines of a child's stdout, read with a timeout."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc, self.fd, self.buf = proc, proc.stdout.fileno(), b""

    def next(self, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no event within {timeout}s")
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise AssertionError(f"events exited: {self.proc.wait()}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        doc: dict[str, Any] = json.loads(line)
        return doc


def test_events_stream_and_oom(runtime: Runner, bundle: Bundle, cid: str) -> None:
    limit = 32 << 20
    bundle.config["linux"]["resources"] = {"memory": {"limit": limit, "swap": limit}}
    bundle.args("sleep", "100")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    proc = subprocess.Popen(
        runtime.cmd("events", "--interval", "100ms", cid),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        lines = Lines(proc)
        t0 = time.monotonic()
        first, second = lines.next(), lines.next()
        assert time.monotonic() - t0 < 3
        assert first["type"] == second["type"] == "stats" and second["id"] == cid
        assert second["data"]["memory"]["usage"]["limit"] == limit
        res = runtime("exec", cid, "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1")
        assert res.returncode == 128 + 9, res.stderr
        ev = lines.next()
        while ev["type"] == "stats":
            ev = lines.next()
        assert ev == {"type": "oom", "id": cid}
        runtime("delete", "--force", cid, check=True)
        # the stream ends when the container is gone
        wait_for(lambda: proc.poll() is not None)
    finally:
        proc.kill()
        proc.wait()
        runtime("delete", "--force", cid)
