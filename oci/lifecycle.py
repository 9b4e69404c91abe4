"""The container lifecycle: create, start, run, state, kill, delete, pause,
resume. Every command that changes a container holds its lock; every failure
before ``create`` returns undoes what it did."""

from __future__ import annotations

import contextlib
import os
import select
import time
from collections.abc import Callable

from pysandbox import OCI_VERSION
from pysandbox.oci import jsonio
from pysandbox.oci import kernel as k
from pysandbox.oci.log import Logger, RuntimeFailure, rfc3339_nano
from pysandbox.oci.records import record
from pysandbox.oci.state import (
    CREATED,
    CREATING,
    EXEC_FIFO,
    PAUSED,
    RUNNING,
    STOPPED,
    ContainerRecord,
    Fragment,
    StateStore,
    cache_dir,
    process_start_time,
    process_state,
    validate_id,
    write_file_atomic,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    import socket
    from collections.abc import Sequence
    from typing import Any

    from pysandbox.oci.cgroups import CgroupManager
    from pysandbox.oci.config import Hook, Mount, Spec
    from pysandbox.oci.overlay import Overlay
    from pysandbox.oci.spawn import Launched
    from pysandbox.policies.compiler import CompiledPolicy


@record
class CreateOptions:
    bundle: str
    pid_file: str | None = None
    console_socket: str | None = None
    no_pivot: bool = False
    preserve_fds: int = 0
    pidfd_socket: str | None = None


class Runtime:
    def __init__(
        self,
        root: str,
        log: Logger,
        *,
        systemd_cgroup: bool = False,
        sandbox: str | None = None,
        profile: str | None = None,
        strace: bool = False,
        debug_log: str = "",
        overlay: str | None = None,
    ) -> None:
        self.store = StateStore(root)
        self.log = log
        self.systemd_cgroup = systemd_cgroup
        # None: not given on the command line (the annotation, then the
        # environment, then the default decide; see sandbox_choice).
        self.sandbox = sandbox
        self.profile = profile
        self.strace = strace  # runsc's --strace: served calls to the sentry's log
        self.debug_log = debug_log  # runsc's --debug-log (%ID% expands)
        self.overlay = overlay  # --overlay; None: annotation, environment, default

    # --- status ------------------------------------------------------------------
    def status(self, rec: ContainerRecord) -> str:
        if rec.status == CREATING:
            return CREATING if rec.pid and self._alive(rec) else STOPPED
        if not rec.pid or not self._alive(rec):
            return STOPPED
        # Frozen wins over created (as in runc): a created container can be
        # paused, and must then read "paused" so that resume accepts it.
        if rec.cgroup:
            with contextlib.suppress(Exception):
                if self._cgroup(rec).is_frozen():
                    return PAUSED
        if os.path.exists(os.path.join(self.store.dir(rec.id), EXEC_FIFO)):
            return CREATED
        return RUNNING

    @staticmethod
    def _alive(rec: ContainerRecord) -> bool:
        if process_start_time(rec.pid) != rec.pid_start:
            return False
        return process_state(rec.pid) not in ("", "Z", "X")

    @staticmethod
    def _cgroup(rec: ContainerRecord) -> CgroupManager:
        from pysandbox.oci.cgroups import manager_from_dict

        return manager_from_dict(rec.cgroup)

    def state_document(self, rec: ContainerRecord, *, owner: str = "") -> dict[str, Any]:
        st = self.status(rec)
        doc: dict[str, Any] = {
            "ociVersion": OCI_VERSION,
            "id": rec.id,
            "pid": rec.pid if st != STOPPED else 0,
            "status": st,
            "bundle": rec.bundle,
            "rootfs": rec.rootfs,
            "created": rfc3339_nano(rec.created_ns),
        }
        if rec.annotations:
            doc["annotations"] = rec.annotations
        doc["owner"] = owner
        return doc

    def state(self, cid: str) -> str:
        rec = self.store.load(cid)
        import json  # indented output: the json module's job, off the start path

        return json.dumps(self.state_document(rec), indent=2)

    # --- create ------------------------------------------------------------------
    def create(self, cid: str, opts: CreateOptions, *, attached: bool = False) -> Launched:
        """Create the container; returns with init blocked on the exec fifo.

        ``attached`` is run's foreground mode: the terminal (if any) is ours.
        """
        from pysandbox.oci.config import ConfigError, load_bundle

        validate_id(cid)
        if self.store.exists(cid):
            raise RuntimeFailure(f"container with id exists: {cid}")
        try:
            spec = load_bundle(opts.bundle)
        except ConfigError as e:
            text = str(e)
            raise RuntimeFailure(
                text if text.startswith(("bundle", "config.json")) else f"config.json: {text}"
            ) from None
        _check_create(spec, opts, attached=attached)
        if self.systemd_cgroup:
            raise RuntimeFailure(
                "systemd cgroup driver requested (--systemd-cgroup) but systemd is not "
                "supported by pysandbox; use the cgroupfs driver"
            )
        from pysandbox.oci.cgroups import CgroupError, new_manager

        try:
            cgroup = new_manager(spec.linux.cgroups_path, cid)
        except CgroupError as e:
            raise RuntimeFailure(str(e)) from None
        seccomp = None
        if spec.linux.seccomp is not None:
            from pysandbox.oci.seccomp import SeccompError, compile_cached

            try:
                seccomp = compile_cached(spec.linux.seccomp, cache_dir(self.store.root))
            except SeccompError as e:
                raise RuntimeFailure(str(e)) from None
        sandbox, profile = sandbox_choice(self.sandbox, self.profile, spec.annotations)
        overlay_text, overlay = overlay_choice(self.overlay, spec.annotations)
        if overlay.medium == "dir" and spec.linux.namespace("user") is not None:
            # The layer is made by host root; a user namespace's root could
            # not write it. Not done yet rather than done wrong.
            raise RuntimeFailure("--overlay root:dir is not supported with a user namespace")
        policy = None
        if sandbox == SANDBOX_SENTRY:
            policy = compile_policy(profile, self.store.root)

        # The lock is held until create returns (init waiting on the fifo) or
        # has undone everything: a concurrent delete waits for either.
        with self.store.creating(cid) as state_dir:
            rec = ContainerRecord(
                id=cid,
                bundle=spec.bundle,
                rootfs=spec.root.path,
                created_ns=time.time_ns(),
                annotations=dict(spec.annotations),
                cgroup=cgroup.to_dict(),
                hooks={
                    "poststart": [_hook_dict(h) for h in spec.hooks.poststart],
                    "poststop": [_hook_dict(h) for h in spec.hooks.poststop],
                },
                namespaces={n.type: n.path or "" for n in spec.linux.namespaces},
                sandbox=sandbox,
                profile=profile if policy is not None else "",
                overlay=overlay_text,
            )
            try:
                self.store.save(rec, partial=True)
                if overlay.medium == "dir":
                    rec.overlay_dir = _make_overlay_dir(overlay.path, cid)
                    self.store.save(rec, partial=True)  # delete must find it
                return self._create_in(
                    state_dir, rec, spec, cgroup, seccomp, opts, attached, policy, overlay
                )
            except BaseException:
                self._teardown(rec, cgroup)
                raise

    def _create_in(
        self,
        state_dir: str,
        rec: ContainerRecord,
        spec: Spec,
        cgroup: CgroupManager,
        seccomp: Any,
        opts: CreateOptions,
        attached: bool,
        policy: CompiledPolicy | None = None,
        overlay: Overlay | None = None,
    ) -> Launched:
        from pysandbox.oci.cgroups import CgroupError, stop_priming
        from pysandbox.oci.overlay import tmpfs_size
        from pysandbox.oci.rootfs import RootfsBuilder
        from pysandbox.oci.spawn import LaunchPlan, launch

        assert spec.process is not None

        def prepare_cgroup() -> None:
            # Runs after stage 1 is forked. mkdir waits for cgroup_mutex, which
            # the warming thread (cli.main) holds while the kernel waits out a
            # grace period; by now that wait has mostly overlapped our work.
            try:
                # Record the directories create() is about to make *before*
                # making them: a create killed half way through the mkdirs must
                # not leave cgroups that delete does not know of. Then record
                # what it really made (a directory made meanwhile by someone
                # else is theirs).
                rec.cgroup = {**cgroup.to_dict(), "created": _planned_cgroup_dirs(cgroup)}
                self.store.save(rec, partial=True)
                cgroup.create()
                rec.cgroup = cgroup.to_dict()
                self.store.save(rec, partial=True)
                cgroup.apply(effective_resources(spec))
            except CgroupError as e:
                raise RuntimeFailure(str(e)) from None

        # exec needs the container's process and seccomp profile; the bundle
        # may be gone by then, so keep a copy.
        write_file_atomic(os.path.join(state_dir, "config.json"), jsonio.dumps(spec.raw))
        fifo = os.path.join(state_dir, EXEC_FIFO)
        os.mkfifo(fifo, 0o622)
        fifo_fd = os.open(fifo, os.O_PATH | os.O_CLOEXEC)
        joins, new_ns = namespace_plan(spec)
        console_sock: socket.socket | None = None
        ours: socket.socket | None = None
        sentry_sock: _socket.socket | None = None
        try:
            if policy is not None:
                sentry_sock = self._start_sentry(state_dir, rec, spec, policy, cgroup)
            if spec.process.terminal:
                if opts.console_socket:
                    from pysandbox.oci.console import connect_console_socket

                    console_sock = connect_console_socket(opts.console_socket)
                else:
                    import socket

                    ours, console_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            user_ns = spec.linux.namespace("user")
            rootfs = None
            mnt = spec.linux.namespace("mount")
            if mnt is not None and not mnt.path:
                rootfs = RootfsBuilder(
                    spec,
                    cgroup_dirs=cgroup_mount_dirs(cgroup),
                    cgroup_mode=cgroup.mode,
                    in_userns=user_ns is not None,
                    new_cgroupns=bool(new_ns & k.CLONE_NEWCGROUP),
                    overlay=overlay,
                    overlay_size=(
                        tmpfs_size(overlay, _memory_limit(spec))
                        if overlay is not None and overlay.medium == "memory"
                        else 0
                    ),
                    overlay_dir=rec.overlay_dir,
                )
            uts = spec.linux.namespace("uts")
            plan = LaunchPlan(
                process=spec.process,
                spec=spec,
                joins=joins,
                new_ns=new_ns,
                uid_mappings=spec.linux.uid_mappings,
                gid_mappings=spec.linux.gid_mappings,
                cgroup=cgroup,
                seccomp=seccomp,
                rootfs=rootfs,
                fifo_fd=fifo_fd,
                console=console_sock,
                preserve_fds=opts.preserve_fds,
                no_pivot=opts.no_pivot,
                hostname=spec.hostname if uts is not None else None,
                domainname=spec.domainname if uts is not None else None,
                sysctl=spec.linux.sysctl,
                personality=spec.linux.personality.domain if spec.linux.personality else None,
                container_id=rec.id,
                sentry_bpf=policy.bpf if policy is not None else None,
                sentry_sock=sentry_sock,
            )

            def on_pid(pid: int) -> None:
                rec.pid = pid
                rec.pid_start = process_start_time(pid)
                self.store.save(rec, partial=True)

            def on_hooks(pid: int) -> bytes:
                state = self._hook_state(rec, "creating", pid)
                if not (spec.hooks.prestart or spec.hooks.create_runtime):
                    return state  # and spare the import of hooks (and subprocess)
                from pysandbox.oci.hooks import HookError, run_hooks

                try:
                    run_hooks(spec.hooks.prestart, state, kind="prestart")
                    run_hooks(spec.hooks.create_runtime, state, kind="createRuntime")
                except HookError as e:
                    raise RuntimeFailure(str(e)) from None
                return state

            try:
                launched = launch(
                    plan,
                    on_pid=on_pid,
                    on_hooks=on_hooks,
                    prepare_cgroup=prepare_cgroup,
                    # the gofer's modules (~5 ms) load while init builds its root
                    while_init_builds=_import_gofer if rootfs is not None and policy else None,
                )
            finally:
                stop_priming()
            if sentry_sock is not None:
                # Only now: init has joined the container's cgroup, which
                # the sentry's task table reads as the container's.
                from pysandbox.sentry.service import send_init_pid

                send_init_pid(sentry_sock, launched.pid)
                if rootfs is not None:
                    self._start_gofer(
                        state_dir,
                        rec,
                        launched.pid,
                        sentry_sock,
                        readonly=spec.root.readonly,
                        spec_mounts=spec.mounts,
                    )
        finally:
            os.close(fifo_fd)
            if console_sock is not None:
                console_sock.close()
            if sentry_sock is not None:
                sentry_sock.close()
        launched.console = ours
        rec.status = CREATED
        rec.console_used = spec.process.terminal
        self.store.save(rec)
        if opts.pid_file:
            write_file_atomic(opts.pid_file, str(launched.pid))
        if opts.pidfd_socket:
            send_pidfd(opts.pidfd_socket, launched.pid)
        launched.ack()
        return launched

    def _start_sentry(
        self,
        state_dir: str,
        rec: ContainerRecord,
        spec: Spec,
        policy: CompiledPolicy,
        cgroup: CgroupManager,
    ) -> _socket.socket:
        """Fork the sentry (sentry/service.py); record it before anything else
        can fail, so delete finds it. Returns the socket init sends its listener on."""
        from pysandbox.sentry import service

        uts_ns = spec.linux.namespace("uts")
        if uts_ns is not None and uts_ns.path:  # a pod's: the names it already has
            hostname, domainname = uts_names(uts_ns.path)
        elif uts_ns is not None:
            hostname = spec.hostname or ""
            domainname = spec.domainname or "(none)"
        else:  # the host's UTS namespace: the host's names
            hostname, domainname = os.uname().nodename, "(none)"
        personality = spec.linux.personality.domain if spec.linux.personality else ""
        from pysandbox.oci.cgroups import limit_files

        dirs, roots = _limit_dirs(cgroup)
        mnt_ns = spec.linux.namespace("mount")
        options = service.SentryOptions(
            hostname=hostname,
            domainname=domainname,
            machine="i686" if personality == "LINUX32" else "x86_64",
            state_dir=state_dir,
            cgroup_dir=cgroup.main_dir(),
            strace=self.strace,
            debug_log=service.debug_log_path(self.debug_log, rec.id, state_dir),
            resource_files=tuple(sorted(limit_files(cgroup.mode, dirs).items())),
            cgroup_roots=roots,
            masked_paths=tuple(spec.linux.masked_paths),
            # Only a container with a mount namespace of its own gets a gofer
            # and a read-only kernel view of its root (_start_gofer); in any
            # other the kernel's ro/rw is already the truth.
            root_readonly=spec.root.readonly or mnt_ns is None or bool(mnt_ns.path),
        )
        pid, sock = service.start(state_dir, policy.routing, options)
        rec.sentry_pid = pid
        rec.sentry_start = process_start_time(pid)
        try:
            self.store.save(rec, partial=True)
        except BaseException:
            sock.close()
            raise
        return sock

    def _start_gofer(
        self,
        state_dir: str,
        rec: ContainerRecord,
        init_pid: int,
        sentry_sock: _socket.socket,
        *,
        readonly: bool,
        spec_mounts: Sequence[Mount],
    ) -> None:
        """Start the container's gofer in init's finished mount namespace and hand
        it to the sentry. Init waits (for ``ack``) meanwhile, so the workload
        runs nothing before the kernel's view of its root and of the other
        mounts the gofer serves (gofer/mounts.py) is read-only."""
        from pysandbox.gofer import process as gofer_process
        from pysandbox.gofer.mounts import mountinfo_mounts, plan_mounts
        from pysandbox.oci.state import cache_dir
        from pysandbox.sentry.service import debug_log_path, send_gofer

        # init has pivoted: its mountinfo names the mounts as the container does
        plan = plan_mounts(
            mountinfo_mounts(f"/proc/{init_pid}/mountinfo"),
            [m.destination for m in spec_mounts if m.type == "tmpfs"],
            f"/proc/{init_pid}/root",
        )
        served = [
            gofer_process.MountSource(m.point, m.readonly, m.point, m.file, m.flags)
            for m in plan.served
        ]
        log_fd = os.open(
            debug_log_path(self.debug_log, rec.id, state_dir),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o600,
        )
        try:
            gofer = gofer_process.start(
                "/",
                readonly=readonly,  # spec's root.readonly: the gofer writes nothing either
                mounts=served,
                mount_ns_of=init_pid,
                kernel_mounts=plan.kernel,
                readonly_view=True,
                log_fd=log_fd,
                cache_dir=cache_dir(os.path.dirname(state_dir)),
            )
        except RuntimeError as e:
            raise RuntimeFailure(str(e)) from None
        finally:
            os.close(log_fd)
        try:
            rec.gofer_pid = gofer.pid
            rec.gofer_start = process_start_time(gofer.pid)
            self.store.save(rec, partial=True)
            send_gofer(sentry_sock, gofer.sock, gofer.pid, plan)
        finally:
            gofer.sock.close()  # the sentry's copy is the only one: the gofer ends with it

    def _hook_state(self, rec: ContainerRecord, status: str, pid: int) -> bytes:
        doc = {
            "ociVersion": OCI_VERSION,
            "id": rec.id,
            "status": status,
            "pid": pid,
            "bundle": rec.bundle,
            "annotations": rec.annotations,
        }
        return jsonio.dumps(doc).encode()

    def _teardown(self, rec: ContainerRecord, cgroup: CgroupManager | None) -> None:
        """Undo a create that failed half way; must not raise."""
        if rec.pid and self._alive(rec):
            with contextlib.suppress(OSError):
                os.kill(rec.pid, k.SIGKILL)
        kill_sentry(rec, self.store.dir(rec.id))
        if cgroup is not None:
            with contextlib.suppress(Exception):
                cgroup.destroy()
        _remove_overlay_dir(rec)
        with contextlib.suppress(OSError):
            self.store.remove(rec.id)

    # --- start ---------------------------------------------------------------------
    def start(self, cid: str) -> None:
        with self.store.locked(cid):
            rec = self.store.load(cid)
            st = self.status(rec)
            if st == STOPPED:
                raise RuntimeFailure("cannot start a container that has stopped")
            if st == PAUSED:
                raise RuntimeFailure("cannot start a container in the paused state")
            if st != CREATED:
                raise RuntimeFailure("cannot start an already running container")
            # poststart hooks run once the workload is executed (the spec's
            # order): start then waits for init's end of the fifo to close
            self._release_fifo(rec, until_exec=bool(rec.hooks.get("poststart")))
        self._run_poststart(rec)

    def _release_fifo(self, rec: ContainerRecord, until_exec: bool = False) -> None:
        """Let init past the exec fifo: read its byte, then remove the fifo.
        ``until_exec``: then wait until init's end closes, which its execve of
        the workload does (close-on-exec; after the startContainer hooks), or
        its death.

        A start killed after the read but before the unlink leaves a fifo
        nobody will ever write to again; init has gone on to exec the
        workload. The next start sees that init no longer holds the fifo
        open and only finishes the job, instead of waiting forever.
        """
        path = os.path.join(self.store.dir(rec.id), EXEC_FIFO)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fifo = os.fstat(fd)
            while True:
                ready, _, _ = select.select([fd], [], [], 0.05)
                if ready:
                    try:
                        data = os.read(fd, 1)
                    except BlockingIOError:
                        data = b""
                    if data:
                        if until_exec:
                            _wait_for_eof(fd)
                        break
                if not self._alive(rec):
                    raise RuntimeFailure("cannot start a container that has stopped")
                if not _holds_open(rec.pid, fifo):
                    break  # released by an earlier start that did not finish
                if ready:
                    # EOF: a writer came and went; wait for init's open.
                    time.sleep(0.001)
        finally:
            os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def _run_poststart(self, rec: ContainerRecord) -> None:
        hooks = rec.hooks.get("poststart") or []
        if not hooks:
            return
        from pysandbox.oci.hooks import run_hooks

        state = self._hook_state(rec, RUNNING, rec.pid)
        run_hooks(
            [_hook_from(h) for h in hooks],
            state,
            kind="poststart",
            warn_only=True,
            warn=self.log.warning,
        )

    # --- kill ----------------------------------------------------------------------
    def kill(self, cid: str, sig: int, *, all_processes: bool = False) -> None:
        rec = self.store.load(cid)
        st = self.status(rec)
        if st not in (CREATED, RUNNING, PAUSED):
            raise RuntimeFailure("container not running")
        if all_processes and rec.cgroup:
            cg = self._cgroup(rec)
            try:
                cg.kill_all(sig)
                if st == PAUSED and sig == k.SIGKILL:
                    cg.thaw()
            except Exception:
                if cg.exists():
                    raise
                # A concurrent delete removed the cgroup: the container is gone.
                raise RuntimeFailure("container not running") from None
            return
        pidfd = os.pidfd_open(rec.pid)
        try:
            # The pidfd pins the process: a recycled pid cannot be signalled by mistake.
            if process_start_time(rec.pid) != rec.pid_start:
                raise RuntimeFailure("container not running")
            try:
                k.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:
                raise RuntimeFailure("container not running") from None
        finally:
            os.close(pidfd)
        if st == PAUSED and sig == k.SIGKILL and rec.cgroup:
            # A frozen task cannot act on SIGKILL: thaw so it dies now (runc does too).
            cg = self._cgroup(rec)
            with contextlib.suppress(Exception):
                cg.thaw()

    # --- delete --------------------------------------------------------------------
    def delete(self, cid: str, *, force: bool = False) -> None:
        validate_id(cid)
        if not self.store.exists(cid):
            if force:
                return
            raise RuntimeFailure("container does not exist")
        try:
            with self.store.locked(cid):
                try:
                    rec = self.store.load(cid)
                except RuntimeFailure:
                    # A create killed before it wrote anything: the directory
                    # and its lock file, nothing else.
                    self.store.remove(cid)
                    return
                st = self.status(rec)
                if st in (RUNNING, PAUSED) and not force:
                    raise RuntimeFailure(f"cannot delete container {cid} that is not stopped: {st}")
                self.destroy(rec)
        except Fragment:
            # A create killed between its mkdir and its lock file.
            self.store.remove(cid)
        except RuntimeFailure:
            # Another delete won the race: with --force that is success too.
            if force and not self.store.exists(cid):
                return
            raise

    def destroy(self, rec: ContainerRecord) -> None:
        """Kill whatever is left, remove the cgroup, run poststop, drop the state."""
        cg = self._cgroup(rec) if rec.cgroup else None
        if rec.pid and self._alive(rec):
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec.pid, k.SIGKILL)
        kill_sentry(rec, self.store.dir(rec.id))
        # An empty cgroup (the common case: init has exited) needs no freezing
        # and signalling, and each freezer round trip costs milliseconds.
        if cg is not None and _has_processes(cg):
            with contextlib.suppress(Exception):
                cg.thaw()
            with contextlib.suppress(Exception):
                cg.kill_all(k.SIGKILL)
        _wait_gone(rec, 5.0)
        if cg is not None:
            try:
                cg.destroy()
            except Exception as e:
                self.log.warning(f"removing cgroup {cg.path}: {e}")
        _remove_overlay_dir(rec)
        if rec.status != CREATING:
            hooks = rec.hooks.get("poststop") or []
            if hooks:
                from pysandbox.oci.hooks import run_hooks

                state = self._hook_state(rec, STOPPED, 0)
                run_hooks(
                    [_hook_from(h) for h in hooks],
                    state,
                    kind="poststop",
                    warn_only=True,
                    warn=self.log.warning,
                )
        self.store.remove(rec.id)

    # --- pause / resume ------------------------------------------------------------
    def pause(self, cid: str) -> None:
        with self.store.locked(cid):
            rec = self.store.load(cid)
            st = self.status(rec)
            if st not in (RUNNING, CREATED):
                raise RuntimeFailure("container not running")
            self._cgroup(rec).freeze()

    def resume(self, cid: str) -> None:
        with self.store.locked(cid):
            rec = self.store.load(cid)
            if self.status(rec) != PAUSED:
                raise RuntimeFailure("container not paused")
            self._cgroup(rec).thaw()

    # --- run -----------------------------------------------------------------------
    def run(self, cid: str, opts: CreateOptions, *, detach: bool, keep: bool = False) -> int:
        if not detach:
            # Init is stage 1's child; as subreaper we inherit it and can wait for it.
            k.prctl(k.PR_SET_CHILD_SUBREAPER, 1)
        launched = self.create(cid, opts, attached=not detach)
        if not detach:
            # Before start: once the workload runs, a signal meant for it must
            # not find us with default dispositions (and kill us instead).
            forward_signals(launched.pid)
        try:
            self.start(cid)
        except BaseException:
            with contextlib.suppress(Exception):
                self.destroy(self.store.load(cid))
            raise
        if detach:
            return 0
        rec = self.store.load(cid)
        try:
            return wait_foreground(launched, self.log)
        finally:
            if not keep:
                with self.store.locked(cid):
                    self.destroy(rec)


