"""The per-container sentry process (``--sandbox sentry``, opt-in in this slice).

``create`` calls :func:`start` before it forks the container's init:

    create ──fork── sentry: imports the loop and the handlers first, then
      │              waits on its end of a socketpair for init's listener fd,
      │              and accepts more listener fds (one per ``exec``) on
      │              ``<state dir>/sentry.sock``
      └─ init: at the very end, just before execve, loads the profile's filter
               with SECCOMP_FILTER_FLAG_NEW_LISTENER and sends the listener
               over the socketpair (oci/spawn.py, ``_join_sentry``)

The sentry outlives create (it is reparented like init), sits in the
container's cgroup (so cgroup destruction kills it), and its pid and start
time are in the container's state, so ``delete`` kills it explicitly. It
exits by itself when its last listener hangs up (every sandboxed process is
gone), or when init's end of the socketpair closes before a listener came
(create failed).

Routing (transitional)
----------------------
Every number the profile routes to the sentry gets a handler. The handlers
that exist (syscalls/info.py: uname, sethostname, setdomainname,
sysinfo, time setting) serve their calls for real. Every other routed call
(the file system and process calls whose handlers come with the gofer and the
process layer) is answered by :func:`passthrough`: SECCOMP_USER_NOTIF_FLAG_
CONTINUE *without reading any argument*. That decides nothing, so for those
calls the sandbox is exactly the ``host`` disposition, no weaker: rule 1
forbids CONTINUE after inspecting a pointer for a security decision, and here
no pointer is inspected and no decision is made. docs/SECURITY.md says which
calls this covers; it goes away as the handlers land.
"""

from __future__ import annotations

import _socket  # the C core: the socket module's enums cost ~3 ms at import
import contextlib
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Final

    from .loop import Call, Handler, Result

__all__ = ["SENTRY_SOCKET", "build_routes", "passthrough", "start"]

SENTRY_SOCKET: Final = "sentry.sock"
SENTRY_LOG: Final = "sentry.log"
_AF_UNIX: Final = 1
_SOCK_SEQPACKET: Final = 5


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


def start(
    state_dir: str,
    routing: Mapping[int, str],
    *,
    hostname: str,
    domainname: str,
) -> tuple[int, _socket.socket]:
    """Fork the sentry; return (its pid, the end of the socketpair init sends on).

    The control socket is bound here, before the fork, so ``exec`` can find
    it as soon as create returns. The caller passes the returned socket to
    init and closes its own copy once init has been forked.
    """
    ours, theirs = _socket.socketpair(_AF_UNIX, _SOCK_SEQPACKET)
    control = _socket.socket(_AF_UNIX, _SOCK_SEQPACKET)
    try:
        path = os.path.join(state_dir, SENTRY_SOCKET)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        control.bind(path)
        os.chmod(path, 0o600)
        control.listen(16)
        log_fd = os.open(
            os.path.join(state_dir, SENTRY_LOG),
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
            0o600,
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
            code = _main(ours, control, log_fd, dict(routing), hostname, domainname)
        except BaseException as e:
            with contextlib.suppress(Exception):
                os.write(2, f"sentry: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(code)
    ours.close()
    control.close()
    os.close(log_fd)
    return pid, theirs


def _main(
    init_sock_c: _socket.socket,
    control_c: _socket.socket,
    log_fd: int,
    routing: dict[int, str],
    hostname: str,
    domainname: str,
) -> int:
    import gc

    # Nothing of create's may be finalised from here on: its objects hold fd
    # numbers we are about to close and reuse (listener fds).
    gc.disable()
    # Imports first, before any listener arrives: the hot path pays for none.
    import signal
    import socket
    import threading

    from pysandbox.syscalls.info import InfoConfig
    from pysandbox.syscalls.routes import served_routes

    from .loop import Sentry
    from .notify import recv_listener

    init_sock = socket.socket(_AF_UNIX, _SOCK_SEQPACKET, 0, init_sock_c.detach())
    control = socket.socket(_AF_UNIX, _SOCK_SEQPACKET, 0, control_c.detach())
    os.setsid()  # out of the caller's process group and terminal
    # Signals a `kill --all` (or a terminal) may send to the container's
    # cgroup are meant for the workload; the sentry must survive them (SIGKILL
    # still ends it, as delete needs).
    for sig in (
        signal.SIGINT,
        signal.SIGTERM,
        signal.SIGHUP,
        signal.SIGQUIT,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGPIPE,
        signal.SIGWINCH,
        signal.SIGALRM,
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
    ):
        signal.signal(sig, signal.SIG_IGN)
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

    info = InfoConfig(hostname=hostname, domainname=domainname)
    sentry = Sentry(build_routes(routing, served_routes(info)), log=log)

    try:
        first = recv_listener(init_sock)
    except OSError:
        return 0  # init died before it got this far (create failed): nothing to serve
    init_sock.close()
    sentry.add_listener(first)

    def accept_loop() -> None:
        while True:
            try:
                conn, _ = control.accept()
            except OSError as e:
                log(f"sentry: accept on {SENTRY_SOCKET} failed: {e}")
                return
            with conn:
                try:
                    sentry.add_listener(recv_listener(conn))
                except OSError as e:
                    log(f"sentry: no listener from an exec: {e}")

    threading.Thread(target=accept_loop, daemon=True, name="sentry-accept").start()
    sentry.run()
    return 0
