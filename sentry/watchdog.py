"""Fail closed (DESIGN.md rule 2): if the sentry dies, the container dies.

When a listener's last holder goes away the kernel answers every pending and
later notification of that filter with ENOSYS: the workload would run on,
served by nobody, every routed call failing. That is not harm by itself, but
a workload whose kernel has gone should not keep running half-served, and a
supervisor (docker, the shim) must see the container die rather than hang or
misbehave. So the sentry forks a watchdog as soon as it knows the
container's init:

    sentry ──fork── watchdog: holds pidfds of the sentry and of init; sleeps in
                    poll() until the sentry's pidfd is readable (it exited, for
                    whatever reason), then SIGKILLs init (with a pid namespace
                    of its own, the whole container goes with it) and every
                    other process of the container's cgroup.

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


def start_watchdog(init_pid: int, cgroup_dir: str) -> int:
    """Fork the watchdog for the calling sentry and container init; return its pid.

    ``cgroup_dir`` is the container's cgroup (given by create, never derived
    from /proc/self/cgroup: on a hybrid host some hierarchies would name
    their root there).

    The pidfds are opened before the fork: a sentry killed right after the
    fork still leaves the watchdog a pidfd that reports its death.
    """
    sentry_fd = os.pidfd_open(os.getpid())
    try:
        init_fd = os.pidfd_open(init_pid)
    except OSError:
        os.close(sentry_fd)
        raise
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            kernel.set_name("sentry-watchdog")
            _watch(sentry_fd, init_fd, cgroup_dir)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(sentry_fd)
    os.close(init_fd)
    return pid


def _watch(sentry_fd: int, init_fd: int, cgroup_dir: str) -> None:
    poll = select.poll()
    poll.register(sentry_fd, select.POLLIN)
    while not poll.poll():
        pass
    # The sentry is gone. Kill the container: init first (its pid namespace
    # then takes every task with it), then whatever the cgroup still holds
    # (a container sharing the host's pid namespace).
    with contextlib.suppress(OSError):
        kernel.pidfd_send_signal(init_fd, kernel.SIGKILL)
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
