"""The container lifecycle on real containers: create, start, run, state, kill,
delete, list, ps, pause and resume -- the happy paths and every wrong-state
error, each checked for its exit code, its wording and that nothing changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runner, wait_for
from tests.integration.helpers import (
    RFC3339_NANO,
    alive,
    cgroup_dir,
    cgroup_procs,
    fails,
    in_container_cgroup,
    read_in,
    snapshot,
    status,
    wait_status,
)

STATE_KEYS = ["ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"]
SIG_LOOP = (
    'for s in HUP USR1 USR2; do trap "echo $s >> /dev/shm/sigs" $s; done; '
    "trap 'echo TERM >> /dev/shm/sigs; exit 0' TERM; "
    "echo ready > /dev/shm/ready; while :; do sleep 0.01; done"
)


def _skeleton(text: str) -> list[str]:
    """The state JSON's layout with the values blanked out."""
    return [re.sub(r'(": ).*?(,?)$', r"\1V\2", line) for line in text.split("\n")]


def test_create_pid_file_start_state(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    pid_file = bundle.path.parent / "init.pid"
    runtime("create", "--bundle", str(bundle.path), "--pid-file", str(pid_file), cid, check=True)
    pid = int(pid_file.read_text())
    assert in_container_cgroup(pid, cid)
    st = runtime.state(cid)
    assert list(st) == STATE_KEYS
    assert st["pid"] == pid and st["status"] == "created" and st["id"] == cid
    assert st["bundle"] == str(bundle.path) and st["rootfs"] == str(bundle.rootfs)
    assert RFC3339_NANO.match(st["created"]), st["created"]
    # init is blocked before exec: it is not yet `sleep`
    assert Path(f"/proc/{pid}/comm").read_text().strip() != "sleep"
    runtime("start", cid, check=True)
    wait_for(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "sleep")
    assert status(runtime, cid) == "running"
    runtime("kill", cid, "KILL", check=True)
    wait_status(runtime, cid, "stopped")
    assert runtime.state(cid)["pid"] == 0
    runtime("delete", cid, check=True)
    assert not cgroup_dir("pids", cid).exists()
    fails(runtime, "state", cid, msg="container does not exist")


def test_state_layout_matches_runc(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    bundle.config["annotations"] = {"org.example/key": "value"}
    bundle.args("sleep", "100")
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    ours = runtime("state", cid, check=True).stdout
    runc_root, runc_id = str(tmp_path / "runc"), cid + "-runc"
    subprocess.run(
        ["runc", "--root", runc_root, "create", "--bundle", str(bundle.path), runc_id],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        theirs = subprocess.run(
            ["runc", "--root", runc_root, "state", runc_id],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        subprocess.run(["runc", "--root", runc_root, "delete", "--force", runc_id])
        runtime("delete", "--force", cid, check=True)
    assert not ours.endswith("\n") and not theirs.endswith("\n")
    assert _skeleton(ours) == _skeleton(theirs), (ours, theirs)
    doc = json.loads(ours)
    assert list(doc) == list(json.loads(theirs))
    assert doc["annotations"] == {"org.example/key": "value"}
    assert RFC3339_NANO.match(doc["created"])


def test_run_attached_propagates_output_and_exit(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sh", "-c", "echo out; echo err >&2; exit 5")
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert (res.returncode, res.stdout, res.stderr) == (5, "out\n", "err\n")
    # run without --keep deletes the container
    fails(runtime, "state", cid, msg="container does not exist")


def test_run_attached_killed_by_signal(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    proc = subprocess.Popen(
        runtime.cmd("run", "--bundle", str(bundle.path), cid),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: runtime("state", cid).returncode == 0 and status(runtime, cid) == "running"
        )
        runtime("kill", cid, "9", check=True)
        assert proc.wait(timeout=10) == 128 + 9
    finally:
        proc.kill()
        proc.wait()


def test_run_detach(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    pid_file = bundle.path.parent / "p.pid"
    t0 = time.monotonic()
    runtime(
        "run",
        "--detach",
        "--pid-file",
        str(pid_file),
        "--bundle",
        str(bundle.path),
        cid,
        check=True,
    )
    assert time.monotonic() - t0 < 10
    st = runtime.state(cid)
    assert st["status"] == "running" and st["pid"] == int(pid_file.read_text())
    runtime("delete", "--force", cid, check=True)
    assert not alive(st["pid"])


def test_kill_signals_reach_a_trap(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sh", "-c", SIG_LOOP)
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    pid = runtime.state(cid)["pid"]
    wait_for(lambda: read_in(pid, "/dev/shm/ready"))
    seen: list[str] = []
    for sig, name in (("1", "HUP"), ("USR1", "USR1"), ("SIGUSR2", "USR2"), ("sigusr1", "USR1")):
        runtime("kill", cid, sig, check=True)
        seen.append(name)
        wait_for(lambda: read_in(pid, "/dev/shm/sigs").split() == seen)
    runtime("kill", cid, "0", check=True)  # a probe: delivers nothing
    runtime("kill", cid, check=True)  # default SIGTERM: the trap exits 0
    wait_status(runtime, cid, "stopped")
    fails(runtime, "kill", cid, "KILL", msg="container not running")
    runtime("delete", cid, check=True)


def test_kill_errors_change_nothing(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    before = snapshot(runtime, cid)
    try:
        fails(runtime, "kill", cid, "NOPE", msg="unknown signal")
        fails(runtime, "kill", cid, "99", msg="unknown signal")
        fails(runtime, "kill", msg="requires a minimum of 1 argument(s)")
        fails(runtime, "kill", cid, "9", "extra", msg="requires a maximum of 2 argument(s)")
        assert snapshot(runtime, cid) == before
    finally:
        runtime("delete", "--force", cid, check=True)


def test_kill_all(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sh", "-c", "sleep 100 & sleep 100 & sleep 100")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    wait_for(lambda: len(cgroup_procs(cid)) == 3)
    runtime("kill", "--all", cid, "KILL", check=True)
    wait_for(lambda: not cgroup_procs(cid))
    wait_status(runtime, cid, "stopped")
    runtime("delete", cid, check=True)


def test_delete_created_and_force_running(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    pid = runtime.state(cid)["pid"]
    runtime("delete", cid, check=True)  # a created container may be deleted
    assert not alive(pid)
    assert not cgroup_dir("pids", cid).exists()

    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    pid = runtime.state(cid)["pid"]
    before = snapshot(runtime, cid)
    fails(
        runtime,
        "delete",
        cid,
        msg=f"cannot delete container {cid} that is not stopped: running",
    )
    assert snapshot(runtime, cid) == before and alive(pid)
    runtime("delete", "--force", cid, check=True)
    assert not alive(pid)
    assert not cgroup_dir("pids", cid).exists()
    res = runtime("delete", "--force", cid)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")
    fails(runtime, "delete", cid, msg="container does not exist")


def test_start_wrong_state(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sh", "-c", "read x")  # stdin is /dev/null: exits at once
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    runtime("start", cid, check=True)
    wait_status(runtime, cid, "stopped")
    before = snapshot(runtime, cid)
    fails(runtime, "start", cid, msg="cannot start a container that has stopped")
    assert snapshot(runtime, cid) == before
    runtime("delete", cid, check=True)

    bundle.args("sleep", "100")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    before = snapshot(runtime, cid)
    fails(runtime, "start", cid, msg="cannot start an already running container")
    assert snapshot(runtime, cid) == before
    runtime("delete", "--force", cid, check=True)


def test_create_existing_id(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    before = snapshot(runtime, cid)
    fails(
        runtime, "create", "--bundle", str(bundle.path), cid, msg=f"container with id exists: {cid}"
    )
    fails(runtime, "run", "-d", "--bundle", str(bundle.path), cid, msg="container with id exists")
    assert snapshot(runtime, cid) == before
    runtime("delete", cid, check=True)


def test_list_formats(runtime: Runner, bundle: Bundle, cid: str) -> None:
    res = runtime("list", "--format", "json", check=True)
    assert res.stdout == "null\n"
    assert runtime("list", "-q", check=True).stdout == ""
    bundle.args("sleep", "100")
    other = cid + "b"
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    runtime("run", "-d", "--bundle", str(bundle.path), other, check=True)
    try:
        assert runtime("list", "-q", check=True).stdout.split() == sorted([cid, other])
        docs = json.loads(runtime("list", "--format", "json", check=True).stdout)
        by_id = {d["id"]: d for d in docs}
        assert by_id[cid]["status"] == "created" and by_id[other]["status"] == "running"
        assert list(by_id[cid]) == STATE_KEYS and by_id[cid]["owner"] == "root"
        table = runtime("list", check=True).stdout.splitlines()
        header = table[0]
        assert header.split() == ["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
        starts = [header.index(h) for h in header.split()]
        rows = {line.split()[0]: line for line in table[1:]}
        assert set(rows) == {cid, other}
        for line in rows.values():
            # columns line up under the header, as Go's tabwriter lays them out
            assert [m.start() for m in re.finditer(r"\S+", line)] == starts, (header, line)
        assert rows[other].split()[2] == "running"
        fails(runtime, "list", "--format", "yaml", msg="invalid format")
        fails(runtime, "list", "extra", msg="requires exactly 0 argument(s)")
    finally:
        runtime("delete", "--force", cid)
        runtime("delete", "--force", other)


def test_list_empty_matches_runc(runtime: Runner, tmp_path: Path) -> None:
    if shutil.which("runc") is None:
        pytest.skip("runc is not installed")
    for args in (["--format", "json"], [], ["-q"]):
        theirs = subprocess.run(
            ["runc", "--root", str(tmp_path / "runc"), "list", *args],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert runtime("list", *args, check=True).stdout == theirs


def test_ps(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sh", "-c", "sleep 100 & exec sleep 101")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    try:
        init = runtime.state(cid)["pid"]
        wait_for(lambda: len(cgroup_procs(cid)) == 2)
        pids = json.loads(runtime("ps", "--format", "json", cid, check=True).stdout)
        assert sorted(pids) == sorted(cgroup_procs(cid)) and init in pids
        table = runtime("ps", cid, check=True).stdout.splitlines()
        assert table[0].split()[:3] == ["UID", "PID", "PPID"]
        assert sorted(int(line.split()[1]) for line in table[1:]) == sorted(pids)
        assert any("sleep 101" in line for line in table[1:])
        custom = runtime("ps", cid, "-o", "pid,comm", check=True).stdout.splitlines()
        assert custom[0].split() == ["PID", "COMMAND"]
        assert {int(line.split()[0]) for line in custom[1:]} == set(pids)
        fails(runtime, "ps", "--format", "xml", cid, msg="invalid format")
        fails(runtime, "ps", msg="requires a minimum of 1 argument(s)")
    finally:
        runtime("delete", "--force", cid, check=True)


COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /dev/shm/n; done"


def _count(pid: int) -> int:
    """The counter's value (0 while the file is being rewritten)."""
    text = read_in(pid, "/dev/shm/n").strip()
    return int(text) if text.isdigit() else 0


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_pause_resume(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sh", "-c", COUNTER)
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    try:
        pid = runtime.state(cid)["pid"]
        first = wait_for(lambda: _count(pid))
        wait_for(lambda: _count(pid) > first)
        fails(runtime, "resume", cid, msg="container not paused")
        runtime("pause", cid, check=True)
        assert status(runtime, cid) == "paused"
        # frozen: neither the counter nor the CPU time moves (the freeze may
        # have caught the file half rewritten, so compare raw contents)
        frozen, ticks = read_in(pid, "/dev/shm/n"), _cpu_ticks(pid)
        time.sleep(0.2)
        assert (read_in(pid, "/dev/shm/n"), _cpu_ticks(pid)) == (frozen, ticks)
        before = snapshot(runtime, cid)
        fails(runtime, "pause", cid, msg="container not running")
        fails(runtime, "start", cid, msg="cannot start a container in the paused state")
        fails(runtime, "exec", cid, "true", msg="paused", rc=255)
        fails(
            runtime, "delete", cid, msg=f"cannot delete container {cid} that is not stopped: paused"
        )
        assert snapshot(runtime, cid) == before
        runtime("resume", cid, check=True)
        assert status(runtime, cid) == "running"
        last = int(frozen) if frozen.strip().isdigit() else 0
        wait_for(lambda: _count(pid) > last)
        wait_for(lambda: _cpu_ticks(pid) > ticks)
        # a paused container can still be force-deleted
        runtime("pause", cid, check=True)
    finally:
        runtime("delete", "--force", cid, check=True)
    assert not alive(pid)


def test_stopped_container_refuses_everything(runtime: Runner, bundle: Bundle, cid: str) -> None:
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    runtime("start", cid, check=True)  # `true`
    try:
        wait_status(runtime, cid, "stopped")
        before = snapshot(runtime, cid)
        fails(runtime, "kill", cid, msg="container not running")
        fails(runtime, "pause", cid, msg="container not running")
        fails(runtime, "resume", cid, msg="container not paused")
        fails(runtime, "exec", cid, "true", msg="stopped", rc=255)
        fails(runtime, "update", "--pids-limit", "10", cid, msg="container not running")
        fails(runtime, "events", "--stats", cid, msg="container not running")
        assert snapshot(runtime, cid) == before
    finally:
        runtime("delete", "--force", cid, check=True)


def test_pause_created_container(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    try:
        runtime("pause", cid, check=True)
        assert status(runtime, cid) == "paused"
        before = snapshot(runtime, cid)
        fails(runtime, "start", cid, msg="cannot start a container in the paused state")
        assert snapshot(runtime, cid) == before
        runtime("resume", cid, check=True)
        assert status(runtime, cid) == "created"
        runtime("start", cid, check=True)
        assert status(runtime, cid) == "running"
    finally:
        runtime("delete", "--force", cid, check=True)


def test_kill_created_container(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    runtime("kill", cid, "KILL", check=True)
    wait_status(runtime, cid, "stopped")
    fails(runtime, "start", cid, msg="cannot start a container that has stopped")
    runtime("delete", cid, check=True)


def test_kill_paused_container(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    try:
        pid = runtime.state(cid)["pid"]
        runtime("pause", cid, check=True)
        assert json.loads(runtime("ps", "--format", "json", cid, check=True).stdout) == [pid]
        assert json.loads(runtime("events", "--stats", cid, check=True).stdout)["id"] == cid
        runtime("kill", cid, "KILL", check=True)  # SIGKILL to a paused init thaws it
        wait_status(runtime, cid, "stopped")
        runtime("delete", cid, check=True)
    finally:
        runtime("delete", "--force", cid, check=True)


def test_external_kill_then_delete(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    pid = runtime.state(cid)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_status(runtime, cid, "stopped")
    assert runtime.state(cid)["pid"] == 0
    runtime("delete", cid, check=True)
    assert not cgroup_dir("pids", cid).exists()


def test_bad_pid_file_creates_nothing(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    pid_file = bundle.path.parent / "missing-dir" / "init.pid"
    runtime.root.mkdir(parents=True, exist_ok=True)
    before = snapshot(runtime, None, cid)
    err = fails(
        runtime,
        "create",
        "--bundle",
        str(bundle.path),
        "--pid-file",
        str(pid_file),
        cid,
        msg=str(pid_file),
    )
    assert "No such file or directory" in err
    assert snapshot(runtime, None, cid) == before


def test_run_forwards_signals(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args(
        "sh", "-c", 'trap "echo got TERM; exit 7" TERM; echo ready; while :; do sleep 0.01; done'
    )
    proc = subprocess.Popen(
        runtime.cmd("run", "--bundle", str(bundle.path), cid), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.read() == "got TERM\n"
        assert proc.wait(timeout=10) == 7
    finally:
        proc.kill()
        proc.wait()


def test_delete_stopped_reaps_leftovers(runtime: Runner, bundle: Bundle, cid: str) -> None:
    """Without a pid namespace init's death leaves its children: delete kills them."""
    ns = bundle.config["linux"]["namespaces"]
    bundle.config["linux"]["namespaces"] = [n for n in ns if n["type"] != "pid"]
    bundle.args("sh", "-c", "sleep 100 & exec sleep 101")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    wait_for(lambda: len(cgroup_procs(cid)) == 2)
    child = next(p for p in cgroup_procs(cid) if p != runtime.state(cid)["pid"])
    runtime("kill", cid, "KILL", check=True)
    wait_status(runtime, cid, "stopped")
    assert json.loads(runtime("ps", "--format", "json", cid, check=True).stdout) == [child]
    runtime("delete", cid, check=True)
    assert not alive(child)
    assert not cgroup_dir("pids", cid).exists()


def test_pidfd_socket_receives_a_pidfd_of_init(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """--pidfd-socket (runc 1.2): the caller gets a pidfd of init over SCM_RIGHTS."""
    import array
    import socket
    import threading

    bundle.args("sleep", "30")
    path = str(tmp_path / "pidfd.sock")
    got: dict[str, int] = {}
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)

        def accept() -> None:
            conn, _ = server.accept()
            with conn:
                fds = array.array("i")
                _, anc, _, _ = conn.recvmsg(64, socket.CMSG_LEN(fds.itemsize))
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.frombytes(data[: fds.itemsize])
                got["fd"] = fds[0]

        t = threading.Thread(target=accept)
        t.start()
        pid_file = tmp_path / "pid"
        runtime(
            "create", "--bundle", str(bundle.path), "--pid-file", str(pid_file),
            "--pidfd-socket", path, cid, check=True,
        )  # fmt: skip
        t.join(10)
    pidfd = got["fd"]
    try:
        # The pidfd refers to init: its fdinfo names init's pid.
        info = Path(f"/proc/self/fdinfo/{pidfd}").read_text()
        assert f"Pid:\t{pid_file.read_text().strip()}" in info
    finally:
        os.close(pidfd)
    runtime("delete", "--force", cid, check=True)
