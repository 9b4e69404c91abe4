"""Real containers on the cgroup v2 driver, even on a hybrid (v1) host.

``PYSANDBOX_CGROUP_MODE=v2`` makes ``create``/``run`` use the unified
hierarchy (on a hybrid host /sys/fs/cgroup/unified, which has no controllers:
the device filter, freezer and kill work there, limits cannot). The mode is
saved with the container, so every later command is given no environment.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci.cgroups import CgroupError, v2_mountpoint
from pysandbox.oci.cgroups import devices_bpf as dbpf
from tests.conftest import Bundle, Runner, wait_for
from tests.integration.helpers import alive, status, wait_status


def _cgroup2() -> Path | None:
    try:
        return Path(v2_mountpoint())
    except CgroupError:
        return None


CGROUP2 = _cgroup2()
V2 = {"PYSANDBOX_CGROUP_MODE": "v2"}

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(CGROUP2 is None, reason="no cgroup2 mount"),
]


def cgdir(cid: str) -> Path:
    assert CGROUP2 is not None
    return CGROUP2 / cid


def procs(cid: str) -> set[int]:
    return {int(x) for x in (cgdir(cid) / "cgroup.procs").read_text().split()}


def with_mknod(bundle: Bundle) -> Bundle:
    """A writable rootfs and CAP_MKNOD, so the workload can make device nodes."""
    cfg = bundle.config
    cfg["root"]["readonly"] = False
    caps = cfg["process"]["capabilities"]
    for key in ("bounding", "effective", "permitted"):
        caps[key] = [*caps.get(key, []), "CAP_MKNOD"]
    return bundle.write()


def run_sh(runtime: Runner, bundle: Bundle, cid: str, script: str) -> str:
    bundle.args("sh", "-c", script)
    res = runtime("run", "--bundle", str(bundle.path), cid, env=V2)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert not cgdir(cid).exists(), "run left the container's cgroup behind"
    return res.stdout + res.stderr


@pytest.fixture
def running(runtime: Runner, bundle: Bundle, cid: str) -> Iterator[int]:
    with_mknod(bundle).args("sleep", "100")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, env=V2, check=True)
    try:
        yield int(runtime.state(cid)["pid"])
    finally:
        runtime("delete", "--force", cid, check=True)
        assert not cgdir(cid).exists()


def sh(runtime: Runner, cid: str, script: str) -> str:
    res = runtime("exec", cid, "sh", "-c", script)
    return res.stdout + res.stderr


# --- the device filter ---------------------------------------------------------------


def test_default_devices_work_and_others_are_refused(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    out = run_sh(
        runtime,
        with_mknod(bundle),
        cid,
        "echo x > /dev/null && echo null-ok; "
        "head -c 3 /dev/zero | wc -c; "
        "mknod /tmp/m c 1 1 && echo mknod-ok; "
        "cat /tmp/m; echo cat=$?; "
        "mknod /tmp/n c 1 3 && echo x > /tmp/n && echo own-null-ok",
    )
    assert "null-ok" in out
    assert "3" in out.split()
    assert "mknod-ok" in out  # mknod of any char device is allowed (runc's defaults) ...
    assert "can't open '/tmp/m': Operation not permitted" in out  # ... using it is not
    assert "cat=1" in out
    assert "own-null-ok" in out


def test_spec_device_rules_are_enforced(runtime: Runner, bundle: Bundle, cid: str) -> None:
    with_mknod(bundle)
    bundle.config["linux"]["resources"] = {
        "devices": [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "r"},
        ]
    }
    out = run_sh(
        runtime,
        bundle,
        cid,
        "mknod /tmp/f c 10 229 && echo mknod-ok; "
        "(exec 3</tmp/f) && echo fuse-read-ok; "
        "(exec 3>/tmp/f) || echo fuse-write-refused",
    )
    assert "mknod-ok" in out and "fuse-read-ok" in out and "fuse-write-refused" in out


def test_the_filter_is_attached_to_the_container_cgroup(
    runtime: Runner, running: int, cid: str
) -> None:
    flags, ids = dbpf.attached_programs(str(cgdir(cid)))
    assert len(ids) == 1
    assert flags & 2  # BPF_F_ALLOW_MULTI


def test_update_replaces_the_filter(runtime: Runner, running: int, cid: str) -> None:
    assert "3" in sh(runtime, cid, "head -c 3 /dev/zero | wc -c").split()
    before = dbpf.attached_programs(str(cgdir(cid)))[1]
    rules: dict[str, Any] = {
        "devices": [
            {"allow": False, "access": "rwm"},
            {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": True, "type": "c", "major": 136, "access": "rwm"},
            {"allow": True, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
        ]
    }
    runtime("update", "--resources", "-", cid, input=json.dumps(rules), check=True)
    after = dbpf.attached_programs(str(cgdir(cid)))[1]
    assert len(after) == 1 and after != before
    out = sh(runtime, cid, "head -c 3 /dev/zero; echo rc=$?; echo x > /dev/null && echo null-ok")
    assert "/dev/zero: Operation not permitted" in out and "null-ok" in out


# --- the cgroup itself ---------------------------------------------------------------------


def test_init_is_in_the_unified_cgroup(runtime: Runner, running: int, cid: str) -> None:
    assert running in procs(cid)
    saved = json.loads((runtime.root / cid / "state.json").read_text())["cgroup"]
    assert saved["mode"] == "v2" and saved["mountpoint"] == str(CGROUP2)
    own = Path(f"/proc/{running}/cgroup").read_text()
    assert f"0::/{cid}\n" in own


def test_pause_and_resume(runtime: Runner, running: int, cid: str) -> None:
    runtime("pause", cid, check=True)
    assert status(runtime, cid) == "paused"
    assert (cgdir(cid) / "cgroup.freeze").read_text().strip() == "1"
    assert "frozen 1" in (cgdir(cid) / "cgroup.events").read_text()
    runtime("resume", cid, check=True)
    assert status(runtime, cid) == "running"
    assert "frozen 0" in (cgdir(cid) / "cgroup.events").read_text()
    assert "ok" in sh(runtime, cid, "echo ok")


def test_kill_all(runtime: Runner, running: int, cid: str) -> None:
    runtime("exec", "-d", cid, "sleep", "100", check=True)
    others = wait_for(lambda: procs(cid) - {running} or None)
    runtime("kill", "--all", cid, "KILL", check=True)
    wait_status(runtime, cid, "stopped")
    wait_for(lambda: not procs(cid))
    assert not alive(running)
    assert not any(alive(p) for p in others)


def test_kill_all_with_a_catchable_signal(runtime: Runner, running: int, cid: str) -> None:
    runtime("exec", "-d", cid, "sleep", "100", check=True)
    others = wait_for(lambda: procs(cid) - {running} or None)
    runtime("kill", "--all", cid, str(int(signal.SIGTERM)), check=True)
    # init (pid 1, no handler) ignores SIGTERM; the other sleep dies; nothing stays frozen
    wait_for(lambda: not any(alive(p) for p in others))
    assert "frozen 0" in (cgdir(cid) / "cgroup.events").read_text()
    assert status(runtime, cid) == "running"


def test_delete_removes_the_cgroup(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    runtime("create", "--bundle", str(bundle.path), cid, env=V2, check=True)
    assert cgdir(cid).is_dir()
    runtime("delete", "--force", cid, check=True)
    assert not cgdir(cid).exists()


def test_leak_check_sees_unified_cgroups(cid: str) -> None:
    from tests.conftest import _our_cgroups

    path = cgdir(cid)
    path.mkdir()
    try:
        assert path in _our_cgroups()
    finally:
        path.rmdir()


def test_cgroup_namespace_shows_the_container_cgroup(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    namespaces = bundle.config["linux"]["namespaces"]
    if not any(n["type"] == "cgroup" for n in namespaces):
        namespaces.append({"type": "cgroup"})
    out = run_sh(runtime, bundle, cid, "cat /proc/self/cgroup; cat /sys/fs/cgroup/cgroup.procs")
    assert "0::/\n" in out
    assert "1" in out.split()


# --- limits the hierarchy cannot hold -------------------------------------------------------


def test_memory_limit_without_the_controller_fails_clearly(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    assert CGROUP2 is not None
    if "memory" in (CGROUP2 / "cgroup.controllers").read_text().split():
        pytest.skip("this cgroup2 hierarchy has the memory controller")
    bundle.config["linux"]["resources"] = {"memory": {"limit": 64 << 20}}
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), cid, env=V2)
    assert res.returncode != 0
    assert "cgroup memory.max: the memory controller is not available" in res.stderr
    assert not cgdir(cid).exists()
    assert runtime("state", cid).returncode != 0
