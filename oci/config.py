"""Typed model of an OCI runtime-spec 1.2 config.json, and its validation.

Everything is checked before anything is created, so a bad config never leaves
half a container behind. Errors name the JSON field (`linux.namespaces[2].type`)
because that is what a person fixing the file needs. Unknown fields are ignored,
as the spec requires; the raw dicts are kept for the parts other modules read
directly (hooks' state, annotations, seccomp, resources).

Import cost matters (every `create` parses a config), so this module imports
only the stdlib basics; the kernel tables are imported lazily where needed.
"""

from __future__ import annotations

import os

from pysandbox.oci import jsonio
from pysandbox.oci.records import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class ConfigError(Exception):
    """A config.json (or --process file) that cannot be run as written."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


# --- the model ---------------------------------------------------------------
# Every class has a docstring: without one, @dataclass builds one with
# inspect.signature at import time, which is a measurable part of start-up.


@record
class Root:
    """root: the container's root filesystem (path made absolute)."""

    path: str
    readonly: bool = False


@record
class ConsoleSize:
    """process.consoleSize: the initial terminal size."""

    height: int
    width: int


@record
class User:
    """process.user: the ids the process runs as."""

    uid: int
    gid: int
    umask: int | None = None
    additional_gids: list[int] = field(default_factory=list)
    username: str | None = None


@record
class Capabilities:
    """process.capabilities: the five capability sets, by name."""

    bounding: list[str] = field(default_factory=list)
    effective: list[str] = field(default_factory=list)
    inheritable: list[str] = field(default_factory=list)
    permitted: list[str] = field(default_factory=list)
    ambient: list[str] = field(default_factory=list)


@record
class Rlimit:
    """process.rlimits[]: one resource limit."""

    type: str
    soft: int
    hard: int


@record
class Process:
    """process: what to run (also the `exec --process` document)."""

    terminal: bool = False
    console_size: ConsoleSize | None = None
    user: User = field(default_factory=lambda: User(0, 0))
    args: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    capabilities: Capabilities | None = None
    rlimits: list[Rlimit] = field(default_factory=list)
    no_new_privileges: bool = False
    apparmor_profile: str | None = None
    selinux_label: str | None = None
    oom_score_adj: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)


@record
class Mount:
    """mounts[]: one mount, in order."""

    destination: str
    type: str | None = None
    source: str | None = None
    options: list[str] = field(default_factory=list)


@record
class Hook:
    """hooks.*[]: one hook command."""

    path: str
    args: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    timeout: int | None = None


@record
class Hooks:
    """hooks: the commands run at each lifecycle point."""

    prestart: list[Hook] = field(default_factory=list)
    create_runtime: list[Hook] = field(default_factory=list)
    create_container: list[Hook] = field(default_factory=list)
    start_container: list[Hook] = field(default_factory=list)
    poststart: list[Hook] = field(default_factory=list)
    poststop: list[Hook] = field(default_factory=list)


@record
class Namespace:
    """linux.namespaces[]: a namespace to create, or join when path is set."""

    type: str  # the OCI name: pid network mount ipc uts user cgroup time
    path: str | None = None


@record
class IdMapping:
    """linux.uidMappings[] / gidMappings[]: one id range of a user namespace."""

    container_id: int
    host_id: int
    size: int


@record
class Device:
    """linux.devices[]: a device node to create in the container."""

    path: str
    type: str
    major: int = 0
    minor: int = 0
    file_mode: int | None = None
    uid: int | None = None
    gid: int | None = None


@record
class Personality:
    """linux.personality: the execution domain."""

    domain: str
    flags: list[str] = field(default_factory=list)


