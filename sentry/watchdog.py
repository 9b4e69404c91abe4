"""Fail closed (DESIGN.md rule 2): if the sentry dies, the container dies.

When a listener's last holder goes away the kernel answers every pending and
later notification of that filter with ENOSYS: the workload would run on,
served by nobody, every routed call failing. That is not harm by itself, but
a workload whose kernel has gone should not keep running half-served, and a
supervisor (docker, the shim) must see the container die rather than hang or
misbehave. So the sentry forks a watchdog as soon as it starts:

    sentry ──fork── watchdog: holds a pidfd of the sentry; sleeps in poll()
                    until it is readable (the sentry exited, for whatever
                    reason), then SIGKILLs every process of the container's
                    cgroup, init among them (with a pid namespace of its own,
                    the whole container goes with init).

A sentry that exits normally does so only when no sandboxed task is left, so
the watchdog then finds nothing to kill. Like the sentry, the watchdog stays
outside the container's cgroup; delete kills it by its recorded pid and
start time. It is invisible from a container with its own pid namespace, and
excluded from the sentry's task table otherwise, so the workload cannot
signal it.
"""

from __future__ import annotations

import contextlib
import os
import select

from pysandbox.oci import kernel

__all__ = ["start_watchdog"]


def start_watchdog(cgroup_dir: str) -> int:
    """Fork the watchdog of the calling sentry; return its pid.

    ``cgroup_dir`` is the container's cgroup (given by create, never derived
    from /proc/self/cgroup: on a hybrid host some hierarchies would name
    their root there). It may not exist yet: the sentry is forked before
    init, and init cannot run a sandboxed instruction without its sentry.
    The sentry's pidfd is opened before the fork, so a sentry killed right
    after the fork still leaves the watchdog a pidfd that reports its death.
    """
    sentry_fd = os.pidfd_open(os.getpid())
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            kernel.set_name("sentry-watchdog")
            _watch(sentry_fd, cgroup_dir)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(sentry_fd)
    return pid


def _watch(sentry_fd: int, cgroup_dir: str) -> None:
    poll = select.poll()
    poll.register(sentry_fd, select.POLLIN)
    while not poll.poll():
        pass
    # The sentry is gone: kill every task of the container. With a pid
    # namespace of its own, init's death takes the rest with it.
    _kill_cgroup(cgroup_dir)


def _kill_cgroup(cgroup_dir: str) -> None:
    from pysandbox.oci.cgroups import read_procs  # create imported it: free in this fork

    me = os.getpid()
    for _ in range(100):  # a fork bomb racing us: bounded, delete finishes the job
        others = [p for p in read_procs(cgroup_dir) if p != me]
        if not others:
            return
        for p in others:
            with contextlib.suppress(OSError):
                os.kill(p, kernel.SIGKILL)
