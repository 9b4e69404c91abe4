"""Forking the container's processes.

    caller (create / run / exec)
      └─ stage 1: joins namespaces by path, unshares the new ones (a user
         namespace first, so the others belong to it), forks stage 2, exits
           └─ stage 2: becomes the container's process: rootfs, hostname,
              console, credentials, seccomp; then (create) blocks on the exec
              fifo until `start`, or (exec) execs at once

Stage 1 exists because a new or joined PID namespace applies only to
children. Its exit reparents stage 2 to the caller's subreaper (the shim),
which reaps it: the container's exit status is stage 2's.

The caller talks to both stages over one pair of packet pipes (oci/sync.py);
stage 2 waits for ``go2`` before speaking, so the caller always hears stage
1's ``pid`` first.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

# Imported here, before the fork, so stage 2 does not pay for it on the clock.
from pysandbox.oci import credentials, jsonio, sync
from pysandbox.oci import kernel as k
from pysandbox.oci.log import RuntimeFailure
from pysandbox.oci.records import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    import socket
    from typing import Any

    from pysandbox.oci.cgroups import CgroupManager
    from pysandbox.oci.config import IdMapping, Process, Spec
    from pysandbox.oci.rootfs import RootfsBuilder
    from pysandbox.oci.seccomp import CompiledFilter


@record
class LaunchPlan:
    process: Process
    spec: Spec | None = None  # create: the whole config; exec: None
    joins: list[tuple[int, str]] = field(default_factory=list)  # (CLONE_NEW*, path), user first
    new_ns: int = 0  # CLONE_NEW* flags to unshare
    uid_mappings: list[IdMapping] = field(default_factory=list)
    gid_mappings: list[IdMapping] = field(default_factory=list)
    cgroup: CgroupManager | None = None
    seccomp: CompiledFilter | None = None
    rootfs: RootfsBuilder | None = None
    fifo_fd: int | None = None
    console: socket.socket | None = None
    preserve_fds: int = 0
    no_pivot: bool = False
    hostname: str | None = None
    domainname: str | None = None
    sysctl: dict[str, str] = field(default_factory=dict)
    personality: str | None = None
    wait_ack: bool = True
    container_id: str = ""
    # --sandbox sentry: the policy's filter, loaded with a listener just before
    # execve, and the socket the listener goes to the sentry over.
    sentry_bpf: bytes | None = None
    sentry_sock: _socket.socket | None = None


@record
class Launched:
    pid: int
    sock: sync.Channel
    console: socket.socket | None = None  # run's own end of the console socket

    def ack(self) -> None:
        """Let the container process go on (create: to block on the fifo)."""
        with contextlib.suppress(OSError):
            sync.send(self.sock, "ack")
        self.sock.close()


def launch(
    plan: LaunchPlan,
    *,
    on_pid: Callable[[int], None] | None = None,
    on_hooks: Callable[[int], bytes] | None = None,
    prepare_cgroup: Callable[[], None] | None = None,
    while_init_builds: Callable[[], None] | None = None,
) -> Launched:
    """Fork the two stages; return once stage 2 is ready (and waiting for ack).

    ``on_pid`` runs as soon as the container's host pid is known (to record it
    for cleanup); ``on_hooks`` runs the runtime-namespace hooks once the
    mounts exist and returns the state JSON for createContainer hooks.

    With ``prepare_cgroup`` (create), the cgroup is made and init moved into
    it while init builds its rootfs, so the cgroup work overlaps the mount
    work (a thread started by the launcher keeps the migration lock warm, see
    cgroups.prime_migration). Init forks nothing and runs nothing of the
    workload before it has joined (the ``ok`` message).
    """
    late_cgroup = prepare_cgroup is not None
    if plan.fifo_fd is not None:
        # The container's user (any uid, or root of a user namespace) writes
        # the exec fifo; make it writable whatever umask it was created under.
        os.chmod(f"/proc/self/fd/{plan.fifo_fd}", 0o622)
    if os.environ.get("PYSANDBOX_TRACE"):
        import traceback  # noqa: F401  (stage 2 cannot import after pivot_root)
    _import_what_the_children_need(plan)
    parent, child = sync.pair()
    pid1 = os.fork()
    if pid1 == 0:
        parent.close()
        _stage1(plan, child)
    child.close()
    init_pid = 0
    try:
        if plan.cgroup is not None and not late_cgroup:
            plan.cgroup.add_process(pid1)
        if plan.new_ns & k.CLONE_NEWUSER:
            sync.expect(parent, "userns")
            _write_id_maps(pid1, plan.uid_mappings, plan.gid_mappings)
        sync.send(parent, "go")
        init_pid = int(sync.expect(parent, "pid")["pid"])
        _reap(pid1)
        pid1 = 0
        if on_pid is not None:
            on_pid(init_pid)
        sync.send(parent, "go2")
        # Stage 2 builds its rootfs meanwhile; it waits for "ok" (after the
        # join) before it forks, execs or touches its cgroup.
        if prepare_cgroup is not None:
            prepare_cgroup()
        if plan.cgroup is not None and late_cgroup:
            plan.cgroup.add_process(init_pid)
        if while_init_builds is not None:
            while_init_builds()
        if plan.spec is not None:
            sync.expect(parent, "hooks")
            state = on_hooks(init_pid) if on_hooks is not None else b"{}"
            sync.send(parent, "ok", state=state.decode())
        sync.expect(parent, "ready")
    except BaseException:
        for pid in (pid1, init_pid):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, k.SIGKILL)
        if pid1:
            _reap(pid1)
        parent.close()
        raise
    return Launched(init_pid, parent)


def _import_what_the_children_need(plan: LaunchPlan) -> None:
    """Import, before forking, every module the stages import lazily: once they
    have joined a mount namespace or pivoted, our package is out of reach."""
    if plan.console is not None:
        from pysandbox.oci import console  # noqa: F401
    if plan.spec is not None and (
        plan.spec.hooks.create_container or plan.spec.hooks.start_container
    ):
        from pysandbox.oci import hooks  # noqa: F401
    if plan.seccomp is not None:
        from pysandbox.oci import seccomp  # noqa: F401


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _write_id_maps(pid: int, uids: list[IdMapping], gids: list[IdMapping]) -> None:
    def fmt(maps: list[IdMapping]) -> str:
        return "".join(f"{m.container_id} {m.host_id} {m.size}\n" for m in maps)

    try:
        with open(f"/proc/{pid}/uid_map", "w") as f:
            f.write(fmt(uids))
        with open(f"/proc/{pid}/gid_map", "w") as f:
            f.write(fmt(gids))
    except OSError as e:
        raise RuntimeFailure(f"writing uid/gid mappings: {e.strerror}") from None


def _stage1(plan: LaunchPlan, sock: sync.Channel) -> None:
    try:
        # Not dumpable until the workload's execve (which makes it dumpable
        # again): until then this process is the host's interpreter inside the
        # container's pid namespace, and a dumpable one would let any process
        # there with the same credentials open /proc/PID/exe (the host's
        # python3), /proc/PID/mem or its fds: CVE-2019-5736's way out. Only
        # CAP_SYS_PTRACE can reach a non-dumpable process.
        k.prctl(k.PR_SET_DUMPABLE, 0)
        k.prctl(k.PR_SET_PDEATHSIG, k.SIGKILL)
        if os.getppid() == 1:
            os._exit(1)
        # Open every path first: joining a mount namespace changes what paths mean.
        fds = [(flag, os.open(path, os.O_RDONLY | os.O_CLOEXEC)) for flag, path in plan.joins]
        for flag, fd in fds:
            try:
                k.setns(fd, flag)
            except OSError as e:
                raise RuntimeFailure(
                    f"joining namespace {_path_of(plan, flag)}: {e.strerror}"
                ) from None
            os.close(fd)
        if plan.new_ns & k.CLONE_NEWUSER:
            k.unshare(k.CLONE_NEWUSER)
            sync.send(sock, "userns")
        sync.expect(sock, "go")
        if plan.new_ns & k.CLONE_NEWUSER:
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        rest = plan.new_ns & ~k.CLONE_NEWUSER
        if plan.spec is not None:
            # create: init makes its cgroup namespace itself, once it has
            # joined the container's cgroup (see launch()).
            rest &= ~k.CLONE_NEWCGROUP
        if rest:
            try:
                k.unshare(rest)
            except OSError as e:
                raise RuntimeFailure(f"unshare namespaces: {e.strerror}") from None
        pid2 = os.fork()
        if pid2 == 0:
            _stage2(plan, sock)
        sync.send(sock, "pid", pid=pid2)
        os._exit(0)
    except BaseException as e:
        sync.child_fail(sock, _describe(e))
    os._exit(1)


def _path_of(plan: LaunchPlan, flag: int) -> str:
    return next((p for f, p in plan.joins if f == flag), "?")


def _describe(e: BaseException) -> str:
    if os.environ.get("PYSANDBOX_TRACE"):
        import traceback

        traceback.print_exception(e)
    if isinstance(e, RuntimeFailure):
        return str(e)
    if isinstance(e, OSError):
        where = f" {e.filename}" if e.filename else ""
        return f"container init:{where}: {e.strerror or e}"
    return f"container init: {type(e).__name__}: {e}"


def _stage2(plan: LaunchPlan, sock: sync.Channel) -> None:
    try:
        sync.expect(sock, "go2")
        process = plan.process
        if plan.new_ns & k.CLONE_NEWNET:
            k.set_link_up("lo")
        if plan.rootfs is not None:
            plan.rootfs.prepare()
        if plan.hostname is not None:
            k.sethostname(plan.hostname)
        if plan.domainname is not None:
            k.setdomainname(plan.domainname)
        for key, value in plan.sysctl.items():
            _write_sysctl(key, value)
        if plan.spec is not None:
            sync.send(sock, "hooks")
            state = sync.expect(sock, "ok")["state"].encode()
            # From here on we are in the container's cgroup.
            if plan.new_ns & k.CLONE_NEWCGROUP:
                k.unshare(k.CLONE_NEWCGROUP)
            if plan.rootfs is not None:
                plan.rootfs.mount_deferred()
            if plan.spec.hooks.create_container:
                from pysandbox.oci.hooks import run_hooks

                run_hooks(plan.spec.hooks.create_container, state, kind="createContainer")
        if plan.rootfs is not None:
            plan.rootfs.pivot(no_pivot=plan.no_pivot)
        if plan.console is not None:
            _setup_console(plan)
        if plan.rootfs is not None:
            plan.rootfs.finish()
        if plan.personality is not None:
            credentials.apply_personality(plan.personality)
        env = credentials.env_dict(process.env)
        exe = credentials.find_executable(process.args[0], env)
        load = None
        if plan.seccomp is not None:
            compiled = plan.seccomp

            def load() -> None:
                from pysandbox.oci.seccomp import load_filter

                load_filter(compiled)

        credentials.finalize(
            process, load_seccomp=load, in_userns=bool(plan.new_ns & k.CLONE_NEWUSER)
        )
        # Nothing of ours may leak into the workload (CVE-2024-21626 was a leaked fd).
        k.close_range(3 + plan.preserve_fds, 0xFFFFFFFF, k.CLOSE_RANGE_CLOEXEC)
        sync.send(sock, "ready")
        if plan.wait_ack:
            sync.expect(sock, "ack")
        if plan.fifo_fd is not None:
            fd = os.open(f"/proc/self/fd/{plan.fifo_fd}", os.O_WRONLY | os.O_CLOEXEC)
            os.write(fd, b"0")
            # fd stays open until execve closes it (O_CLOEXEC): a start with
            # poststart hooks waits for that, so they follow the workload's exec.
        if plan.sentry_bpf is not None:
            _join_sentry(plan)
        if plan.fifo_fd is not None and plan.spec is not None and plan.spec.hooks.start_container:
            # In the sandbox: the hook is a program of the image, like the
            # workload, and its writes reach the root and the binds only
            # through the gofer (the kernel's view of them is read-only).
            from pysandbox.oci.hooks import run_hooks

            state = _state_for_start_hooks(plan)
            run_hooks(plan.spec.hooks.start_container, state, kind="startContainer")
        # Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored
        # across execve, and the workload must get the defaults.
        with contextlib.suppress(OSError):  # a seccomp profile may deny rt_sigaction
            k.set_signal_handler(k.SIGPIPE, None)
            k.set_signal_handler(k.SIGXFSZ, None)
        os.execve(exe, process.args, env)
    except BaseException as e:
        sync.child_fail(sock, _describe(e))
    os._exit(1)


def _join_sentry(plan: LaunchPlan) -> None:
    """Install the sandbox's filter (stacked on the OCI profile's) and hand its
    listener to the sentry. The last thing before execve but the
    startContainer hooks, which run in the sandbox: every call from here on
    is sorted by the filter.

    no_new_privs is set whatever the spec says: by now the capabilities are
    dropped, and without CAP_SYS_ADMIN the kernel loads a filter only under
    no_new_privs (gVisor's sandbox runs under it too). A setuid binary in the
    container therefore gains no privilege under ``--sandbox sentry``.
    """
    assert plan.sentry_bpf is not None and plan.sentry_sock is not None
    k.prctl(k.PR_SET_NO_NEW_PRIVS, 1)
    try:
        fd = k.seccomp_load_listener(plan.sentry_bpf)  # signals wait for the sentry's answer
    except OSError as e:
        raise RuntimeFailure(f"installing the sandbox's seccomp filter: {e.strerror}") from None
    try:
        plan.sentry_sock.sendmsg([b"L"], [(_SOL_SOCKET, _SCM_RIGHTS, fd.to_bytes(4, "little"))])
    except OSError as e:
        raise RuntimeFailure(f"handing the seccomp listener to the sentry: {e.strerror}") from None
    os.close(fd)
    plan.sentry_sock.close()


_SOL_SOCKET = 1
_SCM_RIGHTS = 1


def _state_for_start_hooks(plan: LaunchPlan) -> bytes:
    assert plan.spec is not None
    spec = plan.spec
    doc: dict[str, Any] = {
        "ociVersion": spec.oci_version,
        "id": plan.container_id,
        # runc's words: the process is not the workload yet (no exec so far),
        # and its pid is the one it has in its own pid namespace.
        "status": "created",
        "pid": os.getpid(),
        "bundle": spec.bundle,
        "annotations": spec.annotations,
    }
    return jsonio.dumps(doc).encode()


def _write_sysctl(key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise RuntimeFailure(f"write sysctl {key}={value}: {e.strerror}") from None


def _setup_console(plan: LaunchPlan) -> None:
    from pysandbox.oci import console

    assert plan.console is not None
    master, slave_path = console.open_pty("/dev/ptmx")
    size = plan.process.console_size
    if size is not None:
        console.set_winsize(master, size.height, size.width)
    elif os.isatty(0):
        # Started from a terminal (an attached `run`): the workload must see
        # that terminal's size from its first instruction, not once the
        # caller gets round to copying it after `start`.
        with contextlib.suppress(OSError):
            rows, cols = console.get_winsize(0)
            if rows and cols:
                console.set_winsize(master, rows, cols)
    console.send_pty_master(plan.console, master, slave_path)
    plan.console.close()
    # TIOCGPTPEER: the slave of *this* master, whatever sits at its path.
    slave = console.open_pty_slave(master, slave_path)
    os.close(master)
    if plan.rootfs is not None:
        plan.rootfs.bind_console(slave_path)
    console.make_controlling_terminal(slave)  # also closes slave (when above 2)
