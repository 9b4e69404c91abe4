"""Real-cgroup tests for pysandbox.oci.cgroups (root only; no mocks).

Every cgroup is named /pysandbox-test-<random> and removed afterwards; every
child process is killed and reaped.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci.cgroups import (
    CgroupError,
    CgroupManager,
    detect_mode,
    manager_from_dict,
    mkdir_p,
    new_manager,
    resolve_path,
    v1_mounts,
)
from pysandbox.oci.cgroups.v1 import V1Manager, device_rule_line
from pysandbox.oci.cgroups.v2 import (
    V2Manager,
    blkio_weight_to_io_weight,
    shares_to_weight,
    swap_to_v2,
)

SPECS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "specs"
UNIFIED = "/sys/fs/cgroup/unified"

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for real cgroups")
needs_v1 = pytest.mark.skipif(
    not os.path.isdir("/sys/fs/cgroup") or detect_mode() != "v1", reason="host is not cgroup v1"
)
needs_unified = pytest.mark.skipif(
    not os.path.exists(os.path.join(UNIFIED, "cgroup.procs")),
    reason="no cgroup2 mount at /sys/fs/cgroup/unified",
)


# --- helpers -------------------------------------------------------------------------


def _all_cgroup_roots() -> list[str]:
    roots = list(dict.fromkeys(v1_mounts().values()))
    if os.path.isdir(UNIFIED):
        roots.append(UNIFIED)
    if detect_mode() == "v2":
        roots.append("/sys/fs/cgroup")
    return roots


@pytest.fixture
def cg_name() -> Iterator[str]:
    """A unique cgroup path; after the test nothing with that name may remain."""
    name = f"/pysandbox-test-{secrets.token_hex(4)}"
    yield name
    leftovers = [
        os.path.join(r, name.lstrip("/"))
        for r in _all_cgroup_roots()
        if os.path.exists(os.path.join(r, name.lstrip("/")))
    ]
    for d in leftovers:  # clean up anyway, then fail
        for sub, _dn, _fn in os.walk(d, topdown=False):
            try:
                os.rmdir(sub)
            except OSError:
                pass
    assert not leftovers, f"cgroups left behind: {leftovers}"


class Children:
    """Child processes started paused (blocked on stdin) so they can be moved first."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []

    def python(self, code: str) -> subprocess.Popen[str]:
        """A python child that waits for one line on stdin, then runs code."""
        prog = "import sys\nsys.stdin.readline()\n" + code
        p = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", prog],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.procs.append(p)
        return p

    def sleep(self, seconds: int = 30) -> subprocess.Popen[str]:
        p = subprocess.Popen(["sleep", str(seconds)], text=True)
        self.procs.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
            for f in (p.stdin, p.stdout, p.stderr):
                if f is not None:
                    f.close()


@pytest.fixture
def children() -> Iterator[Children]:
    c = Children()
    yield c
    c.cleanup()


def go(p: subprocess.Popen[str], timeout: float = 30) -> tuple[str, str]:
    """Release a paused python child and collect its output."""
    out, err = p.communicate("go\n", timeout=timeout)
    return out, err


@pytest.fixture
def v1(cg_name: str) -> Iterator[V1Manager]:
    if os.geteuid() != 0 or detect_mode() != "v1":
        pytest.skip("needs root on a cgroup v1 host")
    m = new_manager(cg_name, "unused")
    assert isinstance(m, V1Manager)
    m.create()
    yield m
    m.destroy()
    assert not any(os.path.exists(d) for d in m.dirs())


@pytest.fixture
def v2u(cg_name: str) -> Iterator[V2Manager]:
    """A v2 manager in /sys/fs/cgroup/unified (controller-less on a hybrid host)."""
    if os.geteuid() != 0 or not os.path.exists(os.path.join(UNIFIED, "cgroup.procs")):
        pytest.skip("needs root and a cgroup2 mount at /sys/fs/cgroup/unified")
    root_ctl = (Path(UNIFIED) / "cgroup.subtree_control").read_text().split()
    m = new_manager(cg_name, "unused", mode="v2", v2_mountpoint=UNIFIED)
    assert isinstance(m, V2Manager)
    m.create()
    yield m
    m.destroy()
    assert not os.path.exists(m.dir)
    # create() enables what it can in the parents, like runc; undo that on the host root.
    for ctrl in set((Path(UNIFIED) / "cgroup.subtree_control").read_text().split()) - set(root_ctl):
        try:
            (Path(UNIFIED) / "cgroup.subtree_control").write_text(f"-{ctrl}")
        except OSError:
            pass


