"""config.json model and validation: real client configs, and every error path."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci.config import (
    Capabilities,
    ConfigError,
    IdMapping,
    Namespace,
    Rlimit,
    User,
    load_bundle,
    parse_process,
    parse_resources,
    parse_spec,
)

SPECS = Path(__file__).resolve().parents[2] / ".." / "shared" / "reference" / "specs"
CLIENT_CONFIGS = [
    "docker-run-config.json",
    "podman-run-config.json",
    "ctr-run-config.json",
    "cri-sandbox-config.json",
    "cri-container-config.json",
]


def reference(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SPECS / name).read_text())
    return data


def minimal() -> dict[str, Any]:
    return {
        "ociVersion": "1.2.0",
        "root": {"path": "rootfs"},
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
        "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}]},
    }


# --- the real client configs -------------------------------------------------


@pytest.mark.parametrize("name", CLIENT_CONFIGS)
def test_client_config_parses(name: str) -> None:
    spec = parse_spec(reference(name), "/b")
    assert spec.oci_version == "1.0.2-dev"
    assert spec.process is not None
    assert spec.process.args
    assert spec.root.path.startswith("/")
    assert spec.mounts[0].destination == "/proc"
    assert spec.linux.resources is not None
    assert spec.linux.resources["devices"][0] == {"allow": False, "access": "rwm"}
    assert spec.raw["ociVersion"] == "1.0.2-dev"


def test_docker_config_values() -> None:
    spec = parse_spec(reference("docker-run-config.json"), "/b")
    assert spec.linux.cgroups_path == (
        "/docker/14254bb6b67193723691ee3fe7ca4efd2b225c67fc2ee05a70a771f5870f1f7f"
    )
    assert spec.hostname == "14254bb6b671"
    assert spec.process is not None
    assert spec.process.oom_score_adj == 0
    assert spec.process.user.additional_gids == [0]
    assert spec.process.capabilities is not None
    assert len(spec.process.capabilities.bounding) == 14
    assert spec.process.capabilities.ambient == []
    assert spec.linux.sysctl["net.ipv4.ping_group_range"] == "0 2147483647"
    assert spec.linux.seccomp is not None
    assert spec.linux.seccomp["defaultAction"] == "SCMP_ACT_ERRNO"
    assert [ns.type for ns in spec.linux.namespaces] == ["mount", "network", "uts", "pid", "ipc"]
    assert "/proc/kcore" in spec.linux.masked_paths
    assert "/proc/sys" in spec.linux.readonly_paths
    assert spec.hooks.prestart == []

    # An absolute root.path is kept as it is ($WORK is a placeholder in the file).
    data = reference("docker-run-config.json")
    data["root"]["path"] = data["root"]["path"].replace("$WORK", "/work")
    assert parse_spec(data, "/b").root.path == data["root"]["path"]


def test_podman_config_values() -> None:
    spec = parse_spec(reference("podman-run-config.json"), "/b")
    assert spec.process is not None
    assert spec.process.rlimits == [
        Rlimit("RLIMIT_NOFILE", 1024, 1024),
        Rlimit("RLIMIT_NPROC", 1024, 1024),
    ]
    assert spec.process.user == User(uid=0, gid=0, umask=18)
    assert spec.linux.resources is not None
    assert spec.linux.resources["pids"] == {"limit": 2048}
    assert spec.annotations
    assert any(m.destination == "/etc/hostname" and m.type == "bind" for m in spec.mounts)


def test_cri_container_joins_sandbox_namespaces() -> None:
    spec = parse_spec(reference("cri-container-config.json"), "/b")
    assert spec.linux.namespace("pid") == Namespace("pid", "/proc/20327/ns/pid")
    assert spec.linux.namespace("network") == Namespace("network", "/proc/20327/ns/net")
    assert spec.linux.namespace("mount") == Namespace("mount", None)
    assert spec.linux.namespace("user") is None
    assert spec.annotations["io.kubernetes.cri.container-type"] == "container"


def test_cri_sandbox_values() -> None:
    spec = parse_spec(reference("cri-sandbox-config.json"), "/b")
    assert spec.root.readonly is True
    assert spec.root.path == "/b/rootfs"
    assert spec.process is not None
    assert spec.process.args == ["/pause"]
    assert spec.process.no_new_privileges is True
    assert spec.linux.resources is not None
    assert spec.linux.resources["cpu"] == {"shares": 2}
    assert spec.annotations["io.kubernetes.cri.container-type"] == "sandbox"


def test_ctr_config_values() -> None:
    spec = parse_spec(reference("ctr-run-config.json"), "/b")
    assert spec.linux.cgroups_path == "/default/ctr-14506"
    assert spec.process is not None
    assert spec.process.args == ["echo", "hi"]
    assert spec.mounts[-1].destination == "/run"
    assert spec.mounts[-1].options == ["nosuid", "strictatime", "mode=755", "size=65536k"]


def test_docker_exec_process() -> None:
    process = parse_process(reference("docker-exec-process.json"))
    assert process.args[:2] == ["sh", "-c"]
    assert process.cwd == "/"
    assert process.terminal is False
    assert process.env[1] == "HOSTNAME=wubbalubba"
    assert process.capabilities is not None
    assert "CAP_SYS_CHROOT" in process.capabilities.effective
    assert process.raw["cwd"] == "/"


def test_parse_process_error_uses_given_prefix() -> None:
    data = reference("docker-exec-process.json")
    data["args"] = []
    with pytest.raises(ConfigError) as err:
        parse_process(data, "exec.json")
    assert err.value.path == "exec.json.args"


# --- model details -----------------------------------------------------------


def test_minimal_defaults() -> None:
    spec = parse_spec(minimal(), "/srv/b")
    assert spec.bundle == "/srv/b"
    assert spec.hostname is None
    assert spec.mounts == []
    assert spec.annotations == {}
    assert spec.linux.uid_mappings == []
    assert spec.linux.resources is None
    assert spec.linux.seccomp is None
    assert spec.linux.personality is None
    assert spec.process is not None
    assert spec.process.capabilities is None
    assert spec.process.console_size is None
    assert spec.process.env == []
    assert spec.root.readonly is False


def test_relative_bundle_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path)
    spec = parse_spec(minimal(), "b")
    assert spec.bundle == str(tmp_path / "b")
    assert spec.root.path == os.path.join(os.path.realpath(tmp_path / "b"), "rootfs")


def test_root_path_resolves_bundle_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to("real")
    spec = parse_spec(minimal(), str(tmp_path / "link"))
    assert spec.root.path == str(tmp_path.resolve() / "real" / "rootfs")


def test_process_may_be_absent() -> None:
    data = minimal()
    del data["process"]
    assert parse_spec(data, "/b").process is None


def test_unknown_fields_ignored() -> None:
    data = minimal()
    data["futureField"] = {"x": 1}
    data["process"]["futureProcessField"] = [1]
    data["process"]["user"]["futureUserField"] = True
    data["linux"]["intelRdt"] = {"closID": "x"}
    data["linux"]["namespaces"][0]["futureNsField"] = 1
    data["mounts"] = [{"destination": "/x", "futureMountField": 1}]
    spec = parse_spec(data, "/b")
    assert spec.raw["futureField"] == {"x": 1}
    assert spec.linux.namespaces[0] == Namespace("pid")


def test_full_process_fields() -> None:
    data = minimal()
    data["process"].update(
        terminal=True,
        consoleSize={"height": 24, "width": 80},
        user={"uid": 1000, "gid": 100, "umask": 0o22, "additionalGids": [5, 6], "username": "u"},
        capabilities={"bounding": ["CAP_KILL"], "ambient": ["CAP_KILL"]},
        apparmorProfile="p",
        selinuxLabel="l",
        oomScoreAdj=-5,
    )
    process = parse_process(data["process"])
    assert process.terminal is True
    assert process.console_size is not None
    assert (process.console_size.height, process.console_size.width) == (24, 80)
    assert process.user == User(1000, 100, 0o22, [5, 6], "u")
    assert process.capabilities == Capabilities(bounding=["CAP_KILL"], ambient=["CAP_KILL"])
    assert (process.apparmor_profile, process.selinux_label) == ("p", "l")
    assert process.oom_score_adj == -5


def test_full_linux_fields() -> None:
    data = minimal()
    data["linux"].update(
        namespaces=[{"type": "user"}, {"type": "network", "path": "/run/netns/x"}],
        uidMappings=[{"containerID": 0, "hostID": 100000, "size": 65536}],
        gidMappings=[{"containerID": 0, "hostID": 100000, "size": 65536}],
        devices=[
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666},
            {"path": "/dev/fifo", "type": "p"},
        ],
        rootfsPropagation="rslave",
        mountLabel="m",
        personality={"domain": "LINUX32", "flags": []},
        sysctl={"net.ipv4.ip_forward": "1"},
    )
    data.pop("hostname", None)
    spec = parse_spec(data, "/b")
    linux = spec.linux
    assert linux.uid_mappings == [IdMapping(0, 100000, 65536)]
    assert linux.devices[0].file_mode == 0o666
    assert (linux.devices[1].major, linux.devices[1].minor) == (0, 0)
    assert linux.rootfs_propagation == "rslave"
    assert linux.personality is not None
    assert linux.personality.domain == "LINUX32"
    assert linux.namespace("network") == Namespace("network", "/run/netns/x")


def test_hooks_parsed() -> None:
    data = minimal()
    hook = {"path": "/bin/true", "args": ["true", "x"], "env": ["A=1"], "timeout": 5}
    data["hooks"] = {
        "prestart": [hook],
        "createRuntime": [hook, {"path": "/bin/false"}],
        "createContainer": [hook],
        "startContainer": [hook],
        "poststart": [hook],
        "poststop": [hook],
    }
    hooks = parse_spec(data, "/b").hooks
    assert len(hooks.create_runtime) == 2
    assert hooks.create_runtime[1].args == []
    assert hooks.create_runtime[1].timeout is None
    for kind in (hooks.prestart, hooks.create_container, hooks.start_container, hooks.poststop):
        assert kind[0].timeout == 5
    assert hooks.poststart[0].env == ["A=1"]


def test_error_str_format() -> None:
    err = ConfigError("process.args", "must be a non-empty list")
    assert str(err) == "process.args: must be a non-empty list"
    assert (err.path, err.reason) == ("process.args", "must be a non-empty list")


# --- every validation error --------------------------------------------------

Mutator = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutator:
    """A mutator that sets a dotted path ("process.user.uid") to value."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str) -> Mutator:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[key]
        del node[last]

    return mutate


