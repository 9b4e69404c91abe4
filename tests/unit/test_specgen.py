"""The default config (`pysandbox spec`): runc's template, and it validates."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pysandbox.oci.config import Namespace, parse_spec
from pysandbox.oci.specgen import default_spec, write_spec

DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
CGROUP2 = os.path.exists("/sys/fs/cgroup/cgroup.controllers")


def test_default_matches_runc_template() -> None:
    spec = default_spec()
    assert spec["ociVersion"] == "1.2.0"
    assert spec["hostname"] == "pysandbox"
    assert spec["root"] == {"path": "rootfs", "readonly": True}
    process = spec["process"]
    assert process["terminal"] is True
    assert process["args"] == ["sh"]
    assert process["user"] == {"uid": 0, "gid": 0}
    assert process["cwd"] == "/"
    assert process["noNewPrivileges"] is True
    assert "TERM=xterm" in process["env"]
    assert process["capabilities"] == {
        "bounding": DEFAULT_CAPS,
        "effective": DEFAULT_CAPS,
        "permitted": DEFAULT_CAPS,
    }
    assert process["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    destinations = [m["destination"] for m in spec["mounts"]]
    assert destinations == [
        "/proc",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
        "/sys",
        "/sys/fs/cgroup",
    ]
    assert "options" not in spec["mounts"][0]
    assert "gid=5" in spec["mounts"][2]["options"]
    assert spec["mounts"][5]["options"][-1] == "ro"
    assert spec["mounts"][6]["type"] == "cgroup"
    linux = spec["linux"]
    assert linux["resources"] == {"devices": [{"allow": False, "access": "rwm"}]}
    assert "/proc/kcore" in linux["maskedPaths"]
    assert linux["readonlyPaths"] == [
        "/proc/bus",
        "/proc/fs",
        "/proc/irq",
        "/proc/sys",
        "/proc/sysrq-trigger",
    ]
    expected = ["pid", "network", "ipc", "uts", "mount"] + (["cgroup"] if CGROUP2 else [])
    assert [ns["type"] for ns in linux["namespaces"]] == expected


def test_args_and_terminal() -> None:
    args = ["echo", "hi"]
    spec = default_spec(args, terminal=False)
    assert spec["process"]["args"] == ["echo", "hi"]
    assert spec["process"]["terminal"] is False
    spec["process"]["args"].append("x")
    assert args == ["echo", "hi"]  # the caller's list is not shared


def test_calls_do_not_share_state() -> None:
    first = default_spec()
    first["mounts"][2]["options"].clear()
    first["linux"]["maskedPaths"].clear()
    second = default_spec()
    assert "gid=5" in second["mounts"][2]["options"]
    assert second["linux"]["maskedPaths"]


def test_rootless() -> None:
    spec = default_spec(rootless=True)
    linux = spec["linux"]
    types = [ns["type"] for ns in linux["namespaces"]]
    assert "network" not in types
    assert types[-1] == "user"
    assert types.count("user") == 1
    assert linux["uidMappings"] == [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    assert linux["gidMappings"] == [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    assert "resources" not in linux
    sys_mount = next(m for m in spec["mounts"] if m["destination"] == "/sys")
    assert sys_mount == {
        "destination": "/sys",
        "type": "none",
        "source": "/sys",
        "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
    }
    for mount in spec["mounts"]:
        for option in mount.get("options", []):
            assert not option.startswith(("gid=", "uid="))
    assert len(spec["mounts"]) == len(default_spec()["mounts"])


@pytest.mark.parametrize("rootless", [False, True])
def test_output_passes_validation(rootless: bool) -> None:
    spec = parse_spec(default_spec(rootless=rootless), "/bundle")
    assert spec.root.path == "/bundle/rootfs"
    assert spec.root.readonly is True
    assert spec.process is not None
    assert spec.process.terminal is True
    assert spec.hostname == "pysandbox"
    assert (spec.linux.namespace("user") is not None) is rootless
    if rootless:
        assert spec.linux.namespace("network") is None
        assert spec.linux.resources is None
    else:
        assert spec.linux.namespace("network") == Namespace("network")


def test_write_spec(tmp_path: Path) -> None:
    path = write_spec(tmp_path, default_spec(["true"]))
    assert path == tmp_path / "config.json"
    text = path.read_text()
    assert text.startswith('{\n  "ociVersion": "1.2.0",\n')
    assert json.loads(text)["process"]["args"] == ["true"]


def test_write_spec_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileExistsError, match=r"^File config\.json exists\. Remove it first\.$"):
        write_spec(tmp_path, default_spec())
    assert (tmp_path / "config.json").read_text() == "{}"
