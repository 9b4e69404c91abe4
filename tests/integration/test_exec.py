"""``exec`` into real running containers: the process docker sends, inline
args with every override flag, detached execs, and the refusals."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runner, wait_for
from tests.integration.helpers import SHARED, alive, fails, in_container_cgroup, snapshot

DOCKER_PROCESS = SHARED / "reference" / "specs" / "docker-exec-process.json"
CAP_SYS_ADMIN = 21


@pytest.fixture
def running(runtime: Runner, bundle: Bundle, cid: str) -> Iterator[int]:
    """A running `sleep 100` container (noNewPrivileges off); yields its init pid."""
    bundle.config["process"]["noNewPrivileges"] = False
    bundle.args("sleep", "100")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    try:
        yield int(runtime.state(cid)["pid"])
    finally:
        runtime("delete", "--force", cid, check=True)


def _out(runtime: Runner, *args: str) -> str:
    res = runtime("exec", *args, check=True)
    return res.stdout


def test_exec_docker_process_file(runtime: Runner, running: int, cid: str, tmp_path: Path) -> None:
    if not DOCKER_PROCESS.exists():
        pytest.skip(f"{DOCKER_PROCESS} is not available")
    process = json.loads(DOCKER_PROCESS.read_text())
    path = tmp_path / "process.json"
    path.write_text(json.dumps(process))
    res = runtime("exec", "--process", str(path), cid)
    assert res.returncode == 0, res.stderr
    assert res.stdout == "execsync-ok\nsleep 100 ", res.stdout
    # exit status propagates through a process file too
    process["args"] = ["sh", "-c", "exit 9"]
    path.write_text(json.dumps(process))
    assert runtime("exec", "--process", str(path), cid).returncode == 9
    fails(runtime, "exec", "--process", str(tmp_path / "nope.json"), cid, msg="nope.json", rc=255)
    path.write_text("{not json")
    fails(runtime, "exec", "--process", str(path), cid, msg="invalid JSON", rc=255)


def test_exec_sees_the_container(runtime: Runner, running: int, cid: str) -> None:
    out = _out(
        runtime,
        cid,
        "sh",
        "-c",
        "hostname; for n in pid mnt uts; do readlink /proc/self/ns/$n; done; "
        "cat /proc/1/cmdline | tr '\\0' ' '; echo; grep -c . /proc/self/mountinfo",
    ).splitlines()
    assert out[0] == "pysandbox"
    assert out[1:4] == [os.readlink(f"/proc/{running}/ns/{n}") for n in ("pid", "mnt", "uts")]
    assert out[4] == "sleep 100 "
    with open(f"/proc/{running}/mountinfo") as f:
        assert int(out[5]) == len(f.read().splitlines())
    res = runtime("exec", cid, "sh", "-c", "echo err >&2; exit 3")
    assert (res.returncode, res.stderr) == (3, "err\n")
    assert runtime("exec", cid, "sh", "-c", "kill -9 $$").returncode == 128 + 9


def test_exec_overrides(runtime: Runner, running: int, cid: str) -> None:
    out = _out(
        runtime,
        "--env",
        "FOO=bar",
        "-e",
        "BAZ=qux",
        "--cwd",
        "/tmp",
        cid,
        "sh",
        "-c",
        "echo $FOO $BAZ; pwd",
    )
    assert out == "bar qux\n/tmp\n"
    assert _out(runtime, "--user", "1000:1000", cid, "id").strip() == "uid=1000 gid=1000"
    assert _out(runtime, "--user", "1000", cid, "id", "-u").strip() == "1000"

    def caps(*flags: str) -> dict[str, int]:
        text = _out(runtime, *flags, cid, "cat", "/proc/self/status")
        fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        return {k: int(fields[k].strip(), 16) for k in ("CapBnd", "CapEff")} | {
            "NoNewPrivs": int(fields["NoNewPrivs"])
        }

    plain = caps()
    # no_new_privs: the sentry's filter sets it on every sandboxed process
    assert not plain["CapBnd"] & (1 << CAP_SYS_ADMIN) and plain["NoNewPrivs"] == 1
    added = caps("--cap", "CAP_SYS_ADMIN")
    assert added["CapBnd"] & (1 << CAP_SYS_ADMIN) and added["CapEff"] & (1 << CAP_SYS_ADMIN)
    assert caps("--no-new-privs")["NoNewPrivs"] == 1


def test_exec_detach_pid_file(runtime: Runner, running: int, cid: str, tmp_path: Path) -> None:
    pid_file = tmp_path / "exec.pid"
    runtime("exec", "--detach", "--pid-file", str(pid_file), cid, "sleep", "50", check=True)
    pid = int(pid_file.read_text())
    assert alive(pid)
    assert in_container_cgroup(pid, cid)
    for ns in ("pid", "mnt", "net", "ipc", "uts"):
        assert os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/{running}/ns/{ns}")
    assert os.readlink(f"/proc/{pid}/root") == os.readlink(f"/proc/{running}/root")
    assert pid in json.loads(runtime("ps", "--format", "json", cid, check=True).stdout)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid))


def test_exec_refusals(runtime: Runner, running: int, cid: str) -> None:
    before = snapshot(runtime, cid)
    fails(runtime, "exec", cid, msg="args must not be empty", rc=255)
    fails(runtime, "exec", "--user", "bob:x", cid, "id", msg="--user", rc=255)
    fails(runtime, "exec", "--tty", "--detach", cid, "sh", msg="cannot allocate tty", rc=255)
    fails(runtime, "exec", "--bogus", cid, "id", msg="flag provided but not defined: -bogus")
    res = runtime("exec", cid, "/no/such/binary")
    assert res.returncode != 0 and "/no/such/binary" in res.stderr
    assert snapshot(runtime, cid) == before
