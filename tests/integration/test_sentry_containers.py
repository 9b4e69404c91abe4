"""Real containers under ``--sandbox sentry`` (opt-in in this slice): the
sentry serves what it has handlers for (uname, sethostname, ...), passes the
other routed calls through, keeps serving every ``exec``, and is gone after
``delete``."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runner, wait_for
from tests.integration.helpers import alive, in_container_cgroup

SENTRY = ("--sandbox", "sentry")

PROBE_C = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* Each line: name, return value, errno name. */
static void probe(const char *name, long nr, long a0, long a1, long a2) {
    errno = 0;
    long r = syscall(nr, a0, a1, a2, 0, 0);
    printf("%s %ld %s\n", name, r, r < 0 ? strerrorname_np(errno) : "-");
}

int main(void) {
    probe("bpf", SYS_bpf, 0 /* BPF_MAP_CREATE */, 0, 0);
    probe("keyctl", SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0);
    return 0;
}
"""


def _sentry_of(runtime: Runner, cid: str) -> int:
    state = json.loads((runtime.root / cid / "state.json").read_text())
    pid = int(state["sentry_pid"])
    assert pid > 0
    return pid


def _run(
    runtime: Runner, bundle: Bundle, cid: str, *argv: str, sandbox: str | None = "sentry"
) -> str:
    """Run argv; ``sandbox`` is the --sandbox flag (None: no flag, the default)."""
    bundle.args(*argv)
    flags = ("--sandbox", sandbox) if sandbox else ()
    res = runtime(*flags, "run", "--bundle", str(bundle.path), cid)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_shell_works_under_the_sentry(runtime: Runner, bundle: Bundle, cid: str) -> None:
    out = _run(runtime, bundle, cid, "sh", "-c", "echo hi; ls /; grep Seccomp /proc/self/status")
    lines = out.splitlines()
    assert lines[0] == "hi"
    assert "bin" in lines and "proc" in lines
    status = dict(line.split(":\t") for line in lines if line.startswith("Seccomp"))
    assert status["Seccomp"] == "2"
    assert int(status["Seccomp_filters"]) >= 1


