"""Every served handler, by syscall number: the one place the areas meet.

Each area module (info, process, signal, ...) exports a ``routes(...)``
function returning ``{number: handler}``; :func:`served_routes` merges them
for the sentry. A number no area serves falls back to the sentry service's
transitional pass-through (sentry/service.py).
"""

from __future__ import annotations

from pysandbox.sentry.loop import Handler
from pysandbox.sentry.tasks import TaskTable

from . import ioctl, process, signal
from .execve import ExecHandlers
from .files import FileHandlers
from .info import InfoConfig, InfoHandlers
from .procfs import ProcHandlers
from .sched import AffinityHandlers
from .sockets import UnixSocketHandlers

__all__ = ["served_routes"]


def served_routes(
    info: InfoConfig,
    tasks: TaskTable | None = None,
    proc: ProcHandlers | None = None,
    affinity: AffinityHandlers | None = None,
    files: FileHandlers | None = None,
) -> dict[int, Handler]:
    """{syscall number: handler} for everything pysandbox serves today.

    ``tasks``: the container's task table (the sentry calls ``set_init`` and
    ``exclude`` on it); without one, a table that judges from each caller.
    ``proc``: the virtual /proc files (open/openat); ``affinity``:
    sched_getaffinity cut to the CPU limit; ``files``: the path calls through
    the gofer (open/openat included: it serves the virtual files first), and
    bind(2) of a socket file in the root (syscalls/sockets.py); without them
    those calls are not served here.
    """
    if tasks is None:
        tasks = TaskTable()
    routes: dict[int, Handler] = {}
    routes.update(InfoHandlers(info).routes())
    routes.update(process.routes(tasks))
    routes.update(signal.routes(tasks))
    routes.update(ioctl.routes())
    if proc is not None:
        routes.update(proc.routes())
    if affinity is not None:
        routes.update(affinity.routes())
    if files is not None:
        routes.update(files.routes())
        routes.update(UnixSocketHandlers(files).routes())  # bind, connect: socket files of the root
        routes.update(ExecHandlers(files).routes())  # execve(at): checked, then the kernel's
    return routes