def proc_cgroup(pid: int) -> dict[str, str]:
    """hierarchy controllers (or '' for v2) -> path from /proc/PID/cgroup."""
    result: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _hid, ctrls, path = line.split(":", 2)
        result[ctrls] = path
    return result


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


# --- resolve_path / detection / conversions (no cgroups touched) ------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "/ctr1"),
        ("", "/ctr1"),
        ("/docker/abc", "/docker/abc"),
        ("/k8s.io/abc/", "/k8s.io/abc"),
        ("a/b", "/a/b"),
        ("a//b/./c", "/a/b/c"),
        ("/with:colons:inside", "/with:colons:inside"),
    ],
)
def test_resolve_path(given: str | None, expected: str) -> None:
    assert resolve_path(given, "ctr1") == expected


@pytest.mark.parametrize("bad", ["/a/../b", "../x", "a/.."])
def test_resolve_path_rejects_dotdot(bad: str) -> None:
    with pytest.raises(CgroupError, match=r"\.\."):
        resolve_path(bad, "ctr1")


def test_resolve_path_rejects_systemd_form() -> None:
    with pytest.raises(CgroupError, match="systemd cgroup driver not supported"):
        resolve_path("system.slice:docker:abc", "abc")


def test_resolve_path_rejects_bad_id_without_path() -> None:
    with pytest.raises(CgroupError):
        resolve_path(None, "a/b")


def test_detect_mode_matches_mount_table() -> None:
    mode = detect_mode()
    is_v2 = False
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/sys/fs/cgroup":
            is_v2 = fields[fields.index("-") + 1] == "cgroup2"
    assert mode == ("v2" if is_v2 else "v1")


def test_detect_mode_from_a_pure_v2_table(tmp_path: Path) -> None:
    mi = tmp_path / "mountinfo"
    mi.write_text(
        "22 1 0:21 / /sys rw - sysfs sysfs rw\n"
        "30 22 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    )
    assert detect_mode(str(mi)) == "v2"
    mi.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu\\040x rw - cgroup cgroup rw,cpu,cpuacct\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
    )
    assert detect_mode(str(mi)) == "v1"
    assert v1_mounts(str(mi)) == {"cpu": "/sys/fs/cgroup/cpu x", "cpuacct": "/sys/fs/cgroup/cpu x"}


def test_conversions() -> None:
    assert shares_to_weight(2) == 1
    assert shares_to_weight(262144) == 10000
    assert shares_to_weight(1024) == 39
    assert blkio_weight_to_io_weight(10) == 1
    assert blkio_weight_to_io_weight(1000) == 10000
    assert swap_to_v2(None, 100) is None
    assert swap_to_v2(-1, 100) == -1
    assert swap_to_v2(300, 100) == 200
    assert swap_to_v2(0, -1) == -1
    with pytest.raises(CgroupError):
        swap_to_v2(50, 100)
    with pytest.raises(CgroupError):
        swap_to_v2(50, None)


def test_device_rule_lines() -> None:
    assert device_rule_line({"allow": False, "access": "rwm"}) == "a"
    assert device_rule_line({"allow": True, "type": "c", "major": 1, "minor": 3}) == "c 1:3 rwm"
    assert device_rule_line({"type": "c", "major": 136, "access": "rw"}) == "c 136:* rw"
    with pytest.raises(CgroupError):
        device_rule_line({"type": "x"})


def test_new_manager_propagates_systemd_error() -> None:
    with pytest.raises(CgroupError, match="systemd"):
        new_manager("user.slice:pysandbox:x", "x")


# --- v1 ---------------------------------------------------------------------------------


@root_only
@needs_v1
def test_v1_create_and_add_process(v1: V1Manager, children: Children) -> None:
    for d in v1.dirs():
        assert os.path.isdir(d)
    p = children.sleep()
    v1.add_process(p.pid)
    cg = proc_cgroup(p.pid)
    for ctrls, path in cg.items():
        if ctrls:  # every v1 hierarchy, name=systemd included
            assert path == v1.path, (ctrls, path)
    assert "name=systemd" in cg
    assert v1.pids() == [p.pid]
    assert v1.exists()