@record
class Linux:
    """linux: the Linux-specific part of the config."""

    namespaces: list[Namespace] = field(default_factory=list)
    uid_mappings: list[IdMapping] = field(default_factory=list)
    gid_mappings: list[IdMapping] = field(default_factory=list)
    devices: list[Device] = field(default_factory=list)
    cgroups_path: str | None = None
    resources: dict[str, Any] | None = None
    sysctl: dict[str, str] = field(default_factory=dict)
    seccomp: dict[str, Any] | None = None
    rootfs_propagation: str | None = None
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)
    mount_label: str | None = None
    personality: Personality | None = None

    def namespace(self, type: str) -> Namespace | None:
        """The entry for an OCI namespace type, or None if it is not listed."""
        for ns in self.namespaces:
            if ns.type == type:
                return ns
        return None


@record
class Spec:
    """A validated config.json."""

    oci_version: str
    bundle: str
    root: Root
    process: Process | None = None
    hostname: str | None = None
    domainname: str | None = None
    mounts: list[Mount] = field(default_factory=list)
    hooks: Hooks = field(default_factory=Hooks)
    annotations: dict[str, str] = field(default_factory=dict)
    linux: Linux = field(default_factory=Linux)
    raw: dict[str, Any] = field(default_factory=dict)


# --- typed field readers -----------------------------------------------------
# Each takes the value and its field path; JSON booleans are not integers here
# (Python's bool is an int subclass, JSON's true is not a number).


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(where, "must be an object")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(where, "must be a string")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, "must be a boolean")
    return value


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(where, "must be an integer")
    return value


def _uint(value: Any, where: str) -> int:
    number = _int(value, where)
    if number < 0:
        raise ConfigError(where, "must not be negative")
    return number


def _id(value: Any, where: str) -> int:
    """A uid/gid: 0 .. 2^32-2 (2^32-1 is the kernel's 'no id')."""
    number = _uint(value, where)
    if number >= 0xFFFFFFFF:
        raise ConfigError(where, "out of range")
    return number


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(where, "must be a list")
    return value


def _str_list(value: Any, where: str) -> list[str]:
    return [_str(item, f"{where}[{i}]") for i, item in enumerate(_list(value, where))]


def _str_map(value: Any, where: str) -> dict[str, str]:
    for key, item in _obj(value, where).items():
        _str(item, f'{where}["{key}"]')
    return dict(value)


def _abs_path(value: Any, where: str) -> str:
    path = _str(value, where)
    if not path.startswith("/"):
        raise ConfigError(where, "must be an absolute path")
    return path


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _opt(data: dict[str, Any], key: str, where: str, read: Any) -> Any:
    """data[key] read with `read` at `where.key`, or None when absent/null."""
    value = data.get(key)
    return None if value is None else read(value, _join(where, key))


def _required(data: dict[str, Any], key: str, where: str) -> Any:
    if data.get(key) is None:
        raise ConfigError(_join(where, key), "is required")
    return data[key]


# --- process -----------------------------------------------------------------

# Every limit setrlimit(2) knows; anything else is a typo or another OS.
_RLIMITS = frozenset(
    (
        "RLIMIT_CPU",
        "RLIMIT_FSIZE",
        "RLIMIT_DATA",
        "RLIMIT_STACK",
        "RLIMIT_CORE",
        "RLIMIT_RSS",
        "RLIMIT_NPROC",
        "RLIMIT_NOFILE",
        "RLIMIT_MEMLOCK",
        "RLIMIT_AS",
        "RLIMIT_LOCKS",
        "RLIMIT_SIGPENDING",
        "RLIMIT_MSGQUEUE",
        "RLIMIT_NICE",
        "RLIMIT_RTPRIO",
        "RLIMIT_RTTIME",
    )
)
_CAP_SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")


