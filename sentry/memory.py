"""Access to a tracee's memory: process_vm_readv/writev, never /proc/PID/mem writes.

process_vm_writev honours page protections (a write to a read-only page fails
with EFAULT, as the kernel's copy_to_user would make the syscall fail);
/proc/PID/mem writes ignore them, so they are never used. Every failure is an
OSError carrying the errno the emulated syscall should return (EFAULT for a
bad pointer, ESRCH when the task is gone).

Reading memory says nothing about *whose* memory it was if the task died and
its pid was reused meanwhile: callers check NOTIF_ID_VALID after reading and
before acting on what they read (the loop's :class:`~pysandbox.sentry.loop.Call`
does this for its users).
"""

from __future__ import annotations

import errno

from pysandbox.oci import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

PAGE_SIZE: Final = 4096

# The process_vm_writev binding itself: it already checks everything (an empty
# write is a no-op transfer), so the hot path (Call.write) calls it directly.
write = kernel.process_vm_writev
_read = kernel.process_vm_readv


def read(pid: int, addr: int, size: int) -> bytes:
    """Exactly ``size`` bytes at ``addr`` of task ``pid``; OSError(EFAULT) if any is unreadable."""
    if size <= 0:
        return b""
    return _read(pid, addr, size)


def read_cstring(pid: int, addr: int, max_len: int = PAGE_SIZE) -> bytes:
    """The NUL-terminated string at ``addr`` of task ``pid`` (without the NUL).

    Reads never cross a page boundary in one transfer, so a string that ends
    just before an unmapped page is read fine, and one that runs into it fails
    with EFAULT, as the kernel's strncpy_from_user does. No NUL within
    ``max_len`` bytes: OSError(ENAMETOOLONG).
    """
    chunk = min(max_len, PAGE_SIZE - addr % PAGE_SIZE)
    data = _read(pid, addr, chunk)
    end = data.find(0)
    if end >= 0:
        return data[:end]
    parts = [data]
    got = chunk
    while got < max_len:
        chunk = min(max_len - got, PAGE_SIZE)
        data = _read(pid, addr + got, chunk)
        end = data.find(0)
        if end >= 0:
            parts.append(data[:end])
            return b"".join(parts)
        parts.append(data)
        got += chunk
    raise OSError(errno.ENAMETOOLONG, f"string longer than {max_len} bytes")


class TraceeMemory:
    """The address space of one task (by pid, as the notification reports it)."""

    __slots__ = ("pid",)

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def read(self, addr: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``addr``; OSError(EFAULT) if any of them is unreadable."""
        return read(self.pid, addr, size)

    def read_cstring(self, addr: int, max_len: int = PAGE_SIZE) -> bytes:
        """The NUL-terminated string at ``addr`` (without the NUL); see :func:`read_cstring`."""
        return read_cstring(self.pid, addr, max_len)

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at ``addr`` (process_vm_writev); OSError(EFAULT) if not writable."""
        write(self.pid, addr, data)
