"""The runtime-spec features document."""

from __future__ import annotations

import json

import pytest

from pysandbox import __version__
from pysandbox.oci import kernel
from pysandbox.oci.features import MOUNT_OPTIONS, features_document


def test_is_json_with_the_spec_field_names() -> None:
    doc = json.loads(json.dumps(features_document()))
    assert set(doc) == {
        "ociVersionMin",
        "ociVersionMax",
        "hooks",
        "mountOptions",
        "linux",
        "annotations",
    }
    assert doc["ociVersionMin"] == "1.0.0"
    assert doc["ociVersionMax"] == "1.2.0"
    linux = doc["linux"]
    assert set(linux) == {
        "namespaces",
        "capabilities",
        "cgroup",
        "seccomp",
        "apparmor",
        "selinux",
        "intelRdt",
        "mountExtensions",
    }
    assert linux["cgroup"] == {
        "v1": True,
        "v2": True,
        "systemd": False,
        "systemdUser": False,
        "rdma": False,
    }
    assert set(linux["seccomp"]) == {
        "enabled",
        "actions",
        "operators",
        "archs",
        "knownFlags",
        "supportedFlags",
    }
    assert linux["apparmor"] == {"enabled": False}
    assert linux["selinux"] == {"enabled": False}
    assert linux["intelRdt"] == {"enabled": False}
    assert linux["mountExtensions"] == {"idmap": {"enabled": False}}
    assert doc["annotations"] == {"io.github.pysandbox.version": __version__}


def test_hooks_and_namespaces() -> None:
    doc = features_document()
    assert doc["hooks"] == [
        "prestart",
        "createRuntime",
        "createContainer",
        "startContainer",
        "poststart",
        "poststop",
    ]
    assert set(doc["linux"]["namespaces"]) >= {
        "cgroup",
        "ipc",
        "mount",
        "network",
        "pid",
        "user",
        "uts",
    }


def test_capabilities_stop_at_the_kernels_last() -> None:
    caps = features_document()["linux"]["capabilities"]
    assert caps[0] == "CAP_CHOWN"
    assert len(caps) == min(kernel.cap_last_cap() + 1, len(kernel.CAPABILITIES))
    assert all(c.startswith("CAP_") for c in caps)


def test_seccomp_lists() -> None:
    sec = features_document()["linux"]["seccomp"]
    assert sec["enabled"] is True
    assert {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_NOTIFY"} <= set(
        sec["actions"]
    )
    assert {"SCMP_CMP_EQ", "SCMP_CMP_MASKED_EQ"} <= set(sec["operators"])
    assert "SCMP_ARCH_X86_64" in sec["archs"]
    assert set(sec["supportedFlags"]) <= set(sec["knownFlags"])
    for key in ("actions", "operators", "archs", "knownFlags", "supportedFlags"):
        assert all(isinstance(x, str) for x in sec[key])
        assert len(set(sec[key])) == len(sec[key])


def test_mount_options_are_all_recognized_by_rootfs() -> None:
    rootfs = pytest.importorskip("pysandbox.oci.rootfs")
    for opt in MOUNT_OPTIONS:
        parsed = rootfs.parse_mount_options([opt])
        assert parsed.data == "", f"{opt} would be passed to mount(2) as data"
    assert len(set(MOUNT_OPTIONS)) == len(MOUNT_OPTIONS)