def parse_process(data: Any, where: str = "process") -> Process:
    """Validate a process object (config.json's, or an `exec --process` file)."""
    data = _obj(data, where)
    args = _opt(data, "args", where, _str_list) or []
    if not args:
        raise ConfigError(f"{where}.args", "must be a non-empty list")
    cwd = _str(_required(data, "cwd", where), f"{where}.cwd")
    if not cwd.startswith("/"):
        raise ConfigError(f"{where}.cwd", "must be an absolute path")
    oom = _opt(data, "oomScoreAdj", where, _int)
    if oom is not None and not -1000 <= oom <= 1000:
        raise ConfigError(f"{where}.oomScoreAdj", "must be between -1000 and 1000")
    return Process(
        terminal=bool(_opt(data, "terminal", where, _bool)),
        console_size=_opt(data, "consoleSize", where, _console_size),
        user=_user(_required(data, "user", where), f"{where}.user"),
        args=args,
        env=_opt(data, "env", where, _str_list) or [],
        cwd=cwd,
        capabilities=_opt(data, "capabilities", where, _capabilities),
        rlimits=_opt(data, "rlimits", where, _rlimits) or [],
        no_new_privileges=bool(_opt(data, "noNewPrivileges", where, _bool)),
        apparmor_profile=_opt(data, "apparmorProfile", where, _str),
        selinux_label=_opt(data, "selinuxLabel", where, _str),
        oom_score_adj=oom,
        raw=data,
    )


def _console_size(value: Any, where: str) -> ConsoleSize:
    data = _obj(value, where)
    return ConsoleSize(
        height=_uint(_required(data, "height", where), f"{where}.height"),
        width=_uint(_required(data, "width", where), f"{where}.width"),
    )


def _user(value: Any, where: str) -> User:
    data = _obj(value, where)
    umask = _opt(data, "umask", where, _uint)
    if umask is not None and umask > 0o777:
        raise ConfigError(f"{where}.umask", "must be at most 0777")
    gids = _list(data.get("additionalGids") or [], f"{where}.additionalGids")
    return User(
        uid=_id(_required(data, "uid", where), f"{where}.uid"),
        gid=_id(_required(data, "gid", where), f"{where}.gid"),
        umask=umask,
        additional_gids=[_id(g, f"{where}.additionalGids[{i}]") for i, g in enumerate(gids)],
        username=_opt(data, "username", where, _str),
    )


def _capabilities(value: Any, where: str) -> Capabilities:
    from .kernel import CAPABILITIES  # lazy: kernel pulls in ctypes

    data = _obj(value, where)
    sets: dict[str, list[str]] = {}
    for name in _CAP_SETS:
        caps = _opt(data, name, where, _str_list) or []
        for i, cap in enumerate(caps):
            if cap not in CAPABILITIES:
                raise ConfigError(f"{where}.{name}[{i}]", f'unknown capability "{cap}"')
        sets[name] = caps
    return Capabilities(**sets)


def _rlimits(value: Any, where: str) -> list[Rlimit]:
    limits: list[Rlimit] = []
    seen: set[str] = set()
    for i, item in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        data = _obj(item, at)
        kind = _str(_required(data, "type", at), f"{at}.type")
        if kind not in _RLIMITS:
            raise ConfigError(f"{at}.type", f'unknown rlimit "{kind}"')
        if kind in seen:
            raise ConfigError(f"{at}.type", f'duplicate rlimit "{kind}"')
        seen.add(kind)
        soft = _uint(_required(data, "soft", at), f"{at}.soft")
        hard = _uint(_required(data, "hard", at), f"{at}.hard")
        if soft > hard:
            raise ConfigError(at, f"soft limit {soft} exceeds hard limit {hard}")
        limits.append(Rlimit(kind, soft, hard))
    return limits


# --- mounts and hooks --------------------------------------------------------


def _mounts(value: Any, where: str) -> list[Mount]:
    mounts: list[Mount] = []
    for i, item in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        data = _obj(item, at)
        destination = _str(_required(data, "destination", at), f"{at}.destination")
        if not destination:
            raise ConfigError(f"{at}.destination", "is required")
        # A relative destination is accepted (runc treats it as relative to /).
        mounts.append(
            Mount(
                destination=destination,
                type=_opt(data, "type", at, _str),
                source=_opt(data, "source", at, _str),
                options=_opt(data, "options", at, _str_list) or [],
            )
        )
    return mounts


_HOOK_KINDS = (
    ("prestart", "prestart"),
    ("createRuntime", "create_runtime"),
    ("createContainer", "create_container"),
    ("startContainer", "start_container"),
    ("poststart", "poststart"),
    ("poststop", "poststop"),
)