NS = [{"type": "pid"}, {"type": "mount"}, {"type": "uts"}]
ERRORS: list[tuple[Mutator, str, str]] = [
    (_delete("ociVersion"), "ociVersion", "is required"),
    (_set("ociVersion", 1), "ociVersion", "must be a string"),
    (_set("ociVersion", "2.0.0"), "ociVersion", 'unsupported version "2.0.0"'),
    (_set("windows", {}), "platform", 'found a "windows" section; only linux is supported'),
    (_set("solaris", {}), "platform", 'found a "solaris" section'),
    (_set("vm", {}), "platform", 'found a "vm" section'),
    (_delete("linux"), "platform", "no linux section; only linux is supported"),
    (_set("linux", []), "linux", "must be an object"),
    (_delete("root"), "root.path", "is required"),
    (_set("root", {"path": ""}), "root.path", "is required"),
    (_set("root.path", 3), "root.path", "must be a string"),
    (_set("root.readonly", "yes"), "root.readonly", "must be a boolean"),
    (_set("process", "sh"), "process", "must be an object"),
    (_set("process.args", []), "process.args", "must be a non-empty list"),
    (_delete("process.args"), "process.args", "must be a non-empty list"),
    (_set("process.args", "sh"), "process.args", "must be a list"),
    (_set("process.args", ["sh", 1]), "process.args[1]", "must be a string"),
    (_set("process.env", ["A=1", None]), "process.env[1]", "must be a string"),
    (_delete("process.cwd"), "process.cwd", "is required"),
    (_set("process.cwd", "tmp"), "process.cwd", "must be an absolute path"),
    (_set("process.terminal", 1), "process.terminal", "must be a boolean"),
    (_set("process.consoleSize", {"height": 1}), "process.consoleSize.width", "is required"),
    (_delete("process.user"), "process.user", "is required"),
    (_delete("process.user.uid"), "process.user.uid", "is required"),
    (_delete("process.user.gid"), "process.user.gid", "is required"),
    (_set("process.user.uid", -1), "process.user.uid", "must not be negative"),
    (_set("process.user.uid", "0"), "process.user.uid", "must be an integer"),
    (_set("process.user.uid", True), "process.user.uid", "must be an integer"),
    (_set("process.user.uid", 1.5), "process.user.uid", "must be an integer"),
    (_set("process.user.gid", 2**32), "process.user.gid", "out of range"),
    (_set("process.user.umask", 0o1000), "process.user.umask", "must be at most 0777"),
    (
        _set("process.user.additionalGids", [1, -2]),
        "process.user.additionalGids[1]",
        "must not be negative",
    ),
    (
        _set("process.capabilities", {"bounding": ["CAP_KILL", "CAP_CHOWN", "x", "CAP_FOO"]}),
        "process.capabilities.bounding[2]",
        'unknown capability "x"',
    ),
    (
        _set("process.capabilities", {"ambient": ["CAP_KILL", "CAP_CHOWN", "CAP_X", "CAP_FOO"]}),
        "process.capabilities.ambient[2]",
        'unknown capability "CAP_X"',
    ),
    (
        _set("process.capabilities", {"effective": "CAP_KILL"}),
        "process.capabilities.effective",
        "must be a list",
    ),
    (
        _set("process.rlimits", [{"type": "NOFILE", "soft": 1, "hard": 1}]),
        "process.rlimits[0].type",
        'unknown rlimit "NOFILE"',
    ),
    (
        _set(
            "process.rlimits",
            [{"type": "RLIMIT_CORE", "soft": 0, "hard": 0}, {"type": "RLIMIT_CORE"}],
        ),
        "process.rlimits[1].type",
        'duplicate rlimit "RLIMIT_CORE"',
    ),
    (
        _set("process.rlimits", [{"type": "RLIMIT_NOFILE", "soft": 2048, "hard": 1024}]),
        "process.rlimits[0]",
        "soft limit 2048 exceeds hard limit 1024",
    ),
    (
        _set("process.rlimits", [{"type": "RLIMIT_NOFILE", "soft": 1}]),
        "process.rlimits[0].hard",
        "is required",
    ),
    (_set("process.noNewPrivileges", "true"), "process.noNewPrivileges", "must be a boolean"),
    (_set("process.oomScoreAdj", 1001), "process.oomScoreAdj", "must be between -1000 and 1000"),
    (_set("process.apparmorProfile", 1), "process.apparmorProfile", "must be a string"),
    (_set("hostname", 5), "hostname", "must be a string"),
    (_set("mounts", {}), "mounts", "must be a list"),
    (_set("mounts", [{"type": "tmpfs"}]), "mounts[0].destination", "is required"),
    (_set("mounts", [{"destination": ""}]), "mounts[0].destination", "is required"),
    (
        _set("mounts", [{"destination": "/a"}, {"destination": "/b", "options": "ro"}]),
        "mounts[1].options",
        "must be a list",
    ),
    (_set("mounts", [{"destination": "/a", "source": 1}]), "mounts[0].source", "must be a string"),
    (_set("annotations", {"a": 1}), 'annotations["a"]', "must be a string"),
    (_set("hooks", []), "hooks", "must be an object"),
    (_set("hooks", {"prestart": [{}]}), "hooks.prestart[0].path", "is required"),
    (
        _set("hooks", {"poststop": [{"path": "/a"}, {"path": "hook"}]}),
        "hooks.poststop[1].path",
        "must be an absolute path",
    ),
    (
        _set("hooks", {"createRuntime": [{"path": "/a", "timeout": 0}]}),
        "hooks.createRuntime[0].timeout",
        "must be greater than zero",
    ),
    (
        _set("hooks", {"startContainer": [{"path": "/a", "timeout": -3}]}),
        "hooks.startContainer[0].timeout",
        "must be greater than zero",
    ),
    (
        _set("hooks", {"createContainer": [{"path": "/a", "args": [1]}]}),
        "hooks.createContainer[0].args[0]",
        "must be a string",
    ),
    (
        _set("linux.namespaces", [*NS, {"type": "net"}]),
        "linux.namespaces[3].type",
        'unknown namespace type "net"',
    ),
    (
        _set("linux.namespaces", [{"type": "pid"}, {"type": "uts"}, {"type": "pid"}]),
        "linux.namespaces[2].type",
        'duplicate namespace type "pid"',
    ),
    (_set("linux.namespaces", [{"path": "/x"}]), "linux.namespaces[0].type", "is required"),
    (
        _set("linux.namespaces", [{"type": "ipc", "path": "proc/1/ns/ipc"}]),
        "linux.namespaces[0].path",
        "must be an absolute path",
    ),
    (
        _set("linux.uidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}]),
        "linux.uidMappings",
        "set without a user namespace",
    ),
    (
        _set("linux.gidMappings", [{"containerID": 0, "hostID": 1000, "size": 1}]),
        "linux.gidMappings",
        "set without a user namespace",
    ),
    (
        _set("linux.namespaces", [*NS, {"type": "user"}]),
        "linux.uidMappings",
        "a new user namespace needs mappings",
    ),
    (
        _set("linux.uidMappings", [{"containerID": 0, "hostID": -1, "size": 1}]),
        "linux.uidMappings[0].hostID",
        "must not be negative",
    ),
    (
        _set("linux.uidMappings", [{"containerID": 0, "hostID": 1, "size": 0}]),
        "linux.uidMappings[0].size",
        "must be greater than zero",
    ),
    (
        _set("linux.devices", [{"path": "/dev/x", "type": "x", "major": 1, "minor": 1}]),
        "linux.devices[0].type",
        '"x" is not one of c, b, u, p',
    ),
    (
        _set("linux.devices", [{"path": "dev/x", "type": "c", "major": 1, "minor": 1}]),
        "linux.devices[0].path",
        "must be an absolute path",
    ),
    (
        _set("linux.devices", [{"path": "/dev/x", "type": "b", "minor": 1}]),
        "linux.devices[0].major",
        "is required",
    ),
    (
        _set("linux.devices", [{"path": "/dev/x", "type": "c", "major": 1, "minor": "1"}]),
        "linux.devices[0].minor",
        "must be an integer",
    ),
    (
        _set("linux.devices", [{"path": "/dev/x", "type": "u", "major": 1, "minor": 1, "uid": -1}]),
        "linux.devices[0].uid",
        "must not be negative",
    ),
    (_set("linux.cgroupsPath", 1), "linux.cgroupsPath", "must be a string"),
    (
        _set("linux.rootfsPropagation", "recursive"),
        "linux.rootfsPropagation",
        '"recursive" is not one of private, rprivate, rshared, rslave, runbindable, shared, '
        "slave, unbindable",
    ),
    (_set("linux.maskedPaths", ["/proc/kcore", 1]), "linux.maskedPaths[1]", "must be a string"),
    (
        _set("linux.readonlyPaths", ["proc/sys"]),
        "linux.readonlyPaths[0]",
        "must be an absolute path",
    ),
    (
        _set("linux.sysctl", {"kernel.shmmax": 1}),
        'linux.sysctl["kernel.shmmax"]',
        "must be a string",
    ),
    (
        _set("linux.sysctl", {"net.ipv4.ip_forward": "1"}),
        'linux.sysctl["net.ipv4.ip_forward"]',
        "requires a network namespace",
    ),
    (
        _set("linux.sysctl", {"kernel.shmmax": "1"}),
        'linux.sysctl["kernel.shmmax"]',
        "requires a ipc namespace",
    ),
    (
        _set("linux.sysctl", {"vm.overcommit_memory": "1"}),
        'linux.sysctl["vm.overcommit_memory"]',
        "not a namespaced sysctl; setting it would change the host",
    ),
    (
        _set("linux.personality", {"domain": "SVR4"}),
        "linux.personality.domain",
        '"SVR4" is not one of LINUX, LINUX32',
    ),
    (_set("linux.personality", {"flags": []}), "linux.personality.domain", "is required"),
    (_set("linux.seccomp", []), "linux.seccomp", "must be an object"),
    (_set("linux.seccomp", {}), "linux.seccomp.defaultAction", "is required"),
    (
        _set("linux.seccomp", {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": {}}),
        "linux.seccomp.syscalls",
        "must be a list",
    ),
    (
        _set("linux.seccomp", {"defaultAction": "A", "syscalls": [{"action": "B"}]}),
        "linux.seccomp.syscalls[0].names",
        "is required",
    ),
    (
        _set("linux.seccomp", {"defaultAction": "A", "syscalls": [{"names": [], "action": "B"}]}),
        "linux.seccomp.syscalls[0].names",
        "must be a non-empty list",
    ),
    (
        _set("linux.seccomp", {"defaultAction": "A", "syscalls": [{"names": ["read", 0]}]}),
        "linux.seccomp.syscalls[0].names[1]",
        "must be a string",
    ),
    (
        _set("linux.seccomp", {"defaultAction": "A", "syscalls": [{"names": ["read"]}]}),
        "linux.seccomp.syscalls[0].action",
        "is required",
    ),
    (
        _set("linux.seccomp", {"defaultAction": "A", "listenerPath": "agent.sock"}),
        "linux.seccomp.listenerPath",
        "must be an absolute path",
    ),
    (_set("linux.resources", []), "linux.resources", "must be an object"),
    (
        _set("linux.resources", {"memory": {"limit": "1G"}}),
        "linux.resources.memory.limit",
        "must be an integer",
    ),
]


@pytest.mark.parametrize(("mutate", "path", "reason"), ERRORS, ids=[e[1] for e in ERRORS])
def test_validation_error(mutate: Mutator, path: str, reason: str) -> None:
    data = minimal()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_spec(data, "/b")
    assert err.value.path == path
    assert err.value.reason.startswith(reason)
    assert str(err.value) == f"{path}: {err.value.reason}"


@pytest.mark.parametrize("key", ["hostname", "domainname"])
def test_hostname_needs_uts_namespace(key: str) -> None:
    data = minimal()
    data[key] = "box"
    data["linux"]["namespaces"] = [{"type": "pid"}, {"type": "mount"}]
    with pytest.raises(ConfigError) as err:
        parse_spec(data, "/b")
    assert (err.value.path, err.value.reason) == (key, "requires a uts namespace")


def test_joined_user_namespace_needs_no_mappings() -> None:
    data = minimal()
    data["linux"]["namespaces"].append({"type": "user", "path": "/proc/1/ns/user"})
    assert parse_spec(data, "/b").linux.namespace("user") == Namespace("user", "/proc/1/ns/user")


@pytest.mark.parametrize(
    "kind", ["pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time"]
)
def test_every_namespace_type_can_be_joined(kind: str) -> None:
    data = minimal()
    data["linux"]["namespaces"] = [{"type": kind, "path": f"/proc/1/ns/{kind}"}]
    assert parse_spec(data, "/b").linux.namespaces == [Namespace(kind, f"/proc/1/ns/{kind}")]


def test_namespaced_sysctls_accepted() -> None:
    data = minimal()
    data["linux"]["namespaces"] += [{"type": "ipc"}, {"type": "network", "path": "/n"}]
    data["linux"]["sysctl"] = {
        "net.core.somaxconn": "1024",
        "kernel.shmmax": "1",
        "kernel.msgmax": "1",
        "fs.mqueue.queues_max": "1",
        "kernel.domainname": "x",
    }
    assert parse_spec(data, "/b").linux.sysctl["kernel.shmmax"] == "1"


def test_top_level_must_be_object() -> None:
    with pytest.raises(ConfigError) as err:
        parse_spec([], "/b")  # type: ignore[arg-type]
    assert (err.value.path, err.value.reason) == ("config.json", "must be an object")


# --- parse_resources ---------------------------------------------------------

FULL_RESOURCES: dict[str, Any] = {
    "memory": {
        "limit": 536870912,
        "reservation": -1,
        "swap": -1,
        "kernel": -1,
        "kernelTCP": 0,
        "swappiness": 60,
        "disableOOMKiller": False,
        "useHierarchy": True,
        "checkBeforeUpdate": True,
    },
    "cpu": {
        "shares": 1024,
        "quota": -1,
        "burst": 0,
        "period": 100000,
        "realtimeRuntime": 0,
        "realtimePeriod": 0,
        "cpus": "0-1",
        "mems": "0",
        "idle": 0,
    },
    "pids": {"limit": -1},
    "blockIO": {
        "weight": 0,
        "leafWeight": 10,
        "weightDevice": [{"major": 8, "minor": 0, "weight": 500, "leafWeight": 300}],
        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
        "throttleWriteBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}],
        "throttleReadIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}],
        "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 100}],
    },
    "hugepageLimits": [{"pageSize": "2MB", "limit": 209715200}],
    "devices": [
        {"allow": False, "access": "rwm"},
        {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"},
        {"allow": True, "type": "c", "major": 136, "access": "rwm"},
        {"allow": True, "type": "a", "major": -1, "minor": -1, "access": "m"},
    ],
    "network": {"classID": 1048577, "priorities": [{"name": "eth0", "priority": 500}]},
    "rdma": {"mlx5_1": {"hcaHandles": 3, "hcaObjects": 10000}},
    "unified": {"memory.high": "1G", "io.max": "8:0 rbps=1048576"},
    "futureController": {"anything": [1, 2]},
}


def test_parse_resources_full() -> None:
    resources = copy.deepcopy(FULL_RESOURCES)
    assert parse_resources(resources) == FULL_RESOURCES
    assert parse_resources(resources) is resources


def test_parse_resources_update_document_prefix() -> None:
    with pytest.raises(ConfigError) as err:
        parse_resources({"pids": {"limit": "max"}}, "resources")
    assert str(err.value) == "resources.pids.limit: must be an integer"


RESOURCE_ERRORS: list[tuple[dict[str, Any], str, str]] = [
    ({"memory": []}, "linux.resources.memory", "must be an object"),
    ({"memory": {"swap": 1.5}}, "linux.resources.memory.swap", "must be an integer"),
    ({"memory": {"disableOOMKiller": 0}}, "linux.resources.memory.disableOOMKiller", "must be a"),
    ({"cpu": {"shares": -2}}, "linux.resources.cpu.shares", "must not be negative"),
    ({"cpu": {"cpus": 3}}, "linux.resources.cpu.cpus", "must be a string"),
    ({"cpu": {"quota": "max"}}, "linux.resources.cpu.quota", "must be an integer"),
    ({"pids": {"limit": True}}, "linux.resources.pids.limit", "must be an integer"),
    ({"blockIO": {"weight": -1}}, "linux.resources.blockIO.weight", "must not be negative"),
    (
        {"blockIO": {"weightDevice": [{"major": 8}]}},
        "linux.resources.blockIO.weightDevice[0].minor",
        "is required",
    ),
    (
        {"blockIO": {"throttleReadBpsDevice": [{"major": 8, "minor": 0}]}},
        "linux.resources.blockIO.throttleReadBpsDevice[0].rate",
        "is required",
    ),
    (
        {"blockIO": {"throttleWriteIOPSDevice": {}}},
        "linux.resources.blockIO.throttleWriteIOPSDevice",
        "must be a list",
    ),
    (
        {"hugepageLimits": [{"pageSize": "2MB"}]},
        "linux.resources.hugepageLimits[0].limit",
        "is required",
    ),
    (
        {"hugepageLimits": [{"pageSize": 2, "limit": 1}]},
        "linux.resources.hugepageLimits[0].pageSize",
        "must be a string",
    ),
    ({"devices": [{"access": "rwm"}]}, "linux.resources.devices[0].allow", "is required"),
    (
        {"devices": [{"allow": True, "type": "p"}]},
        "linux.resources.devices[0].type",
        '"p" is not one of a, b, c',
    ),
    (
        {"devices": [{"allow": True, "access": "rwx"}]},
        "linux.resources.devices[0].access",
        '"rwx" may only contain r, w, m',
    ),
    (
        {"devices": [{"allow": True, "major": "1"}]},
        "linux.resources.devices[0].major",
        "must be an integer",
    ),
    (
        {"network": {"priorities": [{"name": "eth0"}]}},
        "linux.resources.network.priorities[0].priority",
        "is required",
    ),
    ({"network": {"classID": -1}}, "linux.resources.network.classID", "must not be negative"),
    ({"rdma": {"mlx": {"hcaHandles": "3"}}}, 'linux.resources.rdma["mlx"].hcaHandles', "must be"),
    ({"unified": {"memory.max": 1}}, 'linux.resources.unified["memory.max"]', "must be a string"),
    ({"unified": []}, "linux.resources.unified", "must be an object"),
]


@pytest.mark.parametrize(
    ("resources", "path", "reason"), RESOURCE_ERRORS, ids=[e[1] for e in RESOURCE_ERRORS]
)
def test_parse_resources_errors(resources: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_resources(resources)
    assert err.value.path == path
    assert err.value.reason.startswith(reason)


# --- load_bundle -------------------------------------------------------------


def make_bundle(tmp_path: Path, config: Any, rootfs: bool = True) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    if rootfs:
        (bundle / "rootfs").mkdir()
    text = config if isinstance(config, str) else json.dumps(config)
    (bundle / "config.json").write_text(text)
    return bundle


def test_load_bundle_ok(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, minimal())
    spec = load_bundle(str(bundle))
    assert spec.bundle == str(bundle)
    assert spec.root.path == str(bundle.resolve() / "rootfs")


def test_load_bundle_reference_config(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, reference("cri-sandbox-config.json"))
    spec = load_bundle(str(bundle))
    assert spec.root.readonly is True


def test_load_bundle_missing_dir(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError) as err:
        load_bundle(missing)
    assert str(err.value) == f"bundle: {missing}: no such directory"


def test_load_bundle_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_bundle(str(tmp_path))
    assert err.value.path == "config.json"
    assert err.value.reason == f"{tmp_path}/config.json: no such file"


def test_load_bundle_config_is_a_directory(tmp_path: Path) -> None:
    (tmp_path / "config.json").mkdir()
    with pytest.raises(ConfigError) as err:
        load_bundle(str(tmp_path))
    assert err.value.path == "config.json"
    assert "Is a directory" in err.value.reason


def test_load_bundle_bad_json(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, '{\n  "ociVersion": "1.0.0",\n  "root": }\n')
    with pytest.raises(ConfigError) as err:
        load_bundle(str(bundle))
    assert err.value.path == "config.json"
    assert err.value.reason.startswith("invalid JSON at line 3 column 11: ")


def test_load_bundle_not_utf8(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "")
    (bundle / "config.json").write_bytes(b'{"ociVersion": "\xff"}')
    with pytest.raises(ConfigError) as err:
        load_bundle(str(bundle))
    assert err.value.reason == "not valid UTF-8 at byte 16"


def test_load_bundle_top_level_not_object(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "[1, 2]")
    with pytest.raises(ConfigError) as err:
        load_bundle(str(bundle))
    assert str(err.value) == "config.json: must be a JSON object"


def test_load_bundle_missing_rootfs(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, minimal(), rootfs=False)
    with pytest.raises(ConfigError) as err:
        load_bundle(str(bundle))
    assert str(err.value) == f"root.path: {bundle.resolve()}/rootfs: no such directory"


def test_load_bundle_validates(tmp_path: Path) -> None:
    data = minimal()
    data["process"]["args"] = []
    bundle = make_bundle(tmp_path, data)
    with pytest.raises(ConfigError) as err:
        load_bundle(str(bundle))
    assert str(err.value) == "process.args: must be a non-empty list"


def test_load_bundle_absolute_root_path(tmp_path: Path) -> None:
    rootfs = tmp_path / "elsewhere"
    rootfs.mkdir()
    data = minimal()
    data["root"]["path"] = str(rootfs)
    spec = load_bundle(str(make_bundle(tmp_path, data, rootfs=False)))
    assert spec.root.path == str(rootfs)
