"""Signals to other tasks: the target must be the container's.

* ``kill``, ``tkill``, ``tgkill``, ``rt_sigqueueinfo``, ``rt_tgsigqueueinfo``,
  ``pidfd_open``: decided on integer arguments only (the pid), then handed to
  the kernel (CONTINUE), which checks the caller's permission, validates the
  signal and fills siginfo exactly as Linux does (rule 1 of DESIGN.md is
  about pointer arguments; the siginfo pointer of the *queueinfo calls is
  not read). A positive pid the caller names must be a task of the
  container, else ESRCH (Linux's answer for a pid the caller cannot see).
  When the container has its own pid namespace the kernel already confines
  every form (pid > 0, 0, -pgrp, -1) to it, and the call goes to the kernel
  untranslated (:meth:`TaskTable.confined`). When it shares the host's pid
  namespace: pid -1 would signal every host process the caller may signal
  and is EPERM; pid 0 and -pgrp are handed over only if every member of the
  process group is the container's (else EPERM; an empty group ESRCH).
  Residual window: a target can exit after the check and its pid be reused
  by a host process before the kernel's lookup (a full wrap of the pid space
  within microseconds); the kernel's credential check still applies.
* ``pidfd_send_signal``: the target is an fd, which another thread can
  replace (dup2) between a check and CONTINUE, so the sentry takes its own
  copy (pidfd_getfd), finds the task from its fdinfo, checks it, makes the
  kernel's permission check for the caller and sends the signal itself on
  its copy. See :meth:`SignalHandlers.pidfd_send_signal` for the deviations.
"""

from __future__ import annotations

import errno
import os
import struct

from pysandbox.oci import kernel
from pysandbox.oci.kernel import CAP_KILL
from pysandbox.sentry.loop import CONTINUE, Call, Errno, Handler, Result
from pysandbox.sentry.tasks import TaskStatus, TaskTable
from pysandbox.syscalls.args import s32 as _s32

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

SIGCONT: Final = 18
SIGRTMAX: Final = 64
SI_TKILL: Final = -6
PIDFD_SIGNAL_THREAD: Final = 1
PIDFD_SIGNAL_THREAD_GROUP: Final = 2
PIDFD_SIGNAL_PROCESS_GROUP: Final = 4
_SIGINFO_HEAD: Final = struct.Struct("=iii")  # si_signo, si_errno, si_code
_INT_MIN: Final = -(1 << 31)
_U32: Final = 0xFFFFFFFF

_EINVAL: Final = Errno(errno.EINVAL)
_EPERM: Final = Errno(errno.EPERM)
_ESRCH: Final = Errno(errno.ESRCH)
_EBADF: Final = Errno(errno.EBADF)


