"""The per-container sentry process (the default; ``--sandbox none`` opts out).

``create`` calls :func:`start` before it forks the container's init:

    create ──fork── sentry: imports the loop and the handlers first, forks the
      │              watchdog (sentry/watchdog.py: if the sentry dies, the
      │              container is killed), confines itself, reads init's host
      │              pid (sent by create, :func:`send_init_pid`), then waits for
      │              init's listener fd, and accepts more listener fds (one per
      │              ``exec``) and stats requests on ``<state dir>/sentry.sock``
      └─ init: at the very end, just before execve, loads the profile's filter
               with SECCOMP_FILTER_FLAG_NEW_LISTENER and sends the listener
               over the socketpair (oci/spawn.py, ``_join_sentry``)

The sentry outlives create (it is reparented like init). It stays *outside*
the container's cgroup: ``ps``, ``kill --all``, ``docker top`` and the pids
and memory limits see the workload only, as under runc. Its pid and start
time are in the container's state and the watchdog's in ``watchdog.pid``, so
``delete`` kills both explicitly. The sentry exits by itself when its last
listener hangs up (every sandboxed process is gone), or when init's end of
the socketpair closes before a listener came (create failed).

Routing
-------
Every number the profile routes to the sentry gets a handler
(syscalls/routes.py). The path-taking calls go through the container's gofer
(syscalls/files.py), which create starts once init's mount namespace is
finished and hands over on the same socketpair (``G<pid>`` with the socket,
after ``P<pid>``). A routed call no handler serves yet (bind on an AF_UNIX
path, sync, the ioctl requests outside the allowed sets) is answered by
:func:`passthrough`: SECCOMP_USER_NOTIF_FLAG_CONTINUE *without reading any
argument*. That decides nothing, so for those calls the sandbox is exactly
the ``host`` disposition, no weaker; docs/SECURITY.md lists them.
"""

from __future__ import annotations

import _socket  # the C core: the socket module's enums cost ~3 ms at import
import contextlib
import os

from pysandbox.oci.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Final

    from pysandbox.gofer.mounts import MountPlan

    from .loop import Call, Handler, Result

__all__ = ["SENTRY_SOCKET", "build_routes", "passthrough", "start"]

SENTRY_SOCKET: Final = "sentry.sock"
SENTRY_LOG: Final = "sentry.log"
WATCHDOG_PID: Final = "watchdog.pid"
NODE_DIR: Final = "/sys/devices/system/node"  # getcpu's NUMA node
_AF_UNIX: Final = 1
_SOCK_SEQPACKET: Final = 5
_SOL_SOCKET: Final = 1
_SCM_RIGHTS: Final = 1


def passthrough(call: Call) -> Result:
    """Answer a routed call that has no handler yet: the kernel runs it.

    Reads no argument and decides nothing: the call behaves exactly as if the
    profile had given it the ``host`` disposition. Rule 1 (DESIGN.md) is about
    CONTINUE *after* inspecting memory the workload can change; nothing is
    inspected here. Transitional until the fs/process handlers exist.
    """
    from .loop import CONTINUE

    return CONTINUE


def build_routes(routing: Mapping[int, str], served: Mapping[int, Handler]) -> dict[int, Handler]:
    """A handler for every routed number: the served one, else :func:`passthrough`."""
    return {nr: served.get(nr, passthrough) for nr in routing}


@record
class SentryOptions:
    """What create tells the sentry about its container."""

    hostname: str
    domainname: str
    machine: str  # uname's: i686 under the LINUX32 personality
    state_dir: str  # the container's: the watchdog's pid goes there
    cgroup_dir: str  # the container's cgroup: the watchdog kills what it holds
    # the sentry's log (tracebacks, strace lines): see debug_log_path
    debug_log: str
    # --strace: one line per served call to the debug log
    strace: bool = False
    # the container's limits: {what: cgroup file} (oci/cgroups.limit_files)
    resource_files: tuple[tuple[str, str], ...] = ()
    # cgroup hierarchies the confined sentry may read (the limits' files are
    # made after the sentry confines itself)
    cgroup_roots: tuple[str, ...] = ()
    # the spec's maskedPaths: the sentry serves none of them
    masked_paths: tuple[str, ...] = ()
    # False when the workload may write its root although the kernel's view of
    # it is read-only (the spec's root is writable and a gofer serves it): the
    # mount tables then say "rw" for / (syscalls/procfs.py)
    root_readonly: bool = True


