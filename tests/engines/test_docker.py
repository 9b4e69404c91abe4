"""pysandbox under a real dockerd (20.10, its own containerd and runc v2 shim),
registered in daemon.json by `pysandbox install`, driven by the docker CLI."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.engines.dockerd import IMAGE, PYSANDBOX, Dockerd

pytestmark = pytest.mark.engine

RT = "pysandbox"


def run(docker: Dockerd, *args: str, runtime: str = RT, timeout: float = 60) -> str:
    """`docker run --rm` that must succeed; its stdout."""
    return docker("run", "--rm", "--runtime", runtime, *args, timeout=timeout).stdout


def start(docker: Dockerd, *args: str, runtime: str = RT) -> str:
    """`docker run -d`; the container's full id."""
    return docker("run", "-d", "--runtime", runtime, *args).stdout.strip()


def inspect(docker: Dockerd, cid: str, fmt: str) -> str:
    return docker("inspect", "-f", fmt, cid).stdout.strip()


def wait_logs(docker: Dockerd, cid: str, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = docker("logs", cid).stdout
        if text in out:
            return out
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the logs of {cid[:12]}: {out!r}")
        time.sleep(0.05)


def cgroup_value(docker: Dockerd, cid: str, v1: tuple[str, str], v2: str) -> str:
    """A control file of the container's cgroup (cgroupsPath /<cgroup-parent>/<id>)."""
    ctrl, name = v1
    path = docker.cgroup_dir(cid, ctrl)
    return (path / (name if path.parent.parent.name == ctrl else v2)).read_text().strip()


def task_dir(docker: Dockerd, cid: str) -> Path:
    """The bundle containerd's shim hands to the runtime."""
    return (
        docker.exec_root / "containerd" / "daemon" / "io.containerd.runtime.v2.task" / "moby" / cid
    )


def on_pty(argv: list[str], send: bytes = b"", timeout: float = 20) -> tuple[int, str]:
    """Run argv with a pty as its stdin/stdout/stderr (what `-it` needs); type
    ``send``; return its exit code and everything it wrote."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, close_fds=True
    )
    os.close(slave)
    out = b""
    try:
        if send:
            time.sleep(0.3)
            os.write(master, send)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: every slave fd is closed
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return code, out.decode(errors="replace")


@pytest.fixture
def sleeper(docker: Dockerd) -> Iterator[str]:
    cid = start(docker, IMAGE, "sleep", "300")
    yield cid
    docker("rm", "-f", cid, check=False)


# --- run ------------------------------------------------------------------------


def test_run_rm_streams_and_exit_code(docker: Dockerd) -> None:
    res = docker(
        "run",
        "--rm",
        "--runtime",
        RT,
        IMAGE,
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
        check=False,
    )
    assert res.returncode == 3
    assert res.stdout == "out\n"
    assert "err" in res.stderr
    assert docker("run", "--rm", "--runtime", RT, IMAGE, "false", check=False).returncode == 1
    # a command that cannot start: docker's own 127 (the runtime's error reaches the user)
    res = docker("run", "--rm", "--runtime", RT, IMAGE, "/no/such/binary", check=False)
    assert res.returncode == 127, res
    assert "no such file or directory" in res.stderr.lower(), res.stderr


def test_run_detached_and_logs(docker: Dockerd) -> None:
    cid = start(docker, IMAGE, "sh", "-c", "echo line1; echo line2 >&2; sleep 300")
    out = wait_logs(docker, cid, "line1")
    logs = docker("logs", cid)
    assert "line1" in logs.stdout
    assert "line2" in logs.stderr or "line2" in out
    assert inspect(docker, cid, "{{.State.Status}}") == "running"
    assert inspect(docker, cid, "{{.HostConfig.Runtime}}") == RT


def test_run_env_workdir_user(docker: Dockerd) -> None:
    out = run(
        docker,
        "-e",
        "FOO=bar baz",
        "-w",
        "/tmp",
        "--user",
        "1000:1000",
        IMAGE,
        "sh",
        "-c",
        'echo "$FOO"; pwd; id -u; id -g',
    )
    assert out.split("\n")[:4] == ["bar baz", "/tmp", "1000", "1000"]


def test_read_only_rootfs(docker: Dockerd) -> None:
    res = docker(
        "run",
        "--rm",
        "--runtime",
        RT,
        "--read-only",
        IMAGE,
        "sh",
        "-c",
        "touch /probe 2>&1; echo rc=$?; touch /tmp/ok 2>&1; echo tmp=$?",
        check=False,
    )
    assert "Read-only file system" in res.stdout
    assert "rc=1" in res.stdout
    # docker keeps /dev writable but gives no tmpfs at /tmp unless asked: read-only too
    assert "tmp=1" in res.stdout


def test_volumes_and_etc_hosts_through_the_gofer(docker: Dockerd, tmp_path: Path) -> None:
    """docker's volumes and its /etc/hosts, /etc/resolv.conf and /etc/hostname are
    bind mounts: the gofer serves them (the kernel's view of each is read-only
    in the container), and what the workload writes lands on the host as with
    runc; a read-only volume stays read-only."""
    vol, ro = tmp_path / "vol", tmp_path / "ro"
    vol.mkdir()
    ro.mkdir()
    (ro / "kept").write_text("kept\n")
    script = (
        "echo from-container > /vol/out && mkdir /vol/d && mv /vol/out /vol/d/moved"
        " && echo '10.9.8.7 pysandbox-test' >> /etc/hosts && grep -c pysandbox-test /etc/hosts"
        " && cat /etc/hostname /ro/kept && (touch /ro/x 2>&1 || true)"
        " && grep -E ' /(vol|ro|etc/hosts) ' /proc/self/mountinfo | cut -d' ' -f5,6"
    )
    outputs = {}
    for runtime in (RT, "runc"):
        shutil.rmtree(vol / "d", ignore_errors=True)
        outputs[runtime] = run(
            docker,
            "-v",
            f"{vol}:/vol",
            "-v",
            f"{ro}:/ro:ro",
            "--hostname",
            "volhost",
            IMAGE,
            "sh",
            "-c",
            script,
            runtime=runtime,
        )
        assert (vol / "d" / "moved").read_text() == "from-container\n"
    # docker orders the volumes' mounts as it likes: compare the table's lines as a set
    ours, theirs = (outputs[r].splitlines() for r in (RT, "runc"))
    assert (ours[:4], sorted(ours[4:])) == (theirs[:4], sorted(theirs[4:]))
    lines = outputs[RT].splitlines()
    assert lines[:3] == ["1", "volhost", "kept"], lines
    assert "Read-only file system" in lines[3]
    assert sorted(lines[4:]) == ["/etc/hosts rw,relatime", "/ro ro,relatime", "/vol rw,relatime"]
    # the kernel's own mount of the volume is read-only: writes went through the gofer
    cid = start(docker, "-v", f"{vol}:/vol", IMAGE, "sleep", "300")
    try:
        pid = inspect(docker, cid, "{{.State.Pid}}")
        kernel_view = Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        assert any(x.split()[4] == "/vol" and x.split()[5].startswith("ro") for x in kernel_view)
        assert (
            docker("exec", cid, "sh", "-c", "echo again > /vol/again && cat /vol/again").stdout
            == "again\n"
        )
    finally:
        docker("rm", "-f", cid, check=False)


def test_network_none(docker: Dockerd) -> None:
    out = run(docker, "--network", "none", IMAGE, "ls", "/sys/class/net")
    assert out.split() == ["lo"]


def test_default_bridge_network_with_prestart_hook(docker: Dockerd) -> None:
    cid = start(docker, IMAGE, "sleep", "300")
    config = json.loads((task_dir(docker, cid) / "config.json").read_text())
    hooks = config.get("hooks", {}).get("prestart", [])
    assert any("libnetwork-setkey" in h.get("args", []) for h in hooks), hooks
    # dockerd sets up eth0 when the hook calls back into it
    out = docker("exec", cid, "ip", "-4", "addr", "show", "eth0").stdout
    ip = inspect(docker, cid, "{{.NetworkSettings.IPAddress}}")
    assert ip and f"inet {ip}/" in out


# --- exec -----------------------------------------------------------------------


def test_exec(docker: Dockerd, sleeper: str) -> None:
    res = docker(
        "exec", "-e", "X=1", "-w", "/etc", sleeper, "sh", "-c", "echo $X; pwd; exit 7", check=False
    )
    assert res.returncode == 7
    assert res.stdout == "1\n/etc\n"
    res = docker("exec", "-i", sleeper, "cat", input="through stdin\n")
    assert res.stdout == "through stdin\n"


def test_exec_it(docker: Dockerd, sleeper: str) -> None:
    code, out = on_pty(
        docker.cmd("exec", "-it", sleeper, "sh"),
        send=b"tty; echo typed-$((2+3)); exit 4\n",
    )
    assert code == 4, out
    assert "/dev/pts/" in out
    assert "typed-5" in out


def test_run_it(docker: Dockerd) -> None:
    code, out = on_pty(
        docker.cmd("run", "--rm", "-it", "--runtime", RT, IMAGE, "sh", "-c", "tty; echo in-a-tty")
    )
    assert code == 0, out
    assert "/dev/pts/0" in out or "/dev/console" in out
    assert "in-a-tty" in out


# --- signals, stop, rm -------------------------------------------------------------

TRAPS = (
    'trap "echo got-term; exit 0" TERM; trap "echo got-usr1" USR1; echo ready; '
    "while :; do sleep 0.1; done"
)


def test_kill_signal_and_stop_with_term(docker: Dockerd) -> None:
    cid = start(docker, IMAGE, "sh", "-c", TRAPS)
    wait_logs(docker, cid, "ready")
    docker("kill", "-s", "USR1", cid)
    wait_logs(docker, cid, "got-usr1")
    assert inspect(docker, cid, "{{.State.Running}}") == "true"
    t0 = time.monotonic()
    docker("stop", "-t", "10", cid)
    assert time.monotonic() - t0 < 5, "TERM was not delivered; docker waited for its timeout"
    assert "got-term" in docker("logs", cid).stdout
    assert inspect(docker, cid, "{{.State.ExitCode}}") == "0"


def test_stop_kills_after_timeout(docker: Dockerd) -> None:
    cid = start(docker, IMAGE, "sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.1; done')
    wait_logs(docker, cid, "ready")
    t0 = time.monotonic()
    docker("stop", "-t", "1", cid)
    took = time.monotonic() - t0
    assert 0.9 < took < 8, took
    assert inspect(docker, cid, "{{.State.Running}}") == "false"
    assert inspect(docker, cid, "{{.State.ExitCode}}") == "137"


def test_rm_force_running(docker: Dockerd, sleeper: str) -> None:
    docker("rm", "-f", sleeper)
    assert sleeper not in docker("ps", "-aq", "--no-trunc").stdout
    # the docker fixture then checks: no process, cgroup, state or mount remains


# --- pause, top, stats, update -------------------------------------------------------


def test_pause_unpause(docker: Dockerd) -> None:
    cid = start(docker, IMAGE, "sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; sleep 0.05; done")
    wait_logs(docker, cid, "3\n")
    docker("pause", cid)
    assert inspect(docker, cid, "{{.State.Status}}") == "paused"
    assert cgroup_value(docker, cid, ("freezer", "freezer.state"), "cgroup.freeze") in (
        "FROZEN",
        "1",
    )
    time.sleep(0.2)
    before = len(docker("logs", cid).stdout.split())
    time.sleep(0.5)
    assert len(docker("logs", cid).stdout.split()) == before, "the counter ran while paused"
    docker("unpause", cid)
    assert inspect(docker, cid, "{{.State.Status}}") == "running"
    wait_logs(docker, cid, f"\n{before + 3}\n")


def test_top(docker: Dockerd, sleeper: str) -> None:
    out = docker("top", sleeper).stdout
    assert "PID" in out.splitlines()[0]
    assert "sleep 300" in out
    pid = int(inspect(docker, sleeper, "{{.State.Pid}}"))
    assert str(pid) in out


def test_stats_no_stream(docker: Dockerd, sleeper: str) -> None:
    out = docker(
        "stats", "--no-stream", "--format", "{{.Name}}|{{.MemUsage}}|{{.PIDs}}", sleeper
    ).stdout.strip()
    _, mem, pids = out.split("|")
    assert pids.strip() == "1"
    assert not mem.strip().startswith("0B"), out
    # containerd's shim reads stats from the cgroup of the pid in --pid-file
    pid = inspect(docker, sleeper, "{{.State.Pid}}")
    procs = (docker.cgroup_dir(sleeper, "memory") / "cgroup.procs").read_text().split()
    assert pid in procs


def test_update_resources(docker: Dockerd, sleeper: str) -> None:
    docker(
        "update",
        "--memory",
        "64m",
        "--memory-swap",
        "128m",
        "--cpus",
        "0.5",
        "--pids-limit",
        "50",
        sleeper,
    )
    assert cgroup_value(docker, sleeper, ("memory", "memory.limit_in_bytes"), "memory.max") == str(
        64 << 20
    )
    quota = cgroup_value(docker, sleeper, ("cpu", "cpu.cfs_quota_us"), "cpu.max")
    assert quota.split()[0] == "50000"
    assert cgroup_value(docker, sleeper, ("pids", "pids.max"), "pids.max") == "50"
    assert inspect(docker, sleeper, "{{.HostConfig.Memory}}") == str(64 << 20)


def test_oom_kill_is_reported(docker: Dockerd) -> None:
    res = docker(
        "run",
        "--name",
        "pst-oom",
        "--runtime",
        RT,
        "-m",
        "32m",
        "--memory-swap",
        "32m",
        IMAGE,
        "sh",
        "-c",
        "x=aaaaaaaaaaaaaaaa; while :; do x=$x$x; done",
        check=False,
        timeout=60,
    )
    assert res.returncode == 137, res
    assert inspect(docker, "pst-oom", "{{.State.OOMKilled}}") == "true"


# --- the runtimeArgs entry ---------------------------------------------------------


def test_runtime_args_entry(docker: Dockerd) -> None:
    assert run(docker, IMAGE, "echo", "via-args", runtime="pysandbox-args") == "via-args\n"
    cid = start(docker, IMAGE, "sleep", "300", runtime="pysandbox-args")
    records = [
        json.loads(line)
        for line in (task_dir(docker, cid) / "log.json").read_text().splitlines()
        if line.strip()
    ]
    created = [r for r in records if r["msg"].startswith("pysandbox create:")]
    assert created and created[0]["level"] == "debug"
    assert "['--debug', '--root'" in created[0]["msg"]  # runtimeArgs come first


# --- many at once --------------------------------------------------------------------


def test_twenty_in_parallel(docker: Dockerd) -> None:
    def one(i: int) -> subprocess.CompletedProcess[str]:
        return docker(
            "run",
            "--rm",
            "--runtime",
            RT,
            IMAGE,
            "sh",
            "-c",
            f"echo hello-{i}",
            check=False,
            timeout=120,
        )

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    failed = [(i, r.returncode, r.stderr) for i, r in enumerate(results) if r.returncode != 0]
    assert not failed, "\n".join(f"{i}: rc {rc}: {err}" for i, rc, err in failed)
    assert [r.stdout for r in results] == [f"hello-{i}\n" for i in range(20)]
    assert docker("ps", "-aq").stdout == ""
    # the docker fixture then checks: no process, cgroup, state or mount remains


def test_daemon_json_from_pysandbox_install(docker: Dockerd) -> None:
    runtimes = json.loads(docker("info", "--format", "{{json .Runtimes}}").stdout)
    assert runtimes["pysandbox"]["path"] == docker.runtimes[0].path
    assert runtimes["pysandbox-args"]["runtimeArgs"] == ["--debug"]


def test_install_and_uninstall_on_a_live_daemon(docker: Dockerd) -> None:
    """The README's way: `pysandbox install`, SIGHUP, use it; `uninstall`, SIGHUP."""
    proc = docker.proc
    assert proc is not None

    def runtimes() -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(docker("info", "--format", "{{json .Runtimes}}").stdout)
        return doc

    def hup_until(present: bool) -> None:
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while ("pysandbox-hup" in runtimes()) != present:
            assert time.monotonic() < deadline, "dockerd did not reload its runtimes"
            time.sleep(0.1)

    cli = [PYSANDBOX, "install", "--runtime", "pysandbox-hup", "--config", str(docker.config)]
    res = subprocess.run(cli, capture_output=True, text=True, check=True)
    assert "added" in res.stdout
    try:
        hup_until(True)
        assert runtimes()["pysandbox-hup"]["path"] == os.path.abspath(PYSANDBOX)
        assert run(docker, IMAGE, "echo", "reloaded", runtime="pysandbox-hup") == "reloaded\n"
    finally:
        res = subprocess.run(
            [PYSANDBOX, "uninstall", "--runtime", "pysandbox-hup", "--config", str(docker.config)],
            capture_output=True,
            text=True,
            check=True,
        )
        assert "removed" in res.stdout
        hup_until(False)
    assert set(runtimes()) >= {"pysandbox", "pysandbox-args", "runc"}
