"""The runtime's own processes inside a container must not hand the workload a
way to the host's files (the class of CVE-2019-5736).

Between ``create`` and ``start`` a container's init is pysandbox itself: host
Python, waiting on the exec fifo, already in the container's pid namespace and
with the workload's credentials. A process that shares that pid namespace (a
pod's other container) could open /proc/<init>/exe, get the host's
interpreter, and once init has exec'd, reopen it for writing through
/proc/self/fd. Our init is therefore not dumpable until its execve (which
makes the workload dumpable again, as usual), so only CAP_SYS_PTRACE could
reach /proc/<init>/exe. The check below only *reads* the link: a write test
would destroy this machine's Python if the defence failed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.conftest import Bundle, Runner

LOOK = 'for p in /proc/[0-9]*; do echo "${p#/proc/} $(readlink $p/exe 2>&1 || true)"; done'


def _exe_links(runtime: Runner, cid: str) -> dict[int, str]:
    res = runtime("exec", cid, "sh", "-c", LOOK)
    assert res.returncode == 0, res.stderr
    out = {}
    for line in res.stdout.splitlines():
        pid, _, link = line.partition(" ")
        if pid.isdigit():
            out[int(pid)] = link
    return out


def test_created_init_is_not_reachable_from_its_pod(
    runtime: Runner, bundle: Bundle, tmp_path: Path
) -> None:
    interpreter = os.path.realpath(sys.executable)
    pod = "expose-pod"
    bundle.args("sleep", "60")
    assert runtime("run", "-d", "--bundle", str(bundle.path), pod).returncode == 0
    try:
        pod_pid = int(runtime.state(pod)["pid"])
        app = Bundle(tmp_path / "app", json.loads(json.dumps(bundle.config)))
        app.path.mkdir()
        (app.path / "rootfs").symlink_to(bundle.rootfs)
        for ns in app.config["linux"]["namespaces"]:
            if ns["type"] == "pid":
                ns["path"] = f"/proc/{pod_pid}/ns/pid"
        app.args("sleep", "60")
        assert runtime("create", "--bundle", str(app.path), "expose-app").returncode == 0
        try:
            links = _exe_links(runtime, pod)
            assert len(links) >= 3, links  # the pod's sleep, the created init, the shell
            leaked = {pid: link for pid, link in links.items() if link == interpreter}
            assert not leaked, f"the runtime's interpreter is reachable: {leaked}"
            # busybox readlink prints nothing when it may not read the link
            assert "" in links.values(), links

            # Once started, the workload is an ordinary, dumpable process again.
            assert runtime("start", "expose-app").returncode == 0
            links = _exe_links(runtime, pod)
            assert sum(1 for link in links.values() if link.endswith("busybox")) >= 2, links
        finally:
            runtime("delete", "-f", "expose-app")
    finally:
        runtime("delete", "-f", pod)