@root_only
@needs_v1
def test_v1_memory_limits_both_orders(v1: V1Manager) -> None:
    d = v1.dir("memory")
    has_memsw = os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes"))

    def read(name: str) -> int:
        return int(Path(d, name).read_text())

    v1.apply(
        {
            "memory": {
                "limit": 64 << 20,
                "reservation": 32 << 20,
                "swap": 128 << 20,
                "swappiness": 10,
            }
        }
    )
    assert read("memory.limit_in_bytes") == 64 << 20
    assert read("memory.soft_limit_in_bytes") == 32 << 20
    assert read("memory.swappiness") == 10
    if has_memsw:
        assert read("memory.memsw.limit_in_bytes") == 128 << 20
        # growing beyond the current memsw limit: memsw must be written first
        v1.apply({"memory": {"limit": 256 << 20, "swap": 512 << 20}})
        assert (read("memory.limit_in_bytes"), read("memory.memsw.limit_in_bytes")) == (
            256 << 20,
            512 << 20,
        )
        # shrinking below the current memory limit: memory must be written first
        v1.apply({"memory": {"limit": 16 << 20, "swap": 24 << 20}})
        assert (read("memory.limit_in_bytes"), read("memory.memsw.limit_in_bytes")) == (
            16 << 20,
            24 << 20,
        )
    v1.apply({"memory": {"limit": -1, "swap": -1}})
    assert read("memory.limit_in_bytes") > 1 << 60


@root_only
@needs_v1
def test_v1_write_error_names_file(v1: V1Manager) -> None:
    with pytest.raises(CgroupError, match=r"cgroup memory\.swappiness: invalid"):
        v1.apply({"memory": {"swappiness": 1000}})
    with pytest.raises(CgroupError, match=r"cgroup cpu\.cfs_quota_us: write 5: Invalid argument"):
        v1.apply({"cpu": {"quota": 5}})