SANDBOX_SENTRY = "sentry"
SANDBOX_NONE = "none"
SANDBOXES = (SANDBOX_SENTRY, SANDBOX_NONE)
SANDBOX_ANNOTATION = "io.github.pysandbox.sandbox"
PROFILE_ANNOTATION = "io.github.pysandbox.profile"
SANDBOX_ENV = "PYSANDBOX_SANDBOX"
DEFAULT_SANDBOX = SANDBOX_SENTRY
DEFAULT_PROFILE = "default"


OVERLAY_ANNOTATION = "io.github.pysandbox.overlay"
OVERLAY_ENV = "PYSANDBOX_OVERLAY"


def overlay_choice(flag: str | None, annotations: dict[str, str]) -> tuple[str, Overlay]:
    """(text, parsed) --overlay for a new container: the command line, then the
    annotation, then $PYSANDBOX_OVERLAY, then root:memory (as sandbox_choice).

    An annotation comes with the container (a pod spec, an image's labels), so
    it may not name a host directory: root:dir only from the command line or
    the environment, which are the administrator's."""
    from pysandbox.oci.overlay import DEFAULT_OVERLAY, OverlayError, parse_overlay

    annotated = annotations.get(OVERLAY_ANNOTATION)
    text = flag or annotated or os.environ.get(OVERLAY_ENV) or DEFAULT_OVERLAY
    try:
        overlay = parse_overlay(text)
    except OverlayError as e:
        raise RuntimeFailure(str(e)) from None
    if not flag and text == annotated and overlay.medium == "dir":
        raise RuntimeFailure(
            f"the {OVERLAY_ANNOTATION} annotation may not choose root:dir"
            " (a host directory): use --overlay or $PYSANDBOX_OVERLAY"
        )
    return text, overlay


