"""pysandbox under the real containerd 1.6: ``ctr run --runc-binary`` through the
runc v2 shim, and the containerd/Kubernetes configuration the README documents.

The daemon is private (tests/engines/containerd_fixture.py); the image is the
busybox-static rootfs packed as a docker-archive and ``ctr images import``-ed.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PYSANDBOX
from tests.conftest import wait_for as wait_until
from tests.engines.common import write_image_tar
from tests.engines.containerd_fixture import (
    CRI_PLUGIN,
    REPO,
    SNIPPET,
    Containerd,
    running_containerd,
)

pytestmark = pytest.mark.engine

RUNTIMECLASS = REPO / "deploy" / "kubernetes" / "runtimeclass.yaml"


@pytest.fixture(scope="module")
def containerd_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Containerd]:
    base = tmp_path_factory.mktemp("ctrd")
    with running_containerd(base) as daemon:
        image = write_image_tar(base / "busybox.tar")
        daemon.ctr("images", "import", str(image))
        yield daemon


@pytest.fixture
def ctrd(containerd_daemon: Containerd) -> Iterator[Containerd]:
    """The module's containerd; after each test no task, container, runtime
    state or cgroup of ours may be left."""
    yield containerd_daemon
    left = containerd_daemon.leftovers()
    if left:
        containerd_daemon.remove_everything()
        pytest.fail(f"test left things behind in containerd: {left}")


def new_id() -> str:
    return "pst-" + uuid.uuid4().hex[:10]


def exit_code_of_rm(ctrd: Containerd, cid: str) -> int:
    """``ctr task rm`` reports a non-zero exit status as a warning; 0 otherwise."""
    res = ctrd.ctr("task", "rm", cid)
    m = re.search(r"exit with non-zero exit code (\d+)", res.stderr + res.stdout)
    return int(m.group(1)) if m else 0


def wait_status(ctrd: Containerd, cid: str, status: str, timeout: float = 10.0) -> None:
    wait_until(lambda: ctrd.task_status(cid) == status, timeout)


def test_run_rm_output_and_exit_code(ctrd: Containerd) -> None:
    res = ctrd.run(
        new_id(),
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
        flags=("--rm",),
        check=False,
    )
    assert res.returncode == 3, res
    assert res.stdout.strip() == "out"
    assert "err" in res.stderr


def test_run_rm_success(ctrd: Containerd) -> None:
    res = ctrd.run(new_id(), "sh", "-c", "test -x /bin/busybox", flags=("--rm",), check=False)
    assert res.returncode == 0, res


def test_a_bind_mount_through_the_gofer(ctrd: Containerd, tmp_path: Path) -> None:
    """ctr's --mount (a bind, as the CRI plugin makes a Kubernetes volume's):
    the gofer serves it, and the workload's writes reach the host's directory."""
    vol = tmp_path / "vol"
    vol.mkdir()
    res = ctrd.run(
        new_id(),
        "sh",
        "-c",
        "echo from-containerd > /vol/out && cat /vol/out",
        flags=("--rm", "--mount", f"type=bind,src={vol},dst=/vol,options=rbind:rw"),
        check=False,
    )
    assert (res.returncode, res.stdout) == (0, "from-containerd\n"), res
    assert (vol / "out").read_text() == "from-containerd\n"


def test_detached_exec_ps_pause_resume_kill(ctrd: Containerd) -> None:
    cid = new_id()
    ctrd.run(cid, "sleep", "300", flags=("-d",))
    init = ctrd.task_pid(cid)
    assert ctrd.task_status(cid) == "RUNNING"

    # exec: output and exit status come back through the shim.
    res = ctrd.exec(cid, "e1", "sh", "-c", "echo in-$(hostname); exit 4", check=False)
    assert res.returncode == 4, res
    assert res.stdout.startswith("in-")

    # A detached exec, then ps lists both processes, as the cgroup does.
    ctrd.exec(cid, "e2", "sleep", "300", detach=True)
    procs_file = ctrd.cgroup_dir("pids", cid) / "cgroup.procs"

    def both() -> set[int] | None:
        listed = {
            int(line.split()[0])
            for line in ctrd.ctr("task", "ps", cid).stdout.split("\n")[1:]
            if line.strip()
        }
        return listed if len(listed) == 2 else None  # fmt: skip

    listed = wait_until(both)
    assert isinstance(listed, set)
    assert init in listed
    assert listed == {int(p) for p in procs_file.read_text().split()}

    ctrd.ctr("task", "pause", cid)
    assert ctrd.task_status(cid) == "PAUSED"
    freezer = ctrd.cgroup_dir("freezer", cid)
    if (freezer / "freezer.state").exists():
        assert (freezer / "freezer.state").read_text().strip() == "FROZEN"
    else:
        assert (freezer / "cgroup.freeze").read_text().strip() == "1"
    ctrd.ctr("task", "resume", cid)
    assert ctrd.task_status(cid) == "RUNNING"

    ctrd.ctr("task", "kill", "-s", "KILL", cid)
    wait_status(ctrd, cid, "STOPPED")
    assert exit_code_of_rm(ctrd, cid) == 137
    ctrd.ctr("containers", "rm", cid)


def test_kill_default_sigterm_reaches_the_workload(ctrd: Containerd) -> None:
    cid = new_id()
    ctrd.run(cid, "sh", "-c", "trap 'exit 7' TERM; while :; do sleep 0.05; done", flags=("-d",))
    ctrd.ctr("task", "kill", cid)  # SIGTERM, ctr's default
    wait_status(ctrd, cid, "STOPPED")
    assert exit_code_of_rm(ctrd, cid) == 7
    ctrd.ctr("containers", "rm", cid)


def test_kill_all_signals_every_process(ctrd: Containerd) -> None:
    cid = new_id()
    ctrd.run(cid, "sleep", "300", flags=("-d",))
    ctrd.exec(cid, "bg", "sleep", "300", detach=True)
    ctrd.ctr("task", "kill", "-a", "-s", "SIGKILL", cid)
    wait_status(ctrd, cid, "STOPPED")
    assert exit_code_of_rm(ctrd, cid) == 137
    ctrd.ctr("containers", "rm", cid)


def test_metrics_come_from_the_container_cgroup(ctrd: Containerd) -> None:
    cid = new_id()
    limit = 64 * 1024 * 1024
    ctrd.run(cid, "sleep", "300", flags=("-d", "--memory-limit", str(limit)))
    try:
        doc: dict[str, Any] = json.loads(
            ctrd.ctr("task", "metrics", "--format", "json", cid).stdout
        )
        v2 = "memory" in doc and "usage" not in doc["memory"]
        if v2:  # cgroup v2 metrics (io.containerd.cgroups.v2.Metrics)
            assert doc["memory"]["usage_limit"] == limit
            assert doc["pids"]["current"] == 1
        else:
            memdir = ctrd.cgroup_dir("memory", cid)
            assert doc["memory"]["usage"]["limit"] == limit
            assert int((memdir / "memory.limit_in_bytes").read_text()) == limit
            assert doc["memory"]["usage"]["usage"] > 0
            pids = int((ctrd.cgroup_dir("pids", cid) / "pids.current").read_text())
            assert doc["pids"]["current"] == pids == 1
            assert doc["cpu"]["usage"]["total"] > 0
    finally:
        ctrd.ctr("task", "kill", "-s", "KILL", cid)
        wait_status(ctrd, cid, "STOPPED")
        ctrd.ctr("task", "rm", cid)
        ctrd.ctr("containers", "rm", cid)


def test_pod_second_container_joins_namespaces_by_path(ctrd: Containerd) -> None:
    """As the CRI does (specs/cri-container-config.json): the app container joins
    the sandbox's pid, ipc, uts and network namespaces through /proc/PID/ns."""
    sandbox = new_id()
    ctrd.run(
        sandbox,
        "sh",
        "-c",
        "exec sleep 300",
        flags=("-d", "--cap-add", "CAP_SYS_ADMIN"),
    )
    try:
        pid = ctrd.task_pid(sandbox)
        wait_until(lambda: Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep"))
        ns = {k: Path(f"/proc/{pid}/ns/{k}") for k in ("pid", "ipc", "uts", "net")}
        flags = ["--rm"]
        for kind, short in (("pid", "pid"), ("ipc", "ipc"), ("uts", "uts"), ("network", "net")):
            flags += ["--with-ns", f"{kind}:{ns[short]}"]
        script = (
            "hostname; ps -o pid,args; for n in pid ipc uts net; do readlink /proc/self/ns/$n; done"
        )
        res = ctrd.run(new_id(), "sh", "-c", script, flags=tuple(flags))
        lines = res.stdout.splitlines()
        # The pod's UTS namespace names it (a sethostname inside a sandboxed
        # container stays in that container's sentry; CRI names pods in config.json).
        from pysandbox.oci.lifecycle import uts_names

        assert lines[0] == uts_names(str(ns["uts"]))[0]
        # The sandbox's sleep is pid 1 of the shared pid namespace.
        assert any(re.match(r"\s*1\s+sleep 300", line) for line in lines), res.stdout
        for short, link in ns.items():
            assert f"{short}:[{link.stat().st_ino}]" in lines, (short, res.stdout)
    finally:
        ctrd.ctr("task", "kill", "-s", "KILL", sandbox)
        wait_status(ctrd, sandbox, "STOPPED")
        ctrd.ctr("task", "rm", sandbox)
        ctrd.ctr("containers", "rm", sandbox)


# --- the Kubernetes path: containerd's CRI plugin configured with pysandbox ----


def snippet_with_binary(binary: str) -> str:
    text = SNIPPET.read_text()
    out, n = re.subn(r'(?m)^(\s*BinaryName\s*=\s*)"[^"]*"', rf'\1"{binary}"', text)
    assert n == 1, "the snippet sets BinaryName exactly once"
    return out


def local_default_config(base: Path) -> str:
    """Debian's ``containerd config default``, with every host path moved under `base`."""
    text = subprocess.run(
        ["containerd", "config", "default"], capture_output=True, text=True, check=True
    ).stdout
    for host, mine in (
        ("/run/containerd/containerd.sock", f"{base}/containerd.sock"),
        ("/var/lib/containerd", f"{base}/root"),
        ("/run/containerd", f"{base}/state"),
        ("/opt/containerd", f"{base}/opt"),
        ("/etc/cni/net.d", f"{base}/cni/conf"),
        ("/opt/cni/bin", f"{base}/cni/bin"),
    ):
        text = text.replace(f'"{host}', f'"{mine}')
    assert '"/var/lib/containerd' not in text and '"/run/containerd' not in text
    return text


def plugin_status(daemon: Containerd, plugin_id: str) -> str:
    for line in daemon.ctr("plugins", "ls").stdout.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[1] == plugin_id:
            return parts[-1]
    return ""


def test_cri_plugin_accepts_the_documented_runtime(tmp_path: Path) -> None:
    """The snippet added to a stock config.toml: containerd's effective config
    has a ``pysandbox`` runc-v2 runtime with our BinaryName, and the CRI plugin
    loads with it."""
    base = tmp_path / "cri"
    base.mkdir()
    config = local_default_config(base) + "\n" + snippet_with_binary(PYSANDBOX)
    (base / "candidate.toml").write_text(config)
    dump = subprocess.run(
        ["containerd", "--config", str(base / "candidate.toml"), "config", "dump"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    head = f'[plugins."{CRI_PLUGIN}".containerd.runtimes.pysandbox]'
    assert head in dump, "the runtime is in containerd's effective config"
    table = dump.split(head, 1)[1].split(f'[plugins."{CRI_PLUGIN}".containerd.runtimes.runc]')[0]
    assert 'runtime_type = "io.containerd.runc.v2"' in table
    assert f'BinaryName = "{PYSANDBOX}"' in table

    with running_containerd(base, config_text=config) as daemon:
        assert plugin_status(daemon, "cri") == "ok", daemon.log_tail()
        assert "failed to load plugin io.containerd.grpc.v1.cri" not in daemon.log_tail(200)


def test_cri_plugin_needs_the_runc_runtime_kept(tmp_path: Path) -> None:
    """The pitfall the snippet's comment warns about: a config.toml with only
    the pysandbox runtime drops containerd's built-in runc entry, and the CRI
    plugin refuses to load (its default_runtime_name is still "runc")."""
    snippet = snippet_with_binary(PYSANDBOX)
    with running_containerd(tmp_path / "only", cri=True, extra_config=snippet) as daemon:
        assert plugin_status(daemon, "cri") == "error"
        assert "default_runtime_name" in daemon.log_tail(200)


def test_runtimeclass_manifest_names_the_containerd_runtime() -> None:
    doc = parse_simple_yaml(RUNTIMECLASS.read_text())
    assert doc["apiVersion"] == "node.k8s.io/v1"
    assert doc["kind"] == "RuntimeClass"
    assert doc["metadata"]["name"] == "pysandbox"
    handler = doc["handler"]
    # The handler is the name of the runtime table in the containerd snippet.
    names = re.findall(
        r'(?m)^\[plugins\."io\.containerd\.grpc\.v1\.cri"\.containerd\.runtimes\.([A-Za-z0-9_-]+)\]',
        SNIPPET.read_text(),
    )
    assert names == [handler]
    # Kubernetes' rule for handlers: a DNS label.
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", handler)


def parse_simple_yaml(text: str) -> dict[str, Any]:
    """Enough YAML for a one-document manifest of nested mappings and scalars."""
    root: dict[str, Any] = {}
    stack: list[tuple[int, dict[str, Any]]] = [(-1, root)]
    for raw in text.splitlines():
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip() or line.strip() == "---":
            continue
        indent = len(line) - len(line.lstrip())
        key, sep, value = line.strip().partition(":")
        if not sep:
            raise ValueError(f"not a mapping entry: {raw!r}")
        while stack[-1][0] >= indent:
            stack.pop()
        parent = stack[-1][1]
        value = value.strip().strip('"')
        if value:
            parent[key] = value
        else:
            child: dict[str, Any] = {}
            parent[key] = child
            stack.append((indent, child))
    return root