def _hooks(value: Any, where: str) -> Hooks:
    data = _obj(value, where)
    hooks = Hooks()
    for json_name, attr in _HOOK_KINDS:
        items = _list(data.get(json_name) or [], f"{where}.{json_name}")
        parsed = [_hook(item, f"{where}.{json_name}[{i}]") for i, item in enumerate(items)]
        setattr(hooks, attr, parsed)
    return hooks


def _hook(value: Any, where: str) -> Hook:
    data = _obj(value, where)
    timeout = _opt(data, "timeout", where, _int)
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"{where}.timeout", "must be greater than zero")
    return Hook(
        path=_abs_path(_required(data, "path", where), f"{where}.path"),
        args=_opt(data, "args", where, _str_list) or [],
        env=_opt(data, "env", where, _str_list) or [],
        timeout=timeout,
    )


# --- linux -------------------------------------------------------------------

_PROPAGATIONS = frozenset(
    ("private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable", "runbindable")
)
_DEVICE_TYPES = frozenset("cbup")
_PERSONALITY_DOMAINS = frozenset(("LINUX", "LINUX32"))


def _linux(value: Any, where: str) -> Linux:
    data = _obj(value, where)
    linux = Linux(
        namespaces=_opt(data, "namespaces", where, _namespaces) or [],
        uid_mappings=_opt(data, "uidMappings", where, _id_mappings) or [],
        gid_mappings=_opt(data, "gidMappings", where, _id_mappings) or [],
        devices=_opt(data, "devices", where, _devices) or [],
        cgroups_path=_opt(data, "cgroupsPath", where, _str),
        resources=_opt(data, "resources", where, parse_resources),
        sysctl=_opt(data, "sysctl", where, _str_map) or {},
        seccomp=_opt(data, "seccomp", where, _seccomp),
        rootfs_propagation=_opt(data, "rootfsPropagation", where, _str),
        masked_paths=_opt(data, "maskedPaths", where, _abs_paths) or [],
        readonly_paths=_opt(data, "readonlyPaths", where, _abs_paths) or [],
        mount_label=_opt(data, "mountLabel", where, _str),
        personality=_opt(data, "personality", where, _personality),
    )
    propagation = linux.rootfs_propagation
    if propagation is not None and propagation not in _PROPAGATIONS:
        raise ConfigError(
            f"{where}.rootfsPropagation",
            f'"{propagation}" is not one of {", ".join(sorted(_PROPAGATIONS))}',
        )
    _check_user_namespace(linux, where)
    _check_sysctl_namespaces(linux, where)
    return linux


def _namespaces(value: Any, where: str) -> list[Namespace]:
    from .kernel import NAMESPACES  # lazy: kernel pulls in ctypes

    namespaces: list[Namespace] = []
    for i, item in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        data = _obj(item, at)
        kind = _str(_required(data, "type", at), f"{at}.type")
        if kind not in NAMESPACES:
            raise ConfigError(f"{at}.type", f'unknown namespace type "{kind}"')
        if any(ns.type == kind for ns in namespaces):
            raise ConfigError(f"{at}.type", f'duplicate namespace type "{kind}"')
        # Every type can be joined by path (setns on /proc/PID/ns/*).
        path = _opt(data, "path", at, _abs_path)
        namespaces.append(Namespace(kind, path or None))
    return namespaces


def _id_mappings(value: Any, where: str) -> list[IdMapping]:
    mappings: list[IdMapping] = []
    for i, item in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        data = _obj(item, at)
        size = _id(_required(data, "size", at), f"{at}.size")
        if size == 0:
            raise ConfigError(f"{at}.size", "must be greater than zero")
        mappings.append(
            IdMapping(
                container_id=_id(_required(data, "containerID", at), f"{at}.containerID"),
                host_id=_id(_required(data, "hostID", at), f"{at}.hostID"),
                size=size,
            )
        )
    return mappings