def _make_overlay_dir(parent: str, cid: str) -> str:
    """root:dir's layer for this container, made here and nowhere else: a path
    that already exists is refused, so delete only ever removes our own."""
    path = os.path.join(parent, cid)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        raise RuntimeFailure(f"overlay directory {path} already exists") from None
    return path


def _memory_limit(spec: Spec) -> int | None:
    resources = spec.linux.resources or {}
    memory = resources.get("memory") or {}
    limit = memory.get("limit")
    return limit if isinstance(limit, int) and limit > 0 else None


def _remove_overlay_dir(rec: ContainerRecord) -> None:
    """root:dir's upper layer of this container (its mount namespace is gone)."""
    if rec.overlay_dir:
        import shutil

        shutil.rmtree(rec.overlay_dir, ignore_errors=True)


def sandbox_choice(
    flag: str | None, profile_flag: str | None, annotations: dict[str, str]
) -> tuple[str, str]:
    """(sandbox, profile) for a new container.

    The command line wins (the engine's administrator put it there, e.g. in
    docker's runtimeArgs), then the container's annotation, then
    $PYSANDBOX_SANDBOX, then the default. A workload's annotation therefore
    cannot turn off a sandbox the command line asked for.
    """
    sandbox = (
        flag
        or annotations.get(SANDBOX_ANNOTATION)
        or os.environ.get(SANDBOX_ENV)
        or DEFAULT_SANDBOX
    )
    if sandbox not in SANDBOXES:
        raise RuntimeFailure(f"invalid sandbox {sandbox!r}: sentry or none")
    profile = profile_flag or annotations.get(PROFILE_ANNOTATION) or DEFAULT_PROFILE
    if os.sep in profile or profile.endswith(".toml"):
        profile = os.path.abspath(profile)  # exec must find it from anywhere
    return sandbox, profile