def test_uname_is_served_by_the_sentry(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["hostname"] = "sandboxed-host"
    bundle.write()
    out = _run(runtime, bundle, cid, "sh", "-c", "uname -r; uname -n; hostname")
    assert out.split() == ["4.4.0", "sandboxed-host", "sandboxed-host"]
    plain = _run(runtime, bundle, cid + "b", "uname", "-r", sandbox="none")
    assert plain.strip() == os.uname().release


def test_sethostname_stays_in_the_sentry(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["process"]["capabilities"]["effective"].append("CAP_SYS_ADMIN")
    bundle.config["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN")
    bundle.config["process"]["capabilities"]["permitted"].append("CAP_SYS_ADMIN")
    bundle.write()
    out = _run(runtime, bundle, cid, "sh", "-c", "hostname renamed && uname -n")
    assert out.strip() == "renamed"


def test_exit_codes_pipelines_and_forks(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sh", "-c", "exit 7")
    res = runtime(*SENTRY, "run", "--bundle", str(bundle.path), cid)
    assert res.returncode == 7, res.stderr
    out = _run(
        runtime,
        bundle,
        cid + "p",
        "sh",
        "-c",
        "echo a b c | tr ' ' '\\n' | sort -r | head -n 2; "
        "i=0; while [ $i -lt 200 ]; do /bin/true; i=$((i+1)); done; echo $i",
    )
    assert out.split() == ["c", "b", "200"]


@pytest.fixture
def sandboxed(runtime: Runner, bundle: Bundle, cid: str) -> Iterator[int]:
    """A running sandboxed `sleep 100`; yields its sentry's pid."""
    bundle.config["hostname"] = "exec-host"
    bundle.args("sleep", "100")
    runtime(*SENTRY, "run", "-d", "--bundle", str(bundle.path), cid, check=True)
    try:
        yield _sentry_of(runtime, cid)
    finally:
        runtime("delete", "--force", cid, check=True)


def test_exec_is_served_by_the_same_sentry(runtime: Runner, sandboxed: int, cid: str) -> None:
    assert alive(sandboxed)
    # Outside the container's cgroup: ps, kill --all and the limits see the workload only.
    assert not in_container_cgroup(sandboxed, cid)
    assert cid not in runtime("ps", cid, check=True).stdout.split("\n", 1)[1]
    assert str(sandboxed) not in runtime("ps", "--format", "json", cid, check=True).stdout
    # No --sandbox here: the container's saved state decides.
    res = runtime("exec", cid, "sh", "-c", "uname -r; uname -n; grep Seccomp: /proc/self/status")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["4.4.0", "exec-host", "Seccomp:", "2"]
    assert runtime("exec", cid, "sh", "-c", "exit 5").returncode == 5
    # Another exec after the first one's listener has hung up.
    res = runtime("exec", cid, "uname", "-r")
    assert res.stdout.strip() == "4.4.0", res.stderr


def test_delete_leaves_no_sentry(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "100")
    runtime(*SENTRY, "run", "-d", "--bundle", str(bundle.path), cid, check=True)
    sentry = _sentry_of(runtime, cid)
    assert alive(sentry)
    runtime("delete", "--force", cid, check=True)
    assert not alive(sentry)


def test_sentry_exits_with_its_last_workload(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "0.3")
    runtime(*SENTRY, "run", "-d", "--bundle", str(bundle.path), cid, check=True)
    sentry = _sentry_of(runtime, cid)
    wait_for(lambda: not alive(sentry), timeout=10)
    runtime("delete", cid, check=True)


def test_the_sentry_is_the_default(runtime: Runner, bundle: Bundle, cid: str) -> None:
    assert _run(runtime, bundle, cid, "uname", "-r", sandbox=None).strip() == "4.4.0"


def test_annotation_selects_the_sandbox(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config.setdefault("annotations", {})["io.github.pysandbox.sandbox"] = "none"
    bundle.write()
    host = os.uname().release
    assert _run(runtime, bundle, cid, "uname", "-r", sandbox=None).strip() == host
    # The command line wins over the annotation.
    assert _run(runtime, bundle, cid + "f", "uname", "-r").strip() == "4.4.0"
    bundle.config["annotations"]["io.github.pysandbox.sandbox"] = "sentry"
    bundle.write()
    assert _run(runtime, bundle, cid + "g", "uname", "-r", sandbox="none").strip() == host


def test_bad_sandbox_value_is_refused(runtime: Runner, bundle: Bundle, cid: str) -> None:
    res = runtime("--sandbox", "gvisor", "run", "--bundle", str(bundle.path), cid)
    assert res.returncode != 0
    assert "invalid sandbox" in res.stderr


def test_denied_calls_are_refused(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    src = tmp_path / "probe.c"
    src.write_text(PROBE_C)
    exe = bundle.rootfs / "probe"
    subprocess.run(["gcc", "-static", "-O1", "-o", str(exe), str(src)], check=True)
    out = _run(runtime, bundle, cid, "/probe")
    got = {line.split()[0]: line.split()[1:] for line in out.splitlines()}
    assert got["bpf"] == ["-1", "EPERM"], out
    assert got["keyctl"] == ["-1", "EPERM"], out


def test_container_dies_with_its_sentry(runtime: Runner, bundle: Bundle, cid: str) -> None:
    """Rule 2, fail closed: SIGKILL the sentry and the workload is killed too."""
    bundle.args("sleep", "60")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    state = json.loads(runtime("state", cid, check=True).stdout)
    init = int(state["pid"])
    sentry = _sentry_of(runtime, cid)
    os.kill(sentry, 9)
    wait_for(lambda: not alive(init), timeout=10)
    assert json.loads(runtime("state", cid, check=True).stdout)["status"] == "stopped"
    runtime("delete", cid, check=True)


def test_exec_dies_with_the_sentry_in_a_shared_pid_namespace(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    """Without a pid namespace of its own the container's tasks do not die
    with init; the watchdog kills what the cgroup holds."""
    bundle.config["linux"]["namespaces"] = [
        n for n in bundle.config["linux"]["namespaces"] if n["type"] != "pid"
    ]
    bundle.args("sleep", "60")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    pidfile = bundle.path / "exec.pid"
    runtime("exec", "-d", "--pid-file", str(pidfile), cid, "sleep", "61", check=True)
    exec_pid = int(pidfile.read_text())
    assert in_container_cgroup(exec_pid, cid)
    os.kill(_sentry_of(runtime, cid), 9)
    wait_for(lambda: not alive(exec_pid), timeout=10)
    runtime("delete", "--force", cid, check=True)


def test_strace_logs_served_calls(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    bundle.args("sh", "-c", "uname -n; hostname sandboxed-too 2>/dev/null; true")
    res = runtime(
        "--strace",
        "--debug-log",
        f"{log_dir}/%ID%.log",
        "run",
        "--bundle",
        str(bundle.path),
        cid,
    )
    assert res.returncode == 0, res.stderr
    text = (log_dir / f"{cid}.log").read_text()
    lines = [line for line in text.splitlines() if " uname(" in line]
    assert lines, text
    # "[    pid] uname(0x...) = 0 (12.3us)"
    assert lines[0].split("] ", 1)[1].startswith("uname(0x"), lines[0]
    assert " = 0 (" in lines[0], lines[0]
    assert "execve(" in text, text


def test_events_stats_carry_the_sentry_counters(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sh", "-c", "uname -a; uname -r; sleep 60")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)

    def served_uname() -> int:
        out = runtime("events", "--stats", cid, check=True).stdout
        doc = json.loads(out)
        assert doc["type"] == "stats" and "memory" in doc["data"], out
        return int(doc["data"]["pysandbox"]["syscalls"].get("value", {}).get("uname", 0))

    wait_for(lambda: served_uname() >= 2, timeout=10)
    runtime("delete", "--force", cid, check=True)


def test_tiocsti_is_refused(runtime: Runner, bundle: Bundle, cid: str) -> None:
    """TIOCSTI would type into the caller's terminal; the sentry answers EIO
    (Linux's answer with dev.tty.legacy_tiocsti=0). Without the sentry the
    request reaches the kernel (here ENOTTY: fd 0 is not a terminal)."""
    from tests.integration.inside import build_probe

    build_probe(bundle.rootfs / "probe")
    argv = ("/probe", "16", "0", str(0x5412), "0")  # ioctl(0, TIOCSTI, NULL)
    assert _run(runtime, bundle, cid, *argv).split() == ["-1", str(errno.EIO)]
    assert _run(runtime, bundle, cid + "n", *argv, sandbox="none").split() == [
        "-1",
        str(errno.ENOTTY),
    ]