def _check_user_namespace(linux: Linux, where: str) -> None:
    user_ns = linux.namespace("user")
    for key, mappings in (("uidMappings", linux.uid_mappings), ("gidMappings", linux.gid_mappings)):
        if mappings and user_ns is None:
            raise ConfigError(f"{where}.{key}", "set without a user namespace")
        # A new user namespace without mappings leaves every id unmapped
        # (files show as nobody, setuid fails); runc refuses it too.
        if user_ns is not None and user_ns.path is None and not mappings:
            raise ConfigError(f"{where}.{key}", "a new user namespace needs mappings")


# sysctl prefixes that are per-namespace, and the namespace that makes them so.
# Anything else is host-global: writing it would change the host.
_SYSCTL_NAMESPACES = (
    ("kernel.msgmax", "ipc"),
    ("kernel.msgmnb", "ipc"),
    ("kernel.msgmni", "ipc"),
    ("kernel.sem", "ipc"),
    ("kernel.shmall", "ipc"),
    ("kernel.shmmax", "ipc"),
    ("kernel.shmmni", "ipc"),
    ("kernel.shm_rmid_forced", "ipc"),
    ("fs.mqueue.", "ipc"),
    ("net.", "network"),
    ("kernel.hostname", "uts"),
    ("kernel.domainname", "uts"),
)


def _check_sysctl_namespaces(linux: Linux, where: str) -> None:
    for key in linux.sysctl:
        at = f'{where}.sysctl["{key}"]'
        name = key.replace("/", ".")
        owner = next((ns for prefix, ns in _SYSCTL_NAMESPACES if name.startswith(prefix)), None)
        if owner is None:
            raise ConfigError(at, "not a namespaced sysctl; setting it would change the host")
        if linux.namespace(owner) is None:
            raise ConfigError(at, f"requires a {owner} namespace")


def _devices(value: Any, where: str) -> list[Device]:
    devices: list[Device] = []
    for i, item in enumerate(_list(value, where)):
        at = f"{where}[{i}]"
        data = _obj(item, at)
        kind = _str(_required(data, "type", at), f"{at}.type")
        if kind not in _DEVICE_TYPES:
            raise ConfigError(f"{at}.type", f'"{kind}" is not one of c, b, u, p')
        # A fifo (p) has no device number; the others need both.
        if kind == "p":
            major = _opt(data, "major", at, _uint) or 0
            minor = _opt(data, "minor", at, _uint) or 0
        else:
            major = _uint(_required(data, "major", at), f"{at}.major")
            minor = _uint(_required(data, "minor", at), f"{at}.minor")
        file_mode = _opt(data, "fileMode", at, _uint)
        if file_mode is not None and file_mode > 0o7777:
            raise ConfigError(f"{at}.fileMode", "must be at most 07777")
        devices.append(
            Device(
                path=_abs_path(_required(data, "path", at), f"{at}.path"),
                type=kind,
                major=major,
                minor=minor,
                file_mode=file_mode,
                uid=_opt(data, "uid", at, _id),
                gid=_opt(data, "gid", at, _id),
            )
        )
    return devices


def _abs_paths(value: Any, where: str) -> list[str]:
    return [_abs_path(item, f"{where}[{i}]") for i, item in enumerate(_list(value, where))]


def _personality(value: Any, where: str) -> Personality:
    data = _obj(value, where)
    domain = _str(_required(data, "domain", where), f"{where}.domain")
    if domain not in _PERSONALITY_DOMAINS:
        raise ConfigError(f"{where}.domain", f'"{domain}" is not one of LINUX, LINUX32')
    return Personality(domain, _opt(data, "flags", where, _str_list) or [])