def compile_policy(profile: str, root: str) -> CompiledPolicy:
    """Load and compile a sandbox profile (BPF cached, see state.cache_dir).

    Loading a profile (tomllib, the syscall table, validation) costs ~18 ms,
    on every create and exec; so the result (BPF + routing) is also kept
    under a key made of the identity (path, size, mtime) of every file it can
    depend on, as Python does for its bytecode, and then costs ~0.3 ms.
    """
    from pysandbox.oci.seccomp import read_cached_bpf, read_trusted, write_cached_bpf
    from pysandbox.policies.compiler import CompiledPolicy, PolicyError, compile_cached

    cache = cache_dir(root)
    key = _policy_key(profile)
    index_path = os.path.join(cache, f"policy-index-{key}.json")
    bpf_path = os.path.join(cache, f"policy-index-{key}.bpf")
    index = read_trusted(index_path)
    bpf = read_cached_bpf(bpf_path) if index is not None else None
    if index is not None and bpf is not None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            doc = jsonio.loads(index.decode())
            routing = {int(nr): str(name) for nr, name in doc["routing"].items()}
            return CompiledPolicy(
                bpf, routing, bool(doc["needs_listener"]), str(doc["profile"]), str(doc["digest"])
            )
    from pysandbox.policies.compiler import load_profile

    try:
        policy = compile_cached(load_profile(profile), cache)
    except PolicyError as e:
        raise RuntimeFailure(str(e)) from None
    doc = {
        "routing": {str(nr): name for nr, name in policy.routing.items()},
        "needs_listener": policy.needs_listener,
        "profile": policy.profile,
        "digest": policy.digest,
    }
    text = jsonio.dumps(doc).encode()
    write_cached_bpf(bpf_path, policy.bpf)
    write_cached_bpf(index_path, text)  # (an atomic write of any bytes)
    return policy


