"""Decoding register arguments: a notification reports all six as unsigned 64-bit."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pysandbox.sentry.loop import Call
    from pysandbox.sentry.tasks import TaskTable


def s32(value: int) -> int:
    """The low 32 bits as a C int (pid_t, int flags): the kernel ignores the high half."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def target_task(call: Call, tasks: TaskTable, pid: int) -> int | None:
    """The host tid a pid argument names, as the kernel's find_task_by_vpid
    would: 0 is the caller, a negative pid or one outside the container is
    None (the handler answers ESRCH). A failed translation was made in the
    caller's namespace, so the caller is verified still to be there."""
    if pid < 0:
        return None
    target = call.pid if pid == 0 else tasks.lookup(call.pid, pid)
    if target is None:
        call.verify()
    return target