def _seccomp(value: Any, where: str) -> dict[str, Any]:
    """Shallow check only: the seccomp compiler validates actions and args."""
    data = _obj(value, where)
    _str(_required(data, "defaultAction", where), f"{where}.defaultAction")
    _opt(data, "defaultErrnoRet", where, _uint)
    _opt(data, "architectures", where, _str_list)
    _opt(data, "flags", where, _str_list)
    _opt(data, "listenerPath", where, _abs_path)
    _opt(data, "listenerMetadata", where, _str)
    for i, item in enumerate(_opt(data, "syscalls", where, _list) or []):
        at = f"{where}.syscalls[{i}]"
        rule = _obj(item, at)
        if not _str_list(_required(rule, "names", at), f"{at}.names"):
            raise ConfigError(f"{at}.names", "must be a non-empty list")
        _str(_required(rule, "action", at), f"{at}.action")
        for j, arg in enumerate(_opt(rule, "args", at, _list) or []):
            _obj(arg, f"{at}.args[{j}]")
    return data


# --- resources ---------------------------------------------------------------
# Scalar fields by section. Signed fields take -1 (docker's "unlimited");
# unsigned ones are counts/weights where a negative number means nothing.

_RESOURCE_SCALARS: dict[str, dict[str, Any]] = {
    "memory": {
        "limit": _int,
        "reservation": _int,
        "swap": _int,
        "kernel": _int,
        "kernelTCP": _int,
        "swappiness": _int,
        "disableOOMKiller": _bool,
        "useHierarchy": _bool,
        "checkBeforeUpdate": _bool,
    },
    "cpu": {
        "shares": _uint,
        "quota": _int,
        "burst": _uint,
        "period": _uint,
        "realtimeRuntime": _int,
        "realtimePeriod": _uint,
        "cpus": _str,
        "mems": _str,
        "idle": _int,
    },
    "pids": {"limit": _int},
    "blockIO": {"weight": _uint, "leafWeight": _uint},
    "network": {"classID": _uint},
}
_THROTTLE_LISTS = (
    "throttleReadBpsDevice",
    "throttleWriteBpsDevice",
    "throttleReadIOPSDevice",
    "throttleWriteIOPSDevice",
)


def parse_resources(data: Any, where: str = "linux.resources") -> dict[str, Any]:
    """Type-check linux.resources (or an `update` document); return it unchanged."""
    resources = _obj(data, where)
    for section, fields in _RESOURCE_SCALARS.items():
        body = _opt(resources, section, where, _obj) or {}
        for key, read in fields.items():
            _opt(body, key, f"{where}.{section}", read)
    _block_io_devices(resources.get("blockIO") or {}, f"{where}.blockIO")
    for i, item in enumerate(_opt(resources, "hugepageLimits", where, _list) or []):
        at = f"{where}.hugepageLimits[{i}]"
        limit = _obj(item, at)
        _str(_required(limit, "pageSize", at), f"{at}.pageSize")
        _uint(_required(limit, "limit", at), f"{at}.limit")
    for i, item in enumerate(_opt(resources, "devices", where, _list) or []):
        _device_rule(item, f"{where}.devices[{i}]")
    for i, item in enumerate(
        _opt(resources.get("network") or {}, "priorities", f"{where}.network", _list) or []
    ):
        at = f"{where}.network.priorities[{i}]"
        priority = _obj(item, at)
        _str(_required(priority, "name", at), f"{at}.name")
        _uint(_required(priority, "priority", at), f"{at}.priority")
    for name, item in (_opt(resources, "rdma", where, _obj) or {}).items():
        at = f'{where}.rdma["{name}"]'
        rdma = _obj(item, at)
        _opt(rdma, "hcaHandles", at, _uint)
        _opt(rdma, "hcaObjects", at, _uint)
    _opt(resources, "unified", where, _str_map)
    return resources


def _block_io_devices(block_io: dict[str, Any], where: str) -> None:
    for i, item in enumerate(_opt(block_io, "weightDevice", where, _list) or []):
        at = f"{where}.weightDevice[{i}]"
        device = _device_number(item, at)
        _opt(device, "weight", at, _uint)
        _opt(device, "leafWeight", at, _uint)
    for key in _THROTTLE_LISTS:
        for i, item in enumerate(_opt(block_io, key, where, _list) or []):
            at = f"{where}.{key}[{i}]"
            _uint(_required(_device_number(item, at), "rate", at), f"{at}.rate")