def debug_log_path(pattern: str, container_id: str, state_dir: str) -> str:
    """--debug-log as runsc takes it: ``%ID%`` is the container id; a path
    ending in "/" is a directory that gets one file per container."""
    if not pattern:
        return os.path.join(state_dir, SENTRY_LOG)
    path = pattern.replace("%ID%", container_id)
    if path.endswith("/"):
        path = os.path.join(path, f"{container_id}.sentry.log")
    return path


def start(
    state_dir: str, routing: Mapping[int, str], options: SentryOptions
) -> tuple[int, _socket.socket]:
    """Fork the sentry; return (its pid, the end of the socketpair init sends on).

    The control socket is bound here, before the fork, so ``exec`` can find
    it as soon as create returns. The caller sends init's pid on the returned
    socket (:func:`send_init_pid`), passes it to init, and closes its own copy
    once init has been forked.
    """
    ours, theirs = _socket.socketpair(_AF_UNIX, _SOCK_SEQPACKET)
    control = _socket.socket(_AF_UNIX, _SOCK_SEQPACKET)
    log_fd = -1
    try:
        path = os.path.join(state_dir, SENTRY_SOCKET)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        with short_path(state_dir, SENTRY_SOCKET) as short:
            control.bind(short)
        os.chmod(path, 0o600)
        control.listen(16)
        log_fd = os.open(
            options.debug_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
    except BaseException:
        for s in (ours, theirs, control):
            s.close()
        raise
    pid = os.fork()
    if pid == 0:  # the sentry: never returns
        code = 1
        try:
            theirs.detach()  # not ours to close: the number may be reused below
            code = _main(ours, control, log_fd, dict(routing), options)
        except BaseException as e:
            with contextlib.suppress(Exception):
                os.write(2, f"sentry: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(code)
    ours.close()
    control.close()
    os.close(log_fd)
    return pid, theirs


def write_watchdog(state_dir: str, pid: int) -> None:
    """Record the watchdog (pid and start time) for delete, which kills it."""
    from pysandbox.oci.state import process_start_time, write_file_atomic

    write_file_atomic(os.path.join(state_dir, WATCHDOG_PID), f"{pid} {process_start_time(pid)}")


def read_watchdog(state_dir: str) -> tuple[int, int] | None:
    """(pid, start time) of the container's watchdog, if one was started."""
    try:
        with open(os.path.join(state_dir, WATCHDOG_PID)) as f:
            pid, start = f.read().split()
        return int(pid), int(start)
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def short_path(directory: str, name: str) -> Iterator[str]:
    """A path to ``directory/name`` that fits sockaddr_un's 108 bytes.

    State directories of engines are long (containerd's root plus a 64-hex
    id), so the socket is named through /proc/self/fd/N of an O_PATH fd of
    the directory, which the kernel resolves to the same place.
    """
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


def connect_control(sock: _socket.socket, state_dir: str) -> None:
    """Connect to a container's sentry.sock (exec's listener, stats)."""
    with short_path(state_dir, SENTRY_SOCKET) as path:
        sock.connect(path)


def send_init_pid(sock: _socket.socket, pid: int) -> None:
    """Tell the sentry the container's init (host pid): its task table and
    watchdog start from it."""
    sock.send(b"P" + str(pid).encode())


def send_gofer(sock: _socket.socket, gofer: _socket.socket, pid: int, plan: MountPlan) -> None:
    """Hand the sentry its end of the container's gofer (after the init pid),
    the gofer's host pid (the sentry keeps it on its own CPU) and which
    mounts the gofer serves (numbered from 1, in order) and which the kernel."""
    from pysandbox.oci import jsonio

    about = {
        "pid": pid,
        "kernel_mounts": list(plan.kernel),
        "served": [[m.point, m.file, m.readonly] for m in plan.served],
    }
    msg = b"G" + jsonio.dumps(about).encode()
    sock.sendmsg([msg], [(_SOL_SOCKET, _SCM_RIGHTS, gofer.fileno().to_bytes(4, "little"))])


def request_stats(state_dir: str, timeout: float = 2.0) -> dict[str, dict[str, int]] | None:
    """The sentry's counters ({disposition: {syscall: count}}), or None without a sentry."""
    from pysandbox.oci import jsonio

    s = _socket.socket(_AF_UNIX, _SOCK_SEQPACKET)
    try:
        s.settimeout(timeout)
        connect_control(s, state_dir)
        s.send(b"S")
        data = s.recv(1 << 20)
    except OSError:
        return None
    finally:
        s.close()
    doc = jsonio.loads(data.decode())
    return doc if isinstance(doc, dict) else None


def _main(
    init_sock_c: _socket.socket,
    control_c: _socket.socket,
    log_fd: int,
    routing: dict[int, str],
    options: SentryOptions,
) -> int:
    import gc

    # Nothing of create's may be finalised from here on: its objects hold fd
    # numbers we are about to close and reuse (listener fds).
    gc.disable()
    # Imports first, before any listener arrives: the hot path pays for none.
    import threading

    from pysandbox.gofer.client import GoferClient
    from pysandbox.gofer.protocol import Credentials
    from pysandbox.oci import jsonio
    from pysandbox.oci import kernel as k
    from pysandbox.syscalls.files import FileHandlers
    from pysandbox.syscalls.info import InfoConfig
    from pysandbox.syscalls.loadavg import ContainerLoad
    from pysandbox.syscalls.procfs import ContainerView, ProcHandlers
    from pysandbox.syscalls.routes import served_routes
    from pysandbox.syscalls.sched import AffinityHandlers

    from .confine import Confinement
    from .loop import Sentry
    from .notify import recv_fds
    from .tasks import TaskTable
    from .watchdog import start_watchdog

    init_sock = init_sock_c
    control = control_c
    os.setsid()  # out of the caller's process group and terminal
    k.set_name("sentry")  # what ps and top on the host show
    # The sentry keeps fds per task and per directory (syscalls/creds.py,
    # syscalls/lookup.py): all the hard limit allows, since an EMFILE of its own
    # would become some workload call's answer.
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # Signals a `kill --all` (or a terminal) may send to the container's
    # cgroup are meant for the workload; the sentry must survive them (SIGKILL
    # still ends it, as delete needs).
    for sig in (
        k.SIGINT,
        k.SIGTERM,
        k.SIGHUP,
        k.SIGQUIT,
        k.SIGUSR1,
        k.SIGUSR2,
        k.SIGPIPE,
        k.SIGWINCH,
        k.SIGALRM,
        k.SIGTSTP,
        k.SIGTTIN,
        k.SIGTTOU,
    ):
        k.ignore_signal(sig)
    # The OOM killer should pick the workload, never its kernel (were the
    # sentry killed, the watchdog would take the whole container down).
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("-999")
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log_fd, 2)
    # Close every fd create had (its state lock above all: holding it would
    # block delete) except ours.
    keep = {0, 1, 2, init_sock.fileno(), control.fileno()}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)

    def log(message: str) -> None:
        with contextlib.suppress(OSError):
            os.write(2, (message if message.endswith("\n") else message + "\n").encode())

    # Names for the stats and the strace lines, loaded now: once confined the
    # sentry can read no file, and after the listener arrives init waits.
    from pysandbox.syscalls.table import names_and_argc

    names, argc = names_and_argc()
    strace = None
    if options.strace:
        strace = os.fdopen(os.dup(2), "w", buffering=1)
    view = ContainerView(dict(options.resource_files))
    tasks = TaskTable()
    tasks.exclude(os.getpid())
    # in the container's cgroup, not the container's: the sentry, its watchdog
    load = ContainerLoad(view.files.get("cgroup"), lambda: tasks.excluded)
    info = InfoConfig(
        hostname=options.hostname,
        domainname=options.domainname,
        machine=options.machine,
        memory_limit=view.memory_limit,
        swap_limit=view.swap_limit,
        memory_usage=view.memory_usage,
        boot_time=view.started,
        task_count=load.task_count,
        loads=load.sysinfo_loads,
    )
    proc = ProcHandlers(
        view,
        masked=options.masked_paths,
        root_readonly=options.root_readonly,
        tasks=tasks,
        load=load,
    )
    files = FileHandlers(proc)
    files.use_routing(routing)  # credentials are cached only if their changes are seen
    sentry = Sentry(
        build_routes(
            routing,
            served_routes(info, tasks, proc, AffinityHandlers(view, tasks), files),
        ),
        names=names,
        argc=argc,
        strace=strace,
        log=log,
    )

    # Fail closed (rule 2): the watchdog kills the container's cgroup if the
    # sentry dies. Forked now, before init exists: it needs only the cgroup.
    watchdog = start_watchdog(options.cgroup_dir)
    tasks.exclude(watchdog)
    write_watchdog(options.state_dir, watchdog)
    # Rule 3: the sentry confines itself before it serves anything (see
    # sentry/confine.py), and before init's listener arrives, so that init's
    # execve does not wait for it. From here on it can neither fork nor open
    # files outside the read-only paths below.
    from pysandbox.oci.state import cache_dir

    Confinement(
        read_paths=[p for p in ("/proc", NODE_DIR, *options.cgroup_roots) if os.path.isdir(p)],
        cache_dir=cache_dir(os.path.dirname(options.state_dir)),
    ).apply(log_fd=2)
    load.start()  # the container's load average, sampled every 5 s from now
    # Create sends init's pid and the gofer's socket; init, just before
    # execve, its listener.
    first = None
    init_pid = 0
    while first is None:
        try:
            msg, fds = recv_fds(init_sock, 1 << 16, 1)
        except OSError:
            return 0
        if not msg and not fds:
            return 0  # init died before it got this far (create failed): nothing to serve
        if msg.startswith(b"P"):
            init_pid = int(msg[1:])
            tasks.set_init(init_pid)
        elif msg.startswith(b"G") and fds:
            gofer = _socket.socket(_AF_UNIX, _SOCK_SEQPACKET, 0, fds[0])
            about = jsonio.loads(msg[1:].decode())
            files.attach(
                GoferClient(gofer, Credentials(0, 0)),
                init_pid,
                int(about["pid"]),
                [str(m) for m in about["kernel_mounts"]],
                [(str(p), bool(f), bool(ro)) for p, f, ro in about["served"]],
            )
            for extra in fds[1:]:
                os.close(extra)
        elif fds:
            first = fds[0]
            for extra in fds[1:]:
                os.close(extra)
    init_sock.close()
    sentry.add_listener(first)

    def serve_control(conn: _socket.socket) -> None:
        msg, fds = recv_fds(conn, 64, 1)
        if fds:  # an exec's listener
            sentry.add_listener(fds[0])
            for extra in fds[1:]:
                os.close(extra)
        elif msg == b"S":
            conn.send(jsonio.dumps(sentry.stats()).encode())

    def accept_loop() -> None:
        while True:
            try:
                conn_fd, _ = control._accept()  # type: ignore[attr-defined]  # C core: a bare fd
            except OSError as e:
                log(f"sentry: accept on {SENTRY_SOCKET} failed: {e}")
                return
            conn = _socket.socket(_AF_UNIX, _SOCK_SEQPACKET, 0, conn_fd)
            try:
                serve_control(conn)
            except OSError as e:
                log(f"sentry: control request failed: {e}")
            finally:
                conn.close()

    threading.Thread(target=accept_loop, daemon=True, name="sentry-accept").start()
    sentry.run()
    return 0