@root_only
@needs_v1
def test_v1_cpu_quota_and_shares(v1: V1Manager) -> None:
    v1.apply({"cpu": {"shares": 512, "quota": 50000, "period": 200000}})
    d = v1.dir("cpu")
    assert Path(d, "cpu.shares").read_text().strip() == "512"
    assert Path(d, "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert Path(d, "cpu.cfs_period_us").read_text().strip() == "200000"
    v1.apply({"cpu": {"quota": -1}})
    assert Path(d, "cpu.cfs_quota_us").read_text().strip() == "-1"


@root_only
@needs_v1
def test_v1_cpuset_inherits_then_applies(v1: V1Manager, children: Children) -> None:
    d = v1.dir("cpuset")
    parent = os.path.dirname(d)
    assert Path(d, "cpuset.cpus").read_text() == Path(parent, "cpuset.cpus").read_text()
    assert Path(d, "cpuset.mems").read_text().strip() != ""
    v1.apply({"cpu": {"cpus": "0", "mems": "0"}})
    assert Path(d, "cpuset.cpus").read_text().strip() == "0"
    p = children.sleep()
    v1.add_process(p.pid)
    allowed = [
        line
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines()
        if line.startswith("Cpus_allowed_list:")
    ]
    assert allowed == ["Cpus_allowed_list:\t0"]


@root_only
@needs_v1
def test_v1_cpuset_nested_new_parent(cg_name: str, children: Children) -> None:
    m = new_manager(cg_name + "/inner/leaf", "x")
    try:
        m.create()
        p = children.sleep()
        m.add_process(p.pid)  # fails with ENOSPC if any new cpuset level lacks cpus/mems
        assert m.pids() == [p.pid]
    finally:
        m.destroy()


@root_only
@needs_v1
def test_v1_pids_limit_stops_fork_bomb(v1: V1Manager, children: Children) -> None:
    v1.apply({"pids": {"limit": 5}})
    assert Path(v1.dir("pids"), "pids.max").read_text().strip() == "5"
    p = children.python(
        "import os, time\n"
        "ok = 0\n"
        "for _ in range(20):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except BlockingIOError:\n"
        "        print('EAGAIN', ok, flush=True); break\n"
        "    if pid == 0:\n"
        "        time.sleep(30); os._exit(0)\n"
        "    ok += 1\n"
        "print('done', flush=True)\n"
        # stay: the test counts this process among the cgroup's five
        "time.sleep(30)\n"
    )
    v1.add_process(p.pid)
    p.stdin.write("go\n")  # type: ignore[union-attr]
    p.stdin.flush()  # type: ignore[union-attr]
    line = p.stdout.readline().split()  # type: ignore[union-attr]
    assert line[0] == "EAGAIN" and int(line[1]) == 4, line
    assert len(v1.pids()) == 5
    assert v1.stats()["pids"] == {"current": 5, "limit": 5}
    v1.apply({"pids": {"limit": 0}})
    assert Path(v1.dir("pids"), "pids.max").read_text().strip() == "max"
    v1.kill_all(signal.SIGKILL)
    assert wait_until(lambda: v1.pids() == [])


@root_only
@needs_v1
def test_v1_freeze_and_thaw(v1: V1Manager, children: Children) -> None:
    p = children.python("while True: pass\n")
    v1.add_process(p.pid)
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    assert wait_until(lambda: cpu_ticks(p.pid) > 0)
    assert not v1.is_frozen()
    v1.freeze()
    assert v1.is_frozen()
    assert Path(v1.dir("freezer"), "freezer.state").read_text().strip() == "FROZEN"
    before = cpu_ticks(p.pid)
    time.sleep(0.3)
    assert cpu_ticks(p.pid) == before
    v1.freeze()  # idempotent
    v1.thaw()
    assert not v1.is_frozen()
    assert wait_until(lambda: cpu_ticks(p.pid) > before)


@root_only
@needs_v1
def test_v1_stats_shape_and_values(v1: V1Manager, children: Children) -> None:
    v1.apply({"memory": {"limit": 256 << 20}, "pids": {"limit": 100}})
    p = children.python(
        "import time\nb = b'x' * (8 << 20)\nt = time.time()\n"
        "while time.time() - t < 0.3: pass\nprint('ok', flush=True)\ntime.sleep(30)\n"
    )
    v1.add_process(p.pid)
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    assert p.stdout.readline().strip() == "ok"
    st = v1.stats()
    json.dumps(st)  # serialisable
    assert set(st) >= {"cpu", "memory", "pids", "blkio", "hugetlb"}
    usage = st["cpu"]["usage"]
    assert set(usage) == {"total", "percpu", "percpu_kernel", "percpu_user", "kernel", "user"}
    assert usage["total"] > 100_000_000  # busy 0.3 s
    assert len(usage["percpu"]) == os.cpu_count()
    assert sum(usage["percpu"]) == pytest.approx(usage["total"], rel=0.05)
    assert usage["user"] + usage["kernel"] > 0
    assert set(st["cpu"]["throttling"]) == {"periods", "throttledPeriods", "throttledTime"}
    mem = st["memory"]
    assert set(mem) >= {"usage", "swap", "kernel", "kernelTCP", "raw", "cache"}
    assert set(mem["usage"]) == {"limit", "usage", "max", "failcnt"}
    assert mem["usage"]["limit"] == 256 << 20
    assert 8 << 20 <= mem["usage"]["usage"] <= 256 << 20
    assert mem["usage"]["max"] >= mem["usage"]["usage"]
    assert "rss" in mem["raw"] and "cache" in mem["raw"]
    assert st["pids"] == {"current": 1, "limit": 100}


@root_only
@needs_v1
def test_v1_oom_kill_is_counted_and_signalled(v1: V1Manager, children: Children) -> None:
    v1.apply({"memory": {"limit": 32 << 20, "swap": 32 << 20}})
    fd = v1.oom_event_fd()
    assert fd is not None
    try:
        assert v1.oom_kill_count() == 0
        assert select.select([fd], [], [], 0)[0] == []
        p = children.python("b = b'x' * (200 << 20)\nprint('survived')\n")
        v1.add_process(p.pid)
        out, _err = go(p)
        assert p.returncode == -signal.SIGKILL
        assert "survived" not in out
        assert v1.oom_kill_count() >= 1
        assert select.select([fd], [], [], 5)[0] == [fd]
        assert int.from_bytes(os.read(fd, 8), "little") >= 1
        mem = v1.stats()["memory"]
        assert mem["usage"]["max"] == 32 << 20  # it ran into the limit
    finally:
        os.close(fd)


@root_only
@needs_v1
def test_v1_devices_deny_dev_null(v1: V1Manager, children: Children) -> None:
    v1.apply(
        {
            "devices": [
                {"allow": False, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
                {"allow": True, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
            ]
        }
    )
    listed = Path(v1.dir("devices"), "devices.list").read_text().split("\n")
    assert "c 1:5 rwm" in listed and "c 1:3 rwm" not in listed
    p = children.python(
        "for dev in ('/dev/null', '/dev/zero'):\n"
        "    try:\n"
        "        open(dev, 'rb').close(); print(dev, 'ok')\n"
        "    except PermissionError:\n"
        "        print(dev, 'EPERM')\n"
    )
    v1.add_process(p.pid)
    out, err = go(p)
    assert out.split("\n")[:2] == ["/dev/null EPERM", "/dev/zero ok"], (out, err)


@root_only
@needs_v1
@pytest.mark.parametrize(
    "spec",
    [
        "docker-run-config.json",
        "podman-run-config.json",
        "ctr-run-config.json",
        "cri-sandbox-config.json",
        "cri-container-config.json",
    ],
)
def test_v1_apply_real_client_resources(v1: V1Manager, spec: str) -> None:
    path = SPECS / spec
    if not path.exists():
        pytest.skip(f"{path} missing")
    resources: dict[str, Any] = json.loads(path.read_text())["linux"]["resources"]
    v1.apply(resources)
    listed = Path(v1.dir("devices"), "devices.list").read_text()
    assert "a *:* rwm" not in listed  # the leading deny-all took effect
    if "pids" in resources:
        assert Path(v1.dir("pids"), "pids.max").read_text().strip() == str(
            resources["pids"]["limit"]
        )


@root_only
@needs_v1
def test_v1_missing_hierarchy_and_unified_errors(v1: V1Manager) -> None:
    with pytest.raises(CgroupError, match="unified"):
        v1.apply({"unified": {"memory.max": "1000"}})
    v1.apply({"unified": {}, "hugepageLimits": [], "network": {}})  # empty: nothing to do
    if not v1.has("hugetlb"):
        with pytest.raises(CgroupError, match="hugetlb"):
            v1.apply({"hugepageLimits": [{"pageSize": "2MB", "limit": 1 << 21}]})
    if not v1.has("net_cls"):
        with pytest.raises(CgroupError, match="net_cls"):
            v1.apply({"network": {"classID": 0x100001}})


@root_only
@needs_v1
def test_v1_kill_all_with_sigterm(v1: V1Manager, children: Children) -> None:
    ps = [children.sleep(), children.sleep()]
    for p in ps:
        v1.add_process(p.pid)
    v1.kill_all(signal.SIGTERM)
    for p in ps:
        assert p.wait(timeout=5) == -signal.SIGTERM
    assert not v1.is_frozen()
    assert wait_until(lambda: v1.pids() == [])


@root_only
@needs_v1
def test_v1_destroy_keeps_preexisting_parent(cg_name: str, children: Children) -> None:
    parent_dir = os.path.join(v1_mounts()["memory"], cg_name.lstrip("/"))
    os.mkdir(parent_dir)
    try:
        m = new_manager(cg_name + "/ctr", "ctr")
        assert isinstance(m, V1Manager)
        m.create()
        assert parent_dir not in m.created
        assert os.path.join(parent_dir, "ctr") in m.created
        p = children.sleep()
        m.add_process(p.pid)
        # a nested cgroup made inside ours (e.g. by the workload) goes too
        os.mkdir(os.path.join(m.dir("memory"), "nested"))
        m.freeze()  # destroy must thaw first
        # through the state file, as `delete` would
        saved = json.loads(json.dumps(m.to_dict()))
        again = manager_from_dict(saved)
        assert isinstance(again, V1Manager) and again.to_dict() == m.to_dict()
        again.destroy()
        assert p.wait(timeout=5) == -signal.SIGKILL
        assert os.path.isdir(parent_dir)
        assert not os.path.exists(os.path.join(parent_dir, "ctr"))
        for d in again.dirs():
            assert not os.path.exists(d)
        # parents that create() made in the other hierarchies are gone
        for mp in set(v1_mounts().values()) - {v1_mounts()["memory"]}:
            assert not os.path.exists(os.path.join(mp, cg_name.lstrip("/")))
        again.destroy()  # idempotent
    finally:
        os.rmdir(parent_dir)


@root_only
@needs_v1
def test_v1_destroy_without_create_is_harmless(cg_name: str) -> None:
    m = new_manager(cg_name, "x")
    m.destroy()
    assert m.pids() == []
    assert not m.is_frozen()
    assert m.oom_kill_count() == 0


# --- siblings under a parent that one of them made (dockerd's cgroup-parent) ----------
#
# dockerd (cgroupfs driver) gives every container cgroupsPath /<parent>/<id>, and nobody
# makes <parent> beforehand: the first container's create does, and so owns it. Its
# delete used to remove the parent recursively, taking with it every sibling cgroup
# that was empty at that moment -- such as one whose create had made it but not yet
# written its init into cgroup.procs ("cgroup cgroup.procs: open: No such file or
# directory", test_docker.py::test_twenty_in_parallel) -- and to wait 2 s per
# hierarchy on each sibling that had processes, then fail.


def _sibling_managers(cg_name: str, mode: str) -> list[CgroupManager]:
    """Managers for <cg_name>/a, /b, /c (nothing made yet), v1 or in the unified mount."""
    if os.geteuid() != 0:
        pytest.skip("needs root for real cgroups")
    if mode == "v1":
        if detect_mode() != "v1":
            pytest.skip("host is not cgroup v1")
        return [new_manager(f"{cg_name}/{n}", n) for n in "abc"]
    if not os.path.exists(os.path.join(UNIFIED, "cgroup.procs")):
        pytest.skip("no cgroup2 mount at /sys/fs/cgroup/unified")
    return [new_manager(f"{cg_name}/{n}", n, mode="v2", v2_mountpoint=UNIFIED) for n in "abc"]


def _own_dirs(m: CgroupManager) -> list[str]:
    return m.dirs() if isinstance(m, V1Manager) else [m.main_dir()]


def _parents(m: CgroupManager) -> list[str]:
    return sorted({os.path.dirname(d) for d in _own_dirs(m)})


def _destroy_all(managers: list[CgroupManager], parents: list[str]) -> None:
    """Clean up whatever happened. A parent outlives its maker when a sibling does (as
    with runc, which never removes parents): remove it here."""
    for m in managers:
        try:
            m.destroy()
        except CgroupError:
            pass  # the assertions have said what went wrong
    for d in parents:
        try:
            os.rmdir(d)
        except FileNotFoundError:
            pass


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_destroy_spares_an_empty_sibling_under_the_parent_it_made(
    cg_name: str, children: Children, mode: str
) -> None:
    a, b, _ = _sibling_managers(cg_name, mode)
    parents = _parents(a)
    try:
        a.create()
        assert set(parents) <= set(a.to_dict()["created"])  # a made the parent everywhere
        b.create()  # b's init is not in yet: the window of the flake
        assert not set(parents) & set(b.to_dict()["created"])
        a.destroy()
        assert not any(os.path.exists(d) for d in _own_dirs(a))
        gone = [d for d in _own_dirs(b) if not os.path.isdir(d)]
        assert not gone, f"a's destroy removed its sibling b: {gone}"
        pb = children.sleep()
        b.add_process(pb.pid)  # was: cgroup cgroup.procs: open: No such file or directory
        assert b.pids() == [pb.pid]
        b.destroy()
        assert not any(os.path.exists(d) for d in _own_dirs(b))
    finally:
        _destroy_all([a, b], parents)


@pytest.mark.parametrize("mode", ["v1", "v2"])
def test_destroy_leaves_the_parent_it_made_to_a_running_sibling(
    cg_name: str, children: Children, mode: str
) -> None:
    a, _, c = _sibling_managers(cg_name, mode)
    parents = _parents(a)
    try:
        a.create()
        c.create()
        pc = children.sleep()
        c.add_process(pc.pid)
        started = time.monotonic()
        a.destroy()  # was: 2 s of EBUSY per hierarchy, then "rmdir .../c: busy"
        took = time.monotonic() - started
        assert took < 1.5, f"destroy waited {took:.1f}s for its sibling"
        assert not any(os.path.exists(d) for d in _own_dirs(a))
        assert all(os.path.isdir(d) for d in parents)
        assert c.pids() == [pc.pid] and pc.poll() is None
        c.destroy()
        assert not any(os.path.exists(d) for d in _own_dirs(c))
    finally:
        _destroy_all([a, c], parents)


@root_only
@needs_v1
def test_v1_parallel_create_and_delete_under_a_shared_parent(
    cg_name: str, children: Children
) -> None:
    """Containers come and go under a parent that none of them found there, so it
    changes hands (and is removed and made again) all the time: no create may fail,
    and nothing but that parent may be left."""
    import threading

    errors: list[str] = []
    cycles: list[int] = []  # per worker
    home = new_manager("/", "home")  # the hierarchies' roots, to take a process back out

    def worker(w: int, pid: int) -> None:
        deadline = time.monotonic() + 2.0
        n = 0
        while time.monotonic() < deadline and not errors:
            m = new_manager(f"{cg_name}/w{w}-{n}", "x")
            try:
                m.create()
                m.add_process(pid)
                home.add_process(pid)  # out again, so that destroy has nobody to kill
            except CgroupError as e:
                errors.append(f"create {m.path}: {e}")
            finally:
                try:
                    m.destroy()
                except CgroupError as e:
                    errors.append(f"destroy {m.path}: {e}")
            n += 1
        cycles.append(n)

    procs = [children.sleep() for _ in range(4)]
    threads = [threading.Thread(target=worker, args=(w, p.pid)) for w, p in enumerate(procs)]
    try:
        for t in threads:
            t.start()
    finally:
        for t in threads:
            t.join()
    parents = [os.path.join(mp, cg_name.lstrip("/")) for mp in set(v1_mounts().values())]
    left = [os.path.join(d, n) for d in parents if os.path.isdir(d) for n in os.listdir(d)]
    _destroy_all([], parents)
    assert not errors, f"{len(errors)} failures in {sum(cycles)} cycles, first: {errors[0]}"
    assert not [p for p in left if os.path.isdir(p)], left
    assert sum(cycles) > 50
    assert all(p.poll() is None for p in procs)


@pytest.mark.parametrize("hierarchy", ["cpu", "unified"])
def test_mkdir_p_outlasts_its_parent_being_removed(cg_name: str, hierarchy: str) -> None:
    """The other side of the race: a parent found there (EEXIST) is removed by its
    maker's delete before our mkdir below it (ENOENT). A child process plays the
    deletes, making and removing the parent over and over; before mkdir_p started
    again from the top, 10 to 50 of the 2000 iterations here failed with ENOENT."""
    base = os.path.join("/sys/fs/cgroup", hierarchy)
    if os.geteuid() != 0 or not os.path.exists(os.path.join(base, "cgroup.procs")):
        pytest.skip(f"needs root and a cgroup hierarchy at {base}")
    parent = os.path.join(base, cg_name.lstrip("/"))
    churn = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            "-c",
            "import os, sys, time\n"
            "while True:\n"
            "    try: os.mkdir(sys.argv[1])\n"
            "    except FileExistsError: pass\n"
            "    try: os.rmdir(sys.argv[1])\n"
            "    except OSError: pass\n"
            "    time.sleep(0.0001)\n",
            parent,
        ]
    )
    errors: list[str] = []
    try:
        time.sleep(0.05)
        for _ in range(2000):
            try:
                mkdir_p(base, cg_name + "/x")
            except CgroupError as e:
                errors.append(str(e))
                continue
            os.rmdir(os.path.join(parent, "x"))
    finally:
        churn.kill()
        churn.wait()
        for d in (os.path.join(parent, "x"), parent):
            try:
                os.rmdir(d)
            except FileNotFoundError:
                pass
    assert not errors, f"{len(errors)} of 2000 failed, first: {errors[0]}"


# --- v2 (the controller-less cgroup2 at /sys/fs/cgroup/unified on a hybrid host) -------


@root_only
@needs_unified
def test_v2_create_add_pids(v2u: V2Manager, children: Children) -> None:
    assert os.path.isdir(v2u.dir)
    p1, p2 = children.sleep(), children.sleep()
    v2u.add_process(p1.pid)
    v2u.add_process(p2.pid)
    assert proc_cgroup(p1.pid)[""] == v2u.path
    assert v2u.pids() == sorted([p1.pid, p2.pid])
    st = v2u.stats()
    json.dumps(st)
    assert st["pids"]["current"] == 2
    assert set(st["cpu"]["usage"]) == {
        "total",
        "percpu",
        "percpu_kernel",
        "percpu_user",
        "kernel",
        "user",
    }


@root_only
@needs_unified
def test_v2_freeze_thaw(v2u: V2Manager, children: Children) -> None:
    p = children.python("while True: pass\n")
    v2u.add_process(p.pid)
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.flush()
    assert wait_until(lambda: cpu_ticks(p.pid) > 0)
    fd = v2u.events_fd()
    assert fd is not None
    try:
        v2u.freeze()
        assert v2u.is_frozen()
        # cgroup.events changed ("frozen 1"): the inotify watch fired
        assert select.select([fd], [], [], 2)[0] == [fd]
    finally:
        os.close(fd)
    before = cpu_ticks(p.pid)
    time.sleep(0.3)
    assert cpu_ticks(p.pid) == before
    v2u.thaw()
    assert not v2u.is_frozen()
    assert wait_until(lambda: cpu_ticks(p.pid) > before)


@root_only
@needs_unified
def test_v2_kill_all(v2u: V2Manager, children: Children) -> None:
    a, b = children.sleep(), children.sleep()
    v2u.add_process(a.pid)
    v2u.add_process(b.pid)
    v2u.kill_all(signal.SIGTERM)
    assert a.wait(timeout=5) == -signal.SIGTERM
    assert not v2u.is_frozen()
    c = children.sleep()
    v2u.add_process(c.pid)
    v2u.kill_all(signal.SIGKILL)  # cgroup.kill
    assert c.wait(timeout=5) == -signal.SIGKILL
    assert wait_until(lambda: v2u.pids() == [])


@root_only
@needs_unified
def test_v2_missing_controller_is_named(v2u: V2Manager) -> None:
    if "memory" in v2u.controllers():
        pytest.skip("memory controller is available in the unified hierarchy here")
    with pytest.raises(CgroupError, match=r"memory\.max: the memory controller is not available"):
        v2u.apply({"memory": {"limit": 32 << 20}})
    if "pids" not in v2u.controllers():
        with pytest.raises(CgroupError, match="pids controller"):
            v2u.apply({"pids": {"limit": 5}})
    with pytest.raises(CgroupError, match="invalid unified key"):
        v2u.apply({"unified": {"../x": "1"}})
    assert v2u.oom_event_fd() is None
    assert v2u.oom_kill_count() == 0
    v2u.apply({"devices": [{"allow": False, "access": "rwm"}]})  # documented no-op


@root_only
@needs_unified
def test_v2_destroy_nested_and_roundtrip(cg_name: str, children: Children) -> None:
    m = new_manager(cg_name + "/a/b", "x", mode="v2", v2_mountpoint=UNIFIED)
    root_ctl = Path(UNIFIED, "cgroup.subtree_control").read_text()
    try:
        m.create()
        assert isinstance(m, V2Manager)
        assert len(m.created) == 3
        p = children.sleep()
        m.add_process(p.pid)
        m.freeze()
        again = manager_from_dict(json.loads(json.dumps(m.to_dict())))
        assert isinstance(again, V2Manager) and again.dir == m.dir
        again.destroy()
        assert p.wait(timeout=5) == -signal.SIGKILL
        assert not os.path.exists(os.path.join(UNIFIED, cg_name.lstrip("/")))
        again.destroy()
    finally:
        m.destroy()
        for ctrl in set(Path(UNIFIED, "cgroup.subtree_control").read_text().split()) - set(
            root_ctl.split()
        ):
            try:
                Path(UNIFIED, "cgroup.subtree_control").write_text(f"-{ctrl}")
            except OSError:
                pass


def test_manager_from_dict_rejects_unknown_mode() -> None:
    with pytest.raises(CgroupError):
        manager_from_dict({"mode": "v3", "path": "/x"})


def test_manager_is_abstract_base() -> None:
    assert issubclass(V1Manager, CgroupManager) and issubclass(V2Manager, CgroupManager)
