"""The default config.json, as `runc spec` writes it (and `runc spec --rootless`).

Callers and people expect `pysandbox spec` to give the same starting point as
runc, so the content follows runc 1.1's template: a `sh` with a terminal, three
capabilities, a read-only rootfs, the usual /proc /dev /sys mounts, masked and
read-only /proc paths, and every device denied in the devices cgroup. Only the
hostname differs, and ociVersion names the spec version we implement.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

OCI_VERSION = "1.2.0"
HOSTNAME = "pysandbox"

_CAPABILITIES = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]

_MASKED_PATHS = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
    # Added by later runc releases: the TPM's sysfs nodes leak host identity.
    "/sys/devices/virtual/tpm",
]

_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

# On a pure cgroup v2 host runc adds a cgroup namespace, so the container sees
# its own cgroup as the root of /sys/fs/cgroup; on v1/hybrid hosts it does not.
_CGROUP2_MARKER = "/sys/fs/cgroup/cgroup.controllers"


def _mounts() -> list[dict[str, Any]]:
    def mount(destination: str, kind: str, source: str, options: list[str]) -> dict[str, Any]:
        entry: dict[str, Any] = {"destination": destination, "type": kind, "source": source}
        if options:
            entry["options"] = options
        return entry

    return [
        mount("/proc", "proc", "proc", []),
        mount("/dev", "tmpfs", "tmpfs", ["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount(
            "/dev/shm", "tmpfs", "shm", ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
        ),
        mount("/dev/mqueue", "mqueue", "mqueue", ["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", "sysfs", ["nosuid", "noexec", "nodev", "ro"]),
        mount(
            "/sys/fs/cgroup", "cgroup", "cgroup", ["nosuid", "noexec", "nodev", "relatime", "ro"]
        ),
    ]


def default_spec(
    args: list[str] | None = None, *, rootless: bool = False, terminal: bool = True
) -> dict[str, Any]:
    """A fresh config.json document; `args` replaces the default ["sh"]."""
    namespaces = [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]
    if os.path.exists(_CGROUP2_MARKER):
        namespaces.append({"type": "cgroup"})
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": list(args) if args is not None else ["sh"],
            "env": [
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "TERM=xterm",
            ],
            "cwd": "/",
            "capabilities": {
                "bounding": list(_CAPABILITIES),
                "effective": list(_CAPABILITIES),
                "permitted": list(_CAPABILITIES),
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": HOSTNAME,
        "mounts": _mounts(),
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": namespaces,
            "maskedPaths": list(_MASKED_PATHS),
            "readonlyPaths": list(_READONLY_PATHS),
        },
    }
    if rootless:
        _make_rootless(spec)
    return spec


def _make_rootless(spec: dict[str, Any]) -> None:
    """Adjust the default so an unprivileged user can run it, as runc does."""
    linux = spec["linux"]
    # No network namespace: an unprivileged user could not give it any
    # connectivity. A user namespace maps the caller to root inside.
    linux["namespaces"] = [
        ns for ns in linux["namespaces"] if ns["type"] not in ("network", "user")
    ] + [{"type": "user"}]
    linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    mounts: list[dict[str, Any]] = []
    for mount in spec["mounts"]:
        if mount["destination"] == "/sys":
            # sysfs can only be mounted by the owner of the network namespace,
            # which is the host's here; bind the host's read-only instead.
            mounts.append(
                {
                    "destination": "/sys",
                    "type": "none",
                    "source": "/sys",
                    "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
                }
            )
            continue
        # gid=5/uid= name ids that are not mapped in a one-id user namespace.
        if "options" in mount:
            mount["options"] = [o for o in mount["options"] if not o.startswith(("gid=", "uid="))]
        mounts.append(mount)
    spec["mounts"] = mounts
    # An unprivileged user cannot create cgroups (without delegation).
    del linux["resources"]


def write_spec(bundle: Path, spec: dict[str, Any]) -> Path:
    """Write <bundle>/config.json; like runc, never overwrite an existing one."""
    path = Path(bundle) / "config.json"
    try:
        with open(path, "x", encoding="utf-8") as f:
            json.dump(spec, f, indent=2)
            f.write("\n")
    except FileExistsError:
        raise FileExistsError("File config.json exists. Remove it first.") from None
    return path
