"""``exec``: a new process in a running container, through the same two-stage
spawn as create, joining the container's namespaces and cgroup."""

from __future__ import annotations

import json
import os

from pysandbox.oci import kernel as k
from pysandbox.oci.lifecycle import Runtime, wait_foreground
from pysandbox.oci.log import Logger, RuntimeFailure
from pysandbox.oci.state import CREATED, PAUSED, RUNNING, STOPPED, cache_dir, write_file_atomic

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from typing import Any

    from pysandbox.oci.cli import Parsed
    from pysandbox.oci.config import Process
    from pysandbox.oci.state import ContainerRecord

SAVED_CONFIG = "config.json"


def build_process(p: Parsed, base: dict[str, Any]) -> Process:
    """The process to run: --process FILE, or the container's own process
    with the command line's args and overrides (runc's rules)."""
    from pysandbox.oci.config import ConfigError, parse_process

    path = p.opt("process")
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
        except OSError as e:
            raise RuntimeFailure(f"process file {path}: {e.strerror}") from None
        except ValueError as e:
            raise RuntimeFailure(f"process file {path}: invalid JSON: {e}") from None
    else:
        args = p.args[1:]
        if not args:
            raise RuntimeFailure("args must not be empty")
        data = json.loads(json.dumps(base))
        data["args"] = args
        data["terminal"] = p.flag("tty")
        data.pop("consoleSize", None)
        data["env"] = list(data.get("env") or []) + p.many("env")
        if p.opt("cwd"):
            data["cwd"] = p.opt("cwd")
        user = p.opt("user")
        if user:
            uid, _, gid = user.partition(":")
            try:
                data["user"] = {"uid": int(uid), "gid": int(gid or 0)}
            except ValueError:
                raise RuntimeFailure(f"invalid --user {user!r}: want <uid>[:<gid>]") from None
        gids = p.many("additional-gids")
        if gids:
            data.setdefault("user", {})["additionalGids"] = [int(g) for g in gids]
        if p.flag("no-new-privs"):
            data["noNewPrivileges"] = True
        caps = p.many("cap")
        if caps:
            c = data.setdefault("capabilities", {})
            for kind in ("bounding", "effective", "permitted", "ambient"):
                c[kind] = list(dict.fromkeys([*(c.get(kind) or []), *caps]))
    try:
        return parse_process(data)
    except ConfigError as e:
        raise RuntimeFailure(str(e)) from None


def exec_command(root: str, log: Logger, p: Parsed) -> int:
    from pysandbox.oci.cgroups import manager_from_dict, stop_priming
    from pysandbox.oci.spawn import LaunchPlan, launch

    rt = Runtime(root, log)
    cid = p.args[0]
    rec = rt.store.load(cid)
    st = rt.status(rec)
    if st == STOPPED or st not in (CREATED, RUNNING, PAUSED):
        raise RuntimeFailure(f"cannot exec in a {st} container")
    if st == PAUSED and not p.flag("ignore-paused"):
        raise RuntimeFailure("cannot exec in a paused container (use --ignore-paused to override)")
    config = _saved_config(rt, cid)
    process = build_process(p, config.get("process") or {})
    detach = p.flag("detach")
    console_path = p.opt("console-socket")
    if process.terminal and detach and not console_path:
        raise RuntimeFailure(
            "cannot allocate tty if runc will detach without setting console socket"
        )
    if not process.terminal and console_path:
        raise RuntimeFailure("cannot use console socket if runc will not detach or allocate tty")

    seccomp = None
    profile = (config.get("linux") or {}).get("seccomp")
    if profile:
        from pysandbox.oci.seccomp import SeccompError, compile_cached

        try:
            seccomp = compile_cached(profile, cache_dir(rt.store.root))
        except SeccompError as e:
            raise RuntimeFailure(str(e)) from None
    console_sock: socket.socket | None = None
    ours: socket.socket | None = None
    if process.terminal:
        if console_path:
            from pysandbox.oci.console import connect_console_socket

            console_sock = connect_console_socket(console_path)
        else:
            import socket

            ours, console_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sentry_bpf, sentry_sock = _sentry_plan(rt, rec)
    plan = LaunchPlan(
        process=process,
        joins=_joins(rec.pid, rec.namespaces),
        cgroup=manager_from_dict(rec.cgroup) if rec.cgroup else None,
        seccomp=seccomp,
        console=console_sock,
        preserve_fds=int(p.opt("preserve-fds") or 0),
        wait_ack=False,
        container_id=cid,
        sentry_bpf=sentry_bpf,
        sentry_sock=sentry_sock,
    )
    if not detach:
        k.prctl(k.PR_SET_CHILD_SUBREAPER, 1)
    try:
        launched = launch(plan)
    finally:
        stop_priming()
        if console_sock is not None:
            console_sock.close()
        if sentry_sock is not None:
            sentry_sock.close()
    launched.sock.close()
    launched.console = ours
    pid_file = p.opt("pid-file")
    if pid_file:
        write_file_atomic(os.path.abspath(pid_file), str(launched.pid))
    if detach:
        return 0
    return wait_foreground(launched, log)


def _sentry_plan(rt: Runtime, rec: ContainerRecord) -> tuple[bytes | None, socket.socket | None]:
    """For a sandboxed container (its saved state decides, not our flags): the
    policy's filter and a connection to its sentry's control socket, over which
    the new process sends its listener just before execve."""
    from pysandbox.oci.lifecycle import SANDBOX_SENTRY, compile_policy

    if rec.sandbox != SANDBOX_SENTRY:
        return None, None
    from pysandbox.sentry.service import connect_control

    policy = compile_policy(rec.profile, rt.store.root)
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        connect_control(sock, rt.store.dir(rec.id))
    except OSError as e:
        sock.close()
        raise RuntimeFailure(f"the container's sentry is not reachable: {e.strerror}") from None
    return policy.bpf, sock


def _saved_config(rt: Runtime, cid: str) -> dict[str, Any]:
    try:
        with open(os.path.join(rt.store.dir(cid), SAVED_CONFIG), encoding="utf-8") as f:
            data: dict[str, Any] = json.load(f)
            return data
    except (OSError, ValueError) as e:
        raise RuntimeFailure(f"reading the container's saved config: {e}") from None


def _joins(pid: int, namespaces: dict[str, str]) -> list[tuple[int, str]]:
    """Every namespace the container has that differs from ours, user first."""
    out: list[tuple[int, str]] = []
    for oci_type in namespaces:
        flag, name = k.NAMESPACES[oci_type]
        theirs = f"/proc/{pid}/ns/{name}"
        try:
            a, b = os.stat(theirs), os.stat(f"/proc/self/ns/{name}")
        except OSError as e:
            raise RuntimeFailure(f"container namespace {theirs}: {e.strerror}") from None
        if (a.st_dev, a.st_ino) != (b.st_dev, b.st_ino):
            out.append((flag, theirs))
    # user first; mount last so the other /proc paths are opened from our view
    out.sort(key=lambda j: 0 if j[0] == k.CLONE_NEWUSER else (2 if j[0] == k.CLONE_NEWNS else 1))
    return out
