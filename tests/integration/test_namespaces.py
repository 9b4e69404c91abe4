"""Namespaces from inside real containers: new ones of every type, a user
namespace with id mappings, joining another container's namespaces by path
(as containerd's CRI plugin does for pods), and --no-pivot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runner, give_to_mapped_root, wait_for
from tests.integration.inside import SPECS, host_ns, mountinfo, ns_inode, run_sh

NS_FILES = {
    "pid": "pid",
    "network": "net",
    "ipc": "ipc",
    "uts": "uts",
    "mount": "mnt",
    "cgroup": "cgroup",
}


def _container_ns(out: str) -> dict[str, int]:
    got: dict[str, int] = {}
    for line in out.splitlines():
        name, _, link = line.partition(" ")
        if link:
            got[name] = ns_inode(link)
    return got


def _ns_script(names: list[str]) -> str:
    return "; ".join(f"echo {n} $(readlink /proc/self/ns/{n})" for n in names)


def test_every_namespace_type_is_new(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["linux"]["namespaces"] = [{"type": t} for t in NS_FILES]
    bundle.write()
    names = list(NS_FILES.values())
    got = _container_ns(run_sh(runtime, bundle, cid, _ns_script([*names, "user"])))
    for n in names:
        assert got[n] != host_ns(n), n
    # no user namespace was asked for: the host's is kept
    assert got["user"] == host_ns("user")


def test_omitted_namespace_is_the_hosts(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["linux"]["namespaces"] = [{"type": "mount"}, {"type": "pid"}]
    bundle.config.pop("hostname", None)
    bundle.write()
    got = _container_ns(run_sh(runtime, bundle, cid, _ns_script(["net", "uts", "ipc", "pid"])))
    assert got["net"] == host_ns("net")
    assert got["uts"] == host_ns("uts")
    assert got["ipc"] == host_ns("ipc")
    assert got["pid"] != host_ns("pid")


def test_pid_namespace_init_is_pid_1(runtime: Runner, bundle: Bundle, cid: str) -> None:
    out = run_sh(runtime, bundle, cid, "echo $$; ps -o pid,comm | wc -l")
    lines = out.split()
    assert lines[0] == "1"
    assert int(lines[1]) <= 4  # header, sh, ps (and wc): no host processes


def test_network_namespace_has_only_lo_up(runtime: Runner, bundle: Bundle, cid: str) -> None:
    out = run_sh(runtime, bundle, cid, "ls /sys/class/net; cat /sys/class/net/lo/operstate")
    names = out.split()
    assert names[:-1] == ["lo"]
    assert names[-1] in ("unknown", "up")


@pytest.mark.usefixtures("traversable")
def test_user_namespace_mappings(runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    # as podman and docker --userns-remap do: the image belongs to the mapped root
    give_to_mapped_root(bundle.rootfs)
    cfg = bundle.config
    cfg["linux"]["namespaces"].append({"type": "user"})
    cfg["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    cfg["mounts"].append(
        {"destination": "/shared", "type": "bind", "source": str(shared), "options": ["rbind"]}
    )
    bundle.write()
    out = run_sh(
        runtime,
        bundle,
        cid,
        "cat /proc/self/uid_map /proc/self/gid_map; id -u; readlink /proc/self/ns/user;"
        " touch /shared/made-inside; grep CapEff /proc/self/status",
    )
    lines = out.splitlines()
    assert lines[0].split() == ["0", "100000", "65536"]
    assert lines[1].split() == ["0", "100000", "65536"]
    assert lines[2] == "0"
    assert ns_inode(lines[3]) != host_ns("user")
    st = (shared / "made-inside").stat()
    assert (st.st_uid, st.st_gid) == (100000, 100000)


def _pause(runtime: Runner, bundle: Bundle, cid: str, hostname: str) -> int:
    """A pod sandbox made from containerd's real CRI sandbox config."""
    ref = json.loads((SPECS / "cri-sandbox-config.json").read_text())
    cfg = bundle.config
    cfg["linux"]["namespaces"] = ref["linux"]["namespaces"] + [
        {"type": "uts"},
        {"type": "network"},
    ]
    cfg["linux"]["maskedPaths"] = ref["linux"]["maskedPaths"]
    cfg["linux"]["readonlyPaths"] = ref["linux"]["readonlyPaths"]
    cfg["hostname"] = hostname
    bundle.args("sleep", "30")
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    runtime("start", cid, check=True)
    pid = int(runtime.state(cid)["pid"])
    return pid


def test_join_namespaces_by_path_like_cri(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    sandbox = f"{cid}-pause"
    pid = _pause(runtime, bundle, sandbox, "pod-host")
    try:
        ref = json.loads((SPECS / "cri-container-config.json").read_text())
        namespaces = []
        for ns in ref["linux"]["namespaces"]:
            if "path" in ns:
                ns = {**ns, "path": ns["path"].replace("/proc/20327/", f"/proc/{pid}/")}
            namespaces.append(ns)
        app = Bundle(tmp_path / "app", json.loads(json.dumps(bundle.config)))
        app.path.mkdir()
        (app.path / "rootfs").symlink_to(bundle.rootfs)
        app.config["linux"]["namespaces"] = namespaces
        app.config.pop("hostname", None)
        app.config["process"]["user"] = ref["process"]["user"]
        out = run_sh(
            runtime,
            app,
            cid,
            "hostname; ps -o pid,args | grep -c '[s]leep 30'; "
            + _ns_script(["pid", "ipc", "uts", "net", "mnt"]),
        )
        lines = out.splitlines()
        assert lines[0] == "pod-host"
        assert lines[1] == "1"  # the sandbox's sleep, seen through the shared pid ns
        got = _container_ns("\n".join(lines[2:]))
        for name in ("pid", "ipc", "uts", "net", "mnt"):
            theirs = os.stat(f"/proc/{pid}/ns/{name}").st_ino
            if name == "mnt":
                assert got[name] != theirs
            else:
                assert got[name] == theirs, name
    finally:
        runtime("kill", sandbox, "KILL")
        wait_for(lambda: runtime.state(sandbox)["status"] == "stopped")
        runtime("delete", "--force", sandbox, check=True)


def test_join_missing_namespace_path_fails(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["linux"]["namespaces"].append({"type": "ipc", "path": "/proc/999999999/ns/ipc"})
    bundle.config["linux"]["namespaces"] = [
        n for n in bundle.config["linux"]["namespaces"] if n != {"type": "ipc"}
    ]
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode != 0 and "/proc/999999999/ns/ipc" in res.stderr


def test_no_pivot(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sh", "-c", "ls /; cat /proc/self/mountinfo")
    res = runtime("run", "--no-pivot", "--bundle", str(bundle.path), cid)
    assert res.returncode == 0, res.stderr
    top = res.stdout.split()
    assert "bin" in top and "work" not in top
    mi = mountinfo(res.stdout)
    assert mi["/proc"][1] == "proc"
