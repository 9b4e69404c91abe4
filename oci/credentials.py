"""Turning the current (forked) process into the container's process:
rlimits, oom score, personality, capabilities, uid/gid, umask, cwd, and the
executable lookup. Runs in the child just before execve."""

from __future__ import annotations

import os
import resource
import stat
from collections.abc import Callable, Sequence

from pysandbox.oci import kernel as k
from pysandbox.oci.log import RuntimeFailure

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysandbox.oci.config import Capabilities, Process


def apply_rlimits(process: Process) -> None:
    for rl in process.rlimits:
        res = getattr(resource, rl.type, None)
        if res is None:
            raise RuntimeFailure(f"unknown rlimit {rl.type}")
        soft, hard = _rlim(rl.soft), _rlim(rl.hard)
        try:
            resource.setrlimit(res, (soft, hard))
        except (OSError, ValueError) as e:
            if isinstance(e, ValueError) and soft <= hard:
                # Python's words for EPERM: raising a hard limit needs
                # CAP_SYS_RESOURCE (or the limit exceeds e.g. fs.nr_open).
                current = resource.getrlimit(res)[1]
                detail = (
                    f"operation not permitted (hard limit {_show(hard)} is above "
                    f"the runtime's own {_show(current)}, raising it needs CAP_SYS_RESOURCE)"
                )
            else:
                detail = getattr(e, "strerror", None) or str(e)
            raise RuntimeFailure(f"error setting rlimit type {rl.type}: {detail}") from None


def _show(v: int) -> str:
    return "unlimited" if v == resource.RLIM_INFINITY else str(v)


def _rlim(v: int) -> int:
    return resource.RLIM_INFINITY if v < 0 or v >= 2**64 - 1 else v


def apply_oom_score_adj(value: int | None) -> None:
    if value is None:
        return
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as e:
        hint = " (lowering it below 0 needs CAP_SYS_RESOURCE)" if value < 0 else ""
        raise RuntimeFailure(f"set oom_score_adj to {value}: {e.strerror}{hint}") from None


def apply_personality(domain: str | None) -> None:
    if domain is None:
        return
    k.personality(k.PER_LINUX32 if domain == "LINUX32" else k.PER_LINUX)


def _mask(names: Sequence[str]) -> int:
    last = k.cap_last_cap()
    m = 0
    for n in names:
        try:
            num = k.cap_number(n)
        except ValueError:
            continue
        if num <= last:
            m |= 1 << num
    return m


def drop_bounding_set(caps: Capabilities | None) -> None:
    keep = _mask(caps.bounding) if caps is not None else (1 << (k.cap_last_cap() + 1)) - 1
    for num in range(k.cap_last_cap() + 1):
        if not keep & (1 << num):
            k.prctl(k.PR_CAPBSET_DROP, num)


def switch_user(process: Process, *, in_userns_unmapped_groups: bool = False) -> None:
    """setgroups, setgid, setuid while keeping the permitted set for capset."""
    user = process.user
    if not in_userns_unmapped_groups:
        os.setgroups(list(user.additional_gids))
    k.prctl(k.PR_SET_KEEPCAPS, 1)
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    k.prctl(k.PR_SET_KEEPCAPS, 0)


def apply_capabilities(caps: Capabilities | None) -> None:
    """Set effective/permitted/inheritable, then raise ambient ones."""
    if caps is None:
        # No capabilities object: the process keeps none (runc's behaviour).
        k.capset(0, 0, 0)
        k.prctl(k.PR_CAP_AMBIENT, k.PR_CAP_AMBIENT_CLEAR_ALL)
        return
    k.capset(_mask(caps.effective), _mask(caps.permitted), _mask(caps.inheritable))
    k.prctl(k.PR_CAP_AMBIENT, k.PR_CAP_AMBIENT_CLEAR_ALL)
    for name in caps.ambient:
        try:
            num = k.cap_number(name)
        except ValueError:
            continue
        try:
            k.prctl(k.PR_CAP_AMBIENT, k.PR_CAP_AMBIENT_RAISE, num)
        except OSError:
            # Linux refuses an ambient cap that is not both permitted and
            # inheritable; runc ignores that too.
            pass


def env_dict(env: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for entry in env:
        key, sep, value = entry.partition("=")
        if sep and key:
            out[key] = value
    return out


def find_executable(arg0: str, env: dict[str, str]) -> str:
    """Resolve argv[0] the way runc does before exec (in the container's root)."""
    if "/" in arg0:
        if not os.path.exists(arg0):
            raise RuntimeFailure(f'exec: "{arg0}": stat {arg0}: no such file or directory')
        return arg0
    path = env.get("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    for d in path.split(":"):
        cand = os.path.join(d or ".", arg0)
        try:
            st = os.stat(cand)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return cand
    raise RuntimeFailure(f'exec: "{arg0}": executable file not found in $PATH')


def finalize(
    process: Process,
    *,
    load_seccomp: Callable[[], None] | None,
    in_userns: bool,
) -> None:
    """Everything from rlimits to the last capset, in the order that keeps each
    step permitted: seccomp goes in while CAP_SYS_ADMIN is still held unless
    no_new_privs makes that unnecessary (then as late as possible)."""
    apply_rlimits(process)
    apply_oom_score_adj(process.oom_score_adj)
    os.umask(process.user.umask if process.user.umask is not None else 0o022)
    try:
        os.chdir(process.cwd)
    except OSError as e:
        raise RuntimeFailure(
            f"chdir to cwd ({process.cwd!r}) set in config.json failed: {e.strerror}"
        ) from None
    if process.no_new_privileges:
        k.prctl(k.PR_SET_NO_NEW_PRIVS, 1)
    if load_seccomp is not None and not process.no_new_privileges:
        load_seccomp()
    drop_bounding_set(process.capabilities)
    switch_user(process, in_userns_unmapped_groups=False)
    apply_capabilities(process.capabilities)
    if load_seccomp is not None and process.no_new_privileges:
        load_seccomp()