def _device_number(value: Any, where: str) -> dict[str, Any]:
    data = _obj(value, where)
    _uint(_required(data, "major", where), f"{where}.major")
    _uint(_required(data, "minor", where), f"{where}.minor")
    return data


def _device_rule(value: Any, where: str) -> None:
    data = _obj(value, where)
    _bool(_required(data, "allow", where), f"{where}.allow")
    kind = _opt(data, "type", where, _str)
    if kind is not None and kind not in ("a", "b", "c"):
        raise ConfigError(f"{where}.type", f'"{kind}" is not one of a, b, c')
    # Absent major/minor mean "any"; some clients write -1 for the same.
    _opt(data, "major", where, _int)
    _opt(data, "minor", where, _int)
    access = _opt(data, "access", where, _str)
    if access is not None and not set(access) <= set("rwm"):
        raise ConfigError(f"{where}.access", f'"{access}" may only contain r, w, m')


# --- the whole spec ----------------------------------------------------------

_OTHER_PLATFORMS = ("windows", "solaris", "vm", "zos")


def parse_spec(data: dict[str, Any], bundle: str) -> Spec:
    """Validate a decoded config.json. Touches no files; root.path is made absolute."""
    data = _obj(data, "config.json")
    version = _str(_required(data, "ociVersion", ""), "ociVersion")
    if version.split(".", 1)[0] != "1":
        raise ConfigError("ociVersion", f'unsupported version "{version}" (only 1.x is supported)')
    for platform in _OTHER_PLATFORMS:
        if platform in data:
            raise ConfigError("platform", f'found a "{platform}" section; only linux is supported')
    if data.get("linux") is None:
        raise ConfigError("platform", "no linux section; only linux is supported")
    linux = _linux(data["linux"], "linux")

    root = _obj(data.get("root") or {}, "root")
    root_path = _str(_required(root, "path", "root"), "root.path")
    if not root_path:
        raise ConfigError("root.path", "is required")
    readonly = bool(_opt(root, "readonly", "root", _bool))
    # Relative root paths are relative to the bundle (runtime-spec); symlinks in
    # the bundle path are resolved so the rootfs is named the same way everywhere.
    root_abs = os.path.normpath(os.path.join(os.path.realpath(bundle), root_path))

    hostname = _opt(data, "hostname", "", _str)
    domainname = _opt(data, "domainname", "", _str)
    for key, name in (("hostname", hostname), ("domainname", domainname)):
        # Without a private UTS namespace this would rename the host.
        if name and linux.namespace("uts") is None:
            raise ConfigError(key, "requires a uts namespace")

    return Spec(
        oci_version=version,
        bundle=os.path.abspath(bundle),
        root=Root(root_abs, readonly),
        process=_opt(data, "process", "", parse_process),
        hostname=hostname,
        domainname=domainname,
        mounts=_opt(data, "mounts", "", _mounts) or [],
        hooks=_opt(data, "hooks", "", _hooks) or Hooks(),
        annotations=_opt(data, "annotations", "", _str_map) or {},
        linux=linux,
        raw=data,
    )


def load_bundle(bundle: str) -> Spec:
    """Read and validate <bundle>/config.json and check that the rootfs exists."""
    if not os.path.isdir(bundle):
        raise ConfigError("bundle", f"{bundle}: no such directory")
    config_path = os.path.join(os.path.abspath(bundle), "config.json")
    try:
        with open(config_path, "rb") as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError("config.json", f"{config_path}: no such file") from None
    except OSError as e:
        raise ConfigError("config.json", f"{config_path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError("config.json", f"not valid UTF-8 at byte {e.start}") from None
    try:
        data = jsonio.loads(text)
    except ValueError as e:
        import json

        if not isinstance(e, json.JSONDecodeError):
            raise ConfigError("config.json", f"invalid JSON: {e}") from None
        raise ConfigError(
            "config.json", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError("config.json", "must be a JSON object")
    spec = parse_spec(data, bundle)
    if not os.path.isdir(spec.root.path):
        raise ConfigError("root.path", f"{spec.root.path}: no such directory")
    return spec
