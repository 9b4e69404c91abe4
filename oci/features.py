"""The runtime-spec "features" document (features.md, features-linux.md).

``pysandbox features`` prints it. Per the spec it describes what this runtime
*recognizes and implements*, not what the host kernel offers; the one
host-dependent value is the capability list, which stops at the kernel's
cap_last_cap like runc's does, so callers never add capabilities the kernel
would reject. Only properties defined by ``ociVersionMax`` (1.2.0) appear.
"""

from __future__ import annotations

from pysandbox import OCI_VERSION, __version__
from pysandbox.oci import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

OCI_VERSION_MIN: Final = "1.0.0"

HOOKS: Final[tuple[str, ...]] = (
    "prestart",
    "createRuntime",
    "createContainer",
    "startContainer",
    "poststart",
    "poststop",
)

# Options of mounts[].options that the runtime itself interprets (mount flags,
# propagation, and docker's tmpcopyup, which is accepted and ignored). Anything
# else is passed to mount(2) as filesystem data and, per the spec, not listed.
# This must stay the set rootfs.parse_mount_options knows (a unit test checks);
# the recursive mount_setattr forms (rro, rnosuid, ...) are not implemented.
MOUNT_OPTIONS: Final[tuple[str, ...]] = (
    "async",
    "atime",
    "bind",
    "defaults",
    "dev",
    "diratime",
    "dirsync",
    "exec",
    "lazytime",
    "mand",
    "noatime",
    "nodev",
    "nodiratime",
    "noexec",
    "nolazytime",
    "nomand",
    "norelatime",
    "nostrictatime",
    "nosuid",
    "nosymfollow",
    "private",
    "rbind",
    "relatime",
    "remount",
    "ro",
    "rprivate",
    "rshared",
    "rslave",
    "runbindable",
    "rw",
    "shared",
    "slave",
    "strictatime",
    "suid",
    "symfollow",
    "sync",
    "tmpcopyup",
    "unbindable",
)

# What config.json's linux.seccomp may name. The seccomp module is the
# authority; these are used only if it cannot be imported.
_FALLBACK_SECCOMP_ACTIONS: Final[tuple[str, ...]] = (
    "SCMP_ACT_ALLOW",
    "SCMP_ACT_ERRNO",
    "SCMP_ACT_KILL",
    "SCMP_ACT_KILL_PROCESS",
    "SCMP_ACT_KILL_THREAD",
    "SCMP_ACT_LOG",
    "SCMP_ACT_NOTIFY",
    "SCMP_ACT_TRACE",
    "SCMP_ACT_TRAP",
)
_FALLBACK_SECCOMP_OPERATORS: Final[tuple[str, ...]] = (
    "SCMP_CMP_EQ",
    "SCMP_CMP_GE",
    "SCMP_CMP_GT",
    "SCMP_CMP_LE",
    "SCMP_CMP_LT",
    "SCMP_CMP_MASKED_EQ",
    "SCMP_CMP_NE",
)
# Recognized in config.json; a sandbox filter only ever admits the native ABI
# (x86_64), the others are accepted so that docker's default profile parses.
_FALLBACK_SECCOMP_ARCHES: Final[tuple[str, ...]] = (
    "SCMP_ARCH_AARCH64",
    "SCMP_ARCH_ARM",
    "SCMP_ARCH_MIPS",
    "SCMP_ARCH_MIPS64",
    "SCMP_ARCH_MIPS64N32",
    "SCMP_ARCH_MIPSEL",
    "SCMP_ARCH_MIPSEL64",
    "SCMP_ARCH_MIPSEL64N32",
    "SCMP_ARCH_PPC",
    "SCMP_ARCH_PPC64",
    "SCMP_ARCH_PPC64LE",
    "SCMP_ARCH_RISCV64",
    "SCMP_ARCH_S390",
    "SCMP_ARCH_S390X",
    "SCMP_ARCH_X32",
    "SCMP_ARCH_X86",
    "SCMP_ARCH_X86_64",
)
_FALLBACK_SECCOMP_FLAGS: Final[tuple[str, ...]] = (
    "SECCOMP_FILTER_FLAG_TSYNC",
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
    "SECCOMP_FILTER_FLAG_LOG",
)


def _seccomp_lists() -> tuple[list[str], list[str], list[str], list[str]]:
    """(actions, operators, archs, flags) from the seccomp module, else the fallbacks."""
    try:
        from pysandbox.oci.seccomp import (  # type: ignore[import-not-found, unused-ignore]
            SUPPORTED_ACTIONS,
            SUPPORTED_ARCHES,
            SUPPORTED_FLAGS,
            SUPPORTED_OPERATORS,
        )
    except ImportError:
        return (
            list(_FALLBACK_SECCOMP_ACTIONS),
            list(_FALLBACK_SECCOMP_OPERATORS),
            list(_FALLBACK_SECCOMP_ARCHES),
            list(_FALLBACK_SECCOMP_FLAGS),
        )
    return (
        sorted(str(a) for a in SUPPORTED_ACTIONS),
        sorted(str(o) for o in SUPPORTED_OPERATORS),
        sorted(str(a) for a in SUPPORTED_ARCHES),
        [str(f) for f in SUPPORTED_FLAGS],
    )


def features_document() -> dict[str, Any]:
    """The features document as a JSON-ready dict."""
    actions, operators, archs, flags = _seccomp_lists()
    last_cap = min(kernel.cap_last_cap(), len(kernel.CAPABILITIES) - 1)
    return {
        "ociVersionMin": OCI_VERSION_MIN,
        "ociVersionMax": OCI_VERSION,
        "hooks": list(HOOKS),
        "mountOptions": list(MOUNT_OPTIONS),
        "linux": {
            "namespaces": sorted(kernel.NAMESPACES),
            "capabilities": list(kernel.CAPABILITIES[: last_cap + 1]),
            "cgroup": {
                "v1": True,
                "v2": True,
                "systemd": False,
                "systemdUser": False,
                "rdma": False,
            },
            "seccomp": {
                "enabled": True,
                "actions": actions,
                "operators": operators,
                "archs": archs,
                "knownFlags": flags,
                "supportedFlags": list(flags),
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
            "intelRdt": {"enabled": False},
            "mountExtensions": {"idmap": {"enabled": False}},
        },
        "annotations": {
            "io.github.pysandbox.version": __version__,
        },
    }