_POLICY_INDEX_FORMAT = "pysandbox-policy-index-1"


def _policy_key(profile: str) -> str:
    """sha256 over the identity of every file a compiled profile depends on: the
    bundled profiles and constants, the syscall table, and for a profile given
    by path, every TOML file next to it (what it may extend)."""
    # Paths, not imports (this runs on every sandboxed create and exec).
    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    here = os.path.join(pkg, "policies")
    dirs = [here]
    if os.sep in profile or profile.endswith(".toml"):
        dirs.append(os.path.dirname(os.path.abspath(profile)))
    parts = [_POLICY_INDEX_FORMAT, profile]
    files = [os.path.join(pkg, "syscalls", "x86_64.tsv")]
    for d in dirs:
        with contextlib.suppress(OSError):
            files += sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".toml"))
    files += [os.path.join(here, "compiler.py")]
    for path in files:
        try:
            st = os.stat(path)
            parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
        except OSError:
            parts.append(f"{path}:-")
    return jsonio.sha256_hex("\n".join(parts).encode())


def uts_names(ns_path: str) -> tuple[str, str]:
    """(hostname, domainname) of the UTS namespace at ``ns_path``.

    Read from a thread that joins it: setns moves only the calling thread,
    which then ends, so no fork is needed (CRI joins every container of a
    pod to the pod's UTS namespace, whose names config.json does not repeat).
    """
    import threading

    found: list[tuple[str, str]] = []

    def read() -> None:
        fd = os.open(ns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            k.setns(fd, k.CLONE_NEWUTS)
        finally:
            os.close(fd)
        with open("/proc/sys/kernel/domainname") as f:  # as this thread sees it
            domain = f.read().strip()
        found.append((os.uname().nodename, domain))

    t = threading.Thread(target=read, name="uts-names")
    t.start()
    t.join()
    if not found:
        raise RuntimeFailure(f"cannot read the UTS namespace {ns_path}")
    return found[0]


def _limit_dirs(cgroup: CgroupManager) -> tuple[dict[str, str], tuple[str, ...]]:
    """The container's cgroup directory per controller that holds a limit the
    sentry reports (/proc/meminfo, cpuinfo, sysinfo), and their hierarchies."""
    if cgroup.mode == "v2":
        from pysandbox.oci.cgroups.v2 import V2Manager

        assert isinstance(cgroup, V2Manager)
        return {"unified": cgroup.main_dir()}, (cgroup.mountpoint,)
    from pysandbox.oci.cgroups.v1 import V1Manager

    assert isinstance(cgroup, V1Manager)
    subs = [s for s in ("memory", "cpu", "cpuset") if cgroup.has(s)]
    roots = tuple(sorted({cgroup.mounts[s] for s in subs}))
    return {s: cgroup.dir(s) for s in subs}, roots


def kill_sentry(rec: ContainerRecord, state_dir: str, timeout: float = 5.0) -> None:
    """SIGKILL the container's sentry, its watchdog and its gofer if they are
    still there, and wait for all to go (the watchdog's pid is in the state dir: the
    sentry forks it after create has saved the state)."""
    if not rec.sentry_pid:
        return
    pidfds: list[int] = []
    try:
        # The sentry first: the watchdog's pid is read after it can no longer
        # fork one. All exits are then waited for together.
        _kill_pinned(rec.sentry_pid, rec.sentry_start, pidfds)
        if rec.gofer_pid:
            _kill_pinned(rec.gofer_pid, rec.gofer_start, pidfds)
        from pysandbox.sentry.service import read_watchdog

        watchdog = read_watchdog(state_dir)
        if watchdog is not None:
            _kill_pinned(*watchdog, pidfds)
        deadline = time.monotonic() + timeout
        waiting = list(pidfds)
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _w, _x = select.select(waiting, [], [], left)  # readable once exited
            waiting = [fd for fd in waiting if fd not in ready]
    finally:
        for fd in pidfds:
            os.close(fd)


def _import_gofer() -> None:
    """Import the gofer's modules (create forks it from this process once init
    has built its root). Called while init builds, on create's own thread: a
    thread importing beside it would hold the GIL for its 5 ms switch
    intervals while create has work to do."""
    import pysandbox.gofer.process  # noqa: F401


def _wait_for_eof(fd: int) -> None:
    """Read the (non-blocking) fifo ``fd`` until every writer has closed it."""
    while True:
        select.select([fd], [], [])
        try:
            if not os.read(fd, 64):
                return
        except BlockingIOError:
            continue


def _kill_pinned(pid: int, start: int, pidfds: list[int]) -> None:
    """SIGKILL ``pid`` if it is still the process that started at ``start`` (a
    pidfd pins it, so the check cannot race a reuse); its pidfd goes to
    ``pidfds`` (the caller's to wait on and close)."""
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return  # gone (or reaped) already
    try:
        same = process_start_time(pid) == start
    except OSError:
        same = False  # gone between the two calls
    if not same:
        os.close(pidfd)
        return
    pidfds.append(pidfd)
    with contextlib.suppress(ProcessLookupError):
        k.pidfd_send_signal(pidfd, k.SIGKILL)


_FORWARDED = (k.SIGINT, k.SIGTERM, k.SIGHUP, k.SIGQUIT, k.SIGUSR1, k.SIGUSR2, k.SIGWINCH)


def forward_signals(pid: int) -> None:
    """From now on, the signals a foreground runtime receives go to pid."""

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for s in _FORWARDED:
        k.set_signal_handler(s, forward)


def wait_foreground(launched: Launched, log: Logger) -> int:
    """Forward signals to the container process and return its exit code."""
    pid = launched.pid
    forward_signals(pid)
    if launched.console is not None:
        from pysandbox.oci.console import proxy_terminal, recv_pty_master

        master, _name = recv_pty_master(launched.console)
        launched.console.close()
        k.set_signal_handler(k.SIGWINCH, None)
        proxy_terminal(master, child_alive=lambda: process_state(pid) not in ("", "Z"))
        os.close(master)
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            log.warning("container process vanished without an exit status")
            return 255
        if got == pid:
            return (
                os.waitstatus_to_exitcode(status)
                if os.WIFEXITED(status)
                else 128 + os.WTERMSIG(status)
            )


def send_pidfd(path: str, pid: int) -> None:
    """runc's --pidfd-socket: one message on the caller's unix socket carrying
    a pidfd of the container's init (SCM_RIGHTS), so the caller can wait for
    and signal it without pid-reuse races."""
    import array
    import socket

    pidfd = os.pidfd_open(pid)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(path)
            except OSError as e:
                raise RuntimeFailure(f"pidfd socket {path}: {e.strerror}") from None
            fds = array.array("i", [pidfd])
            sock.sendmsg([b"pidfd"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds.tobytes())])
    finally:
        os.close(pidfd)