class SignalHandlers:
    """The handlers, sharing one :class:`TaskTable`."""

    def __init__(self, tasks: TaskTable) -> None:
        self.tasks = tasks

    def routes(self) -> dict[int, Handler]:
        return {
            kernel.SYS_KILL: self.kill,
            kernel.SYS_TKILL: self.tkill,
            kernel.SYS_TGKILL: self.tgkill,
            kernel.SYS_RT_SIGQUEUEINFO: self.rt_sigqueueinfo,
            kernel.SYS_RT_TGSIGQUEUEINFO: self.rt_tgsigqueueinfo,
            kernel.SYS_PIDFD_OPEN: self.pidfd_open,
            kernel.SYS_PIDFD_SEND_SIGNAL: self.pidfd_send_signal,
        }

    def _to(self, call: Call, pid: int) -> Result:
        return CONTINUE if self.tasks.may_target(call.pid, pid) else _ESRCH

    def _group(self, call: Call, pgid_host: int | None) -> Result:
        """A process group (host numbering) may be signalled if all of it is the container's."""
        if pgid_host is None:
            return _ESRCH
        members = self.tasks.process_group(pgid_host)
        if not members:
            return _ESRCH
        if not all(self.tasks.contains(m, call.pid) for m in members):
            return _EPERM
        return CONTINUE

    def kill(self, call: Call) -> Result:
        """kill(pid, sig): Linux signals a process (pid > 0), the caller's process
        group (0), every process the caller may signal (-1) or a process group
        (-pgrp); INT_MIN is ESRCH. See the module doc for what we check."""
        pid = _s32(call.args[0])
        tasks = self.tasks
        if pid > 0:
            return self._to(call, pid)
        if pid == _INT_MIN:
            return _ESRCH
        if tasks.confined(call.pid):
            return CONTINUE
        if pid == -1:
            return _EPERM  # would reach the host's processes
        if pid == 0:
            return self._group(call, int(tasks.stat_fields(call.pid)[2]))
        return self._group(call, tasks.to_host(call.pid, -pid))

    def tkill(self, call: Call) -> Result:
        """tkill(tid, sig): Linux signals one thread; tid <= 0 is EINVAL (the kernel's)."""
        return self._to(call, _s32(call.args[0]))

    def tgkill(self, call: Call) -> Result:
        """tgkill(tgid, tid, sig): Linux signals thread ``tid`` if it is in ``tgid``
        (ESRCH otherwise; the kernel checks that); ids <= 0 are EINVAL."""
        return self._to(call, _s32(call.args[1]))

    def rt_sigqueueinfo(self, call: Call) -> Result:
        """rt_sigqueueinfo(tgid, sig, info): Linux queues a signal with the caller's
        siginfo (only SI_QUEUE-like codes to others); the info is not read here."""
        return self._to(call, _s32(call.args[0]))

    def rt_tgsigqueueinfo(self, call: Call) -> Result:
        """rt_tgsigqueueinfo(tgid, tid, sig, info): as rt_sigqueueinfo, to one thread."""
        return self._to(call, _s32(call.args[1]))

    def pidfd_open(self, call: Call) -> Result:
        """pidfd_open(pid, flags): Linux returns a pidfd for a task the caller can see
        (pid <= 0 and bad flags EINVAL). The pid must be a task of the container
        (else ESRCH); then the kernel makes the fd in the caller."""
        return self._to(call, _s32(call.args[0]))

    def pidfd_send_signal(self, call: Call) -> Result:
        """pidfd_send_signal(pidfd, sig, info, flags): Linux signals the process (or
        thread, or process group, per ``flags``) the pidfd refers to: bad flags
        EINVAL; not a pidfd EBADF; a task outside the caller's pid namespace
        hierarchy EINVAL; bad ``info`` EFAULT, ``info``'s signo not ``sig``
        EINVAL, a kernel-style code (si_code >= 0 or SI_TKILL) to another process
        EPERM; then kill's permission check (EPERM) and ESRCH for an exited task.

        We copy the caller's fd (pidfd_getfd), read the pid from our copy's
        fdinfo, require a task of the container (in a shared pid namespace an
        outsider is ESRCH), make the same checks on one copy of ``info``, and
        send on our copy. Deviations: a /proc/<pid> directory fd (which Linux
        also accepts) is EBADF; without ``info`` the receiver's siginfo says
        SI_USER from the sentry (si_pid 0 when the container has its own pid
        namespace, as for any sender outside it; si_uid 0) instead of from the
        caller; a kernel-style si_code to the caller's own process is EPERM;
        PIDFD_SIGNAL_PROCESS_GROUP needs permission for every member.
        """
        fd, sig, info_addr, flags = (
            _s32(call.args[0]),
            _s32(call.args[1]),
            call.args[2],
            call.args[3] & _U32,
        )
        if flags & ~7 or bin(flags).count("1") > 1:
            return _EINVAL
        tasks = self.tasks
        me = tasks.status(call.pid)
        if fd < 0:
            return _EBADF
        caller_fd = os.pidfd_open(me.tgid)
        try:
            call.verify()  # the pidfd is the caller's process
            try:
                ours = kernel.pidfd_getfd(caller_fd, fd)
            except OSError:
                return _EBADF
        finally:
            os.close(caller_fd)
        try:
            return self._send(call, me, ours, sig, info_addr, flags)
        finally:
            os.close(ours)

    def _send(
        self, call: Call, me: TaskStatus, ours: int, sig: int, info_addr: int, flags: int
    ) -> Result:
        tasks = self.tasks
        target = _fdinfo_pid(ours)
        if target is None:
            return _EBADF
        if target < 0:
            return _ESRCH  # the process has exited
        if not tasks.contains(target, call.pid):
            return _EINVAL if tasks.own_pidns else _ESRCH
        them = tasks.status(target)
        info: bytes | None = None
        if info_addr:
            info = call.read(info_addr, kernel.SIGINFO_SIZE)
            signo, _errno, code = _SIGINFO_HEAD.unpack_from(info)
            if signo != sig:
                return _EINVAL
            if code >= 0 or code == SI_TKILL:
                return _EPERM  # forged kernel/kill() codes: Linux allows them only to oneself
        if not 0 <= sig <= SIGRTMAX:
            return _EINVAL
        if flags & PIDFD_SIGNAL_PROCESS_GROUP:
            if not tasks.confined(call.pid):
                verdict = self._group(call, int(tasks.stat_fields(target)[2]))
                if verdict is not CONTINUE:
                    return verdict
            pgid = int(tasks.stat_fields(target)[2])
            members = tasks.process_group(pgid)
            if not all(self._may_kill(call, me, m, sig) for m in members):
                return _EPERM
        elif not self._may_kill(call, me, target, sig, them):
            return _EPERM
        call.verify()  # everything read (info, ids) was this caller's
        kernel.pidfd_send_signal_info(ours, sig, info, flags)
        return 0

    def _may_kill(
        self, call: Call, me: TaskStatus, target: int, sig: int, them: TaskStatus | None = None
    ) -> bool:
        """Linux's kill permission: same process; or the caller's real or effective
        uid is the target's real or saved uid; or CAP_KILL over the target's user
        namespace; or SIGCONT within one session."""
        tasks = self.tasks
        try:
            them = them or tasks.status(target)
            if them.tgid == me.tgid:
                return True
            if {me.uids[0], me.uids[1]} & {them.uids[0], them.uids[2]}:
                return True
            if me.has_cap(CAP_KILL):
                mine = tasks.userns(call.pid)
                if mine == tasks.host_userns or mine == tasks.userns(target):
                    return True
            if sig == SIGCONT:
                return tasks.stat_fields(call.pid)[3] == tasks.stat_fields(target)[3]
        except OSError:
            return False
        return False


def _fdinfo_pid(fd: int) -> int | None:
    """The ``Pid:`` of a pidfd from /proc/self/fdinfo (-1: exited); None if not a pidfd."""
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
            for line in f:
                if line.startswith(b"Pid:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def routes(tasks: TaskTable) -> dict[int, Handler]:
    return SignalHandlers(tasks).routes()