def _has_processes(cg: CgroupManager) -> bool:
    try:
        return bool(cg.pids())
    except Exception:
        return True  # unknown: take the thorough path


def _holds_open(pid: int, target: os.stat_result) -> bool:
    """Whether process pid has an fd on the same file as target.

    Errors count as "yes": only a clear "no" may change what we do.
    """
    fd_dir = f"/proc/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return True
    for name in names:
        try:
            st = os.stat(os.path.join(fd_dir, name))
        except OSError:
            continue
        if st.st_ino == target.st_ino and st.st_dev == target.st_dev:
            return True
    return False


def _wait_gone(rec: ContainerRecord, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while rec.pid and process_start_time(rec.pid) == rec.pid_start:
        if process_state(rec.pid) in ("", "Z", "X"):
            return
        if time.monotonic() > deadline:
            return
        time.sleep(0.002)


def _check_create(spec: Spec, opts: CreateOptions, *, attached: bool) -> None:
    proc = spec.process
    if proc is None:
        raise RuntimeFailure("config.json: process: must be set to create a container")
    if proc.terminal and not opts.console_socket and not attached:
        raise RuntimeFailure(
            "cannot allocate tty if runc will detach without setting console socket"
        )
    if not proc.terminal and opts.console_socket:
        raise RuntimeFailure("cannot use console socket if runc will not detach or allocate tty")
    types = {n.type: n for n in spec.linux.namespaces}
    mnt = types.get("mount")
    if mnt is None:
        raise RuntimeFailure("config.json: linux.namespaces: a mount namespace is required")
    if spec.hostname and "uts" not in types:
        raise RuntimeFailure("unable to set hostname without a private UTS namespace")
    if spec.domainname and "uts" not in types:
        raise RuntimeFailure("unable to set domainname without a private UTS namespace")
    if "user" in types and not types["user"].path and not spec.linux.uid_mappings:
        raise RuntimeFailure(
            "config.json: linux.uidMappings: a new user namespace needs uid mappings"
        )
    for key in spec.linux.sysctl:
        if key.startswith("net.") and "network" not in types:
            raise RuntimeFailure(f"sysctl {key!r} is not allowed in the host's network namespace")
    if opts.preserve_fds < 0:
        raise RuntimeFailure("--preserve-fds must not be negative")


# Devices every container may use, appended after the spec's own rules as runc
# does: mknod of anything (the node is useless without rw), the standard
# character devices, ptys and tun.
_DEFAULT_DEVICE_RULES: tuple[tuple[str, int | None, int | None, str], ...] = (
    ("c", None, None, "m"),
    ("b", None, None, "m"),
    ("c", 1, 3, "rwm"),
    ("c", 1, 8, "rwm"),
    ("c", 1, 7, "rwm"),
    ("c", 5, 0, "rwm"),
    ("c", 1, 5, "rwm"),
    ("c", 1, 9, "rwm"),
    ("c", 5, 1, "rwm"),
    ("c", 136, None, "rwm"),
    ("c", 5, 2, "rwm"),
    ("c", 10, 200, "rwm"),
)


def effective_resources(spec: Spec) -> dict[str, Any]:
    """linux.resources with the device rules completed: the spec's rules, an
    allow rule per linux.devices entry, then the defaults."""
    res = dict(spec.linux.resources or {})
    rules: list[dict[str, Any]] = list(res.get("devices") or [])
    for d in spec.linux.devices:
        rules.append(
            {"allow": True, "type": d.type, "major": d.major, "minor": d.minor, "access": "rwm"}
        )
    for typ, major, minor, access in _DEFAULT_DEVICE_RULES:
        rule: dict[str, Any] = {"allow": True, "type": typ, "access": access}
        if major is not None:
            rule["major"] = major
        if minor is not None:
            rule["minor"] = minor
        rules.append(rule)
    res["devices"] = rules
    return res


def namespace_plan(spec: Spec) -> tuple[list[tuple[int, str]], int]:
    """(namespaces to join, user first; CLONE_NEW* flags to create)."""
    joins: list[tuple[int, str]] = []
    new = 0
    for ns in spec.linux.namespaces:
        flag = k.NAMESPACES[ns.type][0]
        if ns.path:
            if not os.path.exists(ns.path):
                raise RuntimeFailure(
                    f"namespace {ns.type} path {ns.path}: no such file or directory"
                )
            joins.append((flag, ns.path))
        else:
            new |= flag
    joins.sort(key=lambda j: 0 if j[0] == k.CLONE_NEWUSER else 1)
    return joins, new


def _planned_cgroup_dirs(cgroup: CgroupManager) -> list[str]:
    """The directories ``cgroup.create()`` would make now, top first."""
    d = cgroup.to_dict()
    if d.get("mode") == "v1":
        bases = list(dict.fromkeys((d.get("mounts") or {}).values()))
    else:
        bases = [str(d.get("mountpoint") or "")]
    parts = [p for p in str(d.get("path") or "").split("/") if p]
    planned: list[str] = []
    for base in bases:
        if not base:
            continue
        current = base
        for part in parts:
            current = os.path.join(current, part)
            if current not in planned and not os.path.isdir(current):
                planned.append(current)
    return planned


def cgroup_mount_dirs(cgroup: CgroupManager) -> dict[str, str]:
    """Where the container's cgroup lives in each hierarchy (for the cgroup mount)."""
    dirs_of: Callable[[], dict[str, str]] | None = getattr(cgroup, "mount_dirs", None)
    if dirs_of is not None:
        return dirs_of()
    return {"": cgroup.main_dir()}


def _hook_dict(h: Hook) -> dict[str, Any]:
    return {"path": h.path, "args": h.args, "env": h.env, "timeout": h.timeout}


def _hook_from(d: dict[str, Any]) -> Hook:
    from pysandbox.oci.config import Hook

    return Hook(
        path=d["path"],
        args=list(d.get("args") or []),
        env=list(d.get("env") or []),
        timeout=d.get("timeout"),
    )


def parse_signal(text: str) -> int:
    """A signal as number or name (KILL, SIGKILL, 9), as runc accepts it."""
    t = text.strip().upper()
    if t.isdigit():
        num = int(t)
        if 0 <= num < 65:  # 0 probes, as kill(2) does
            return num
        raise RuntimeFailure(f"unknown signal {text!r}")
    if not t.startswith("SIG"):
        t = "SIG" + t
    try:
        import signal

        return int(signal.Signals[t])
    except KeyError:
        raise RuntimeFailure(f"unknown signal {text!r}") from None
