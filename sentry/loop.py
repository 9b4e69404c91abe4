"""The sentry's event loop: serve every notified syscall of one container.

One thread serves every listener (the container's init and every ``exec``
hand theirs over); each call is dispatched by syscall number through the
routing table and answered. There is no busy waiting anywhere:

* With several listeners, the thread polls them plus a wake-up pipe; a
  readable listener gets exactly one RECV. When no task uses a filter any
  more its listener reports POLLHUP (RECV would fail with ENOENT at once, over
  and over), it is dropped, and :meth:`Sentry.run` returns when none is left.
* With one listener (a container without ``exec``: the common case) the
  thread blocks in RECV itself, which saves a poll() per call (~0.5 us of
  ~10). This needs the 6.6+ RECV, which waits on the filter's wait queue and
  so also returns (ENOENT) when the last task is gone; the same kernels have
  SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, which is what decides the mode (older
  kernels: poll). :meth:`Sentry.add_listener` and :meth:`Sentry.stop` get the
  thread out of RECV with a signal (:data:`KICK_SIGNAL`, EINTR), repeated
  until the loop acknowledges: a signal that lands just before the RECV
  starts is not lost for good.

The hot path (RECV, one :class:`Call`, the handler, SEND, one counter) does no
work that could be done at start-up: a served syscall costs its Python
instructions plus the two context switches, with the sentry and the caller on
one CPU (reference/SECCOMP-NOTIFY-FINDINGS.md).

Handlers
--------
A handler is ``Callable[[Call], Result]``. It returns

* an ``int``: the syscall's return value;
* :class:`Errno` (or raises ``OSError`` with an errno): the syscall fails;
* :class:`InstallFd`: the fd is installed in the caller with NOTIF_ADDFD and
  ADDFD_FLAG_SEND, atomically becoming the return value;
* :data:`CONTINUE`: the kernel runs the call itself; only for the cases
  DESIGN.md's rule 1 names (see :meth:`Listener.send_continue`).

Rule 1: a handler reads pointer arguments once through :class:`Call`, then
calls :meth:`Call.verify` (NOTIF_ID_VALID: the caller is still the task that
asked, its pid was not reused) before it changes any state on what it read,
and acts only on its copy. Writes into the caller need no check (see
:meth:`Call.write`).

Rule 2 (fail closed, never crash): a handler that raises anything but
``OSError`` is a sentry bug. The call is answered with EIO, the traceback is
logged, and the loop goes on. EIO rather than ENOSYS or EPERM: ENOSYS makes
libc and language runtimes fall back to other syscalls (which may be served
by the host with other semantics), EPERM reads as a policy decision; EIO says
"the kernel failed", which programs report rather than work around. (gVisor's
sentry has no such path: a Go panic there takes the sandbox down.)
A notified number with no handler (the filter and the table disagree) is
answered with ENOSYS, as Linux answers a number it does not know.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import os
import select
import sys
import threading
import time
from collections.abc import Callable, Mapping

from pysandbox.oci import kernel

from . import memory
from .memory import TraceeMemory
from .notify import Listener, Notification

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, TextIO

_current_cpu = kernel.current_cpu
_OWN_CPUS: list[set[int]] = []


def _own_cpus() -> set[int]:
    """The sentry's own CPU mask, read once, before it ever pins itself."""
    if not _OWN_CPUS:
        _OWN_CPUS.append(os.sched_getaffinity(0))
    return _OWN_CPUS[0]


__all__ = [
    "CONTINUE",
    "KICK_SIGNAL",
    "Call",
    "Continue",
    "Errno",
    "Handler",
    "InstallFd",
    "NotificationGone",
    "Result",
    "Sentry",
]

_POLLIN: Final = select.POLLIN
_POLLGONE: Final = select.POLLHUP | select.POLLERR | select.POLLNVAL
_ENOENT: Final = _errno.ENOENT
_EINTR: Final = _errno.EINTR
_ARCH: Final = kernel.AUDIT_ARCH_X86_64
# Interrupts a loop thread blocked in RECV (single-listener mode). SIGURG: its
# default action is to ignore it, so a stray one harms nobody; Go's runtime
# uses it for the same purpose. The handler must exist (an ignored signal
# interrupts nothing); Python installs it without SA_RESTART.
KICK_SIGNAL: Final = kernel.SIGURG
_KICK_RETRY: Final = 0.002  # seconds between kicks the loop did not acknowledge
_read = memory.read
_read_cstring = memory.read_cstring
_write = memory.write

# Dispositions counted per syscall.
VALUE: Final = "value"  # answered with a return value
ERROR: Final = "errno"  # answered with an errno (by the handler's choice)
FD: Final = "fd"  # answered by installing an fd
CONTINUED: Final = "continue"  # handed back to the kernel
FAILED: Final = "failed"  # the handler raised (a bug): EIO
UNROUTED: Final = "unrouted"  # no handler for the number: ENOSYS
GONE: Final = "gone"  # the caller left before the answer (killed or interrupted)
HANDLER_FAILURE_ERRNO: Final = _errno.EIO


class Errno:
    """Result: fail the syscall with ``errno`` (positive)."""

    __slots__ = ("errno",)

    def __init__(self, errno: int) -> None:
        if errno <= 0:
            raise ValueError(f"errno must be positive, got {errno}")
        self.errno = errno

    def __repr__(self) -> str:
        return f"Errno({_errno.errorcode.get(self.errno, self.errno)})"


class InstallFd:
    """Result: install ``fd`` in the caller; the syscall returns its number there.

    The sentry closes its own ``fd`` after the answer unless ``close`` is False.
    """

    __slots__ = ("cloexec", "close", "fd")

    def __init__(self, fd: int, cloexec: bool = False, close: bool = True) -> None:
        self.fd = fd
        self.cloexec = cloexec
        self.close = close


class Continue:
    """Result: let the kernel execute the call (rule 1's documented exceptions only)."""

    __slots__ = ()


CONTINUE: Final = Continue()
Result = int | Errno | InstallFd | Continue


class NotificationGone(Exception):
    """The caller left its notification (killed, or interrupted by a signal): no answer."""


class Call(Notification):
    """One syscall being served: the notification, the caller's memory, and helpers.

    A Call *is* its :class:`Notification` (``id``, ``pid``, ``nr``, ``arch``,
    ``ip``, ``args`` are its own attributes; :attr:`notif` is the call
    itself): one object per served syscall, not three. Memory is reached
    through the pid directly (:mod:`.memory`), nothing is made for it.
    """

    __slots__ = ("detail", "listener", "tracing")

    def __init__(
        self,
        id: int,
        pid: int,
        nr: int,
        arch: int,
        ip: int,
        args: tuple[int, ...],
        listener: Listener,
        tracing: bool,
    ) -> None:
        self.id = id
        self.pid = pid
        self.nr = nr
        self.arch = arch
        self.ip = ip
        self.args = args
        self.listener = listener
        self.tracing = tracing  # handlers may then set `detail` (decoded arguments)
        self.detail: str | None = None

    @classmethod
    def of(cls, notif: Notification, listener: Listener, tracing: bool = False) -> Call:
        """A Call for a :class:`Notification` received elsewhere (tests, tools)."""
        return cls(
            notif.id, notif.pid, notif.nr, notif.arch, notif.ip, notif.args, listener, tracing
        )

    @property
    def notif(self) -> Notification:
        """The notification being served (the call itself)."""
        return self

    @property
    def mem(self) -> TraceeMemory:
        """The caller's address space as an object (Call's own methods need none)."""
        return TraceeMemory(self.pid)

    def read(self, addr: int, size: int) -> bytes:
        """Copy ``size`` bytes of the caller's memory (EFAULT as OSError)."""
        return _read(self.pid, addr, size)

    def read_cstring(self, addr: int, max_len: int = 4096) -> bytes:
        """Copy a NUL-terminated string (EFAULT, ENAMETOOLONG as OSError)."""
        return _read_cstring(self.pid, addr, max_len)

    def verify(self) -> None:
        """NOTIF_ID_VALID: raise NotificationGone unless the caller still waits for us.

        Call after reading and before acting on what was read: only then is
        it certain that the memory read was the caller's (no pid reuse).
        """
        if not self.listener.id_valid(self.id):
            raise NotificationGone()

    def write(self, addr: int, data: bytes) -> None:
        """Copy ``data`` into the caller's memory (process_vm_writev; EFAULT as OSError).

        No NOTIF_ID_VALID before a write: a check cannot close the window (the
        caller can die right after it), and what makes a write safe is that
        the caller's pid cannot be handed to another task within it: pids are
        allocated cyclically, so reuse takes a full wrap of the pid space
        between RECV and the write. A read is different: the check *after* it
        proves the memory read belonged to the caller, which is what rule 1
        asks before acting on it. Skipping it here saves ~1.7 us per call.
        """
        _write(self.pid, addr, data)


Handler = Callable[[Call], Result]


_now = time.perf_counter_ns
_ENOSYS_RESULT: Final = Errno(_errno.ENOSYS)
_EIO_RESULT: Final = Errno(HANDLER_FAILURE_ERRNO)
_kick_handler_installed = False


def _on_kick(signum: int, frame: object) -> None:
    """KICK_SIGNAL's handler: nothing to do, the EINTR it causes is the point."""


def _install_kick_handler() -> bool:
    """Make sure KICK_SIGNAL interrupts a blocked RECV; False if that cannot be arranged.

    signal.signal works only in the main thread; a handler someone else
    installed from Python interrupts system calls as well and is kept.
    """
    global _kick_handler_installed
    if _kick_handler_installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    current = kernel.get_signal_handler(KICK_SIGNAL)
    if current is None:  # installed outside Python: not ours to replace
        return False
    if current in (kernel.SIG_DFL, kernel.SIG_IGN):
        kernel.set_signal_handler(KICK_SIGNAL, _on_kick)
    _kick_handler_installed = True
    return True


def _hung_up(fd: int) -> bool:
    """Does the listener report POLLHUP (no task uses its filter any more)?"""
    p = select.poll()
    p.register(fd, _POLLIN)
    return any(events & _POLLGONE for _fd, events in p.poll(0))


def _default_log(message: str) -> None:
    sys.stderr.write(message if message.endswith("\n") else message + "\n")


class Sentry:
    """Serves the notified syscalls of every listener it is given until none is left.

    ``routing`` maps syscall numbers to handlers; ``names`` (number -> name)
    and ``argc`` (number -> argument count) are only used for the strace log
    and :meth:`stats`. ``strace``: a text
    file that gets one line per served call (``--strace`` in runsc's sense).
    ``log``: where handler tracebacks and loop errors go (default: stderr).

    Made in the main thread, it installs the :data:`KICK_SIGNAL` handler that
    the single-listener mode needs (once per process); made elsewhere without
    it, it always polls.
    """

    def __init__(
        self,
        routing: Mapping[int, Handler],
        *,
        names: Mapping[int, str] | None = None,
        argc: Mapping[int, int] | None = None,
        strace: TextIO | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.routing = dict(routing)
        self.names = dict(names or {})
        self.argc = dict(argc or {})
        self.strace = strace
        self.log = log or _default_log
        self.counts: dict[tuple[str, int], int] = {}
        self._listeners: dict[int, Listener] = {}
        self._pending: list[Listener] = []
        self._lock = threading.Lock()
        self._stopping = False
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._poll = select.poll()
        self._poll.register(self._wake_r, _POLLIN)
        # Single-listener mode: the loop thread blocked in RECV (its ident while
        # it may be), the kicks requested so far, and how many it had seen.
        self._can_block = _install_kick_handler()
        self._kick_cond = threading.Condition(threading.Lock())
        self._blocked_in: int | None = None
        self._kicks = 0
        self._kicks_seen = 0

    # --- listeners ---------------------------------------------------------
    def add_listener(self, listener: Listener | int) -> Listener:
        """Serve another listener (an int is wrapped, SYNC_WAKE_UP set). Thread-safe."""
        lst = listener if isinstance(listener, Listener) else Listener(listener)
        with self._lock:
            self._pending.append(lst)
        self._wake()
        return lst

    def stop(self) -> None:
        """Make :meth:`run` return soon (from any thread); listeners stay open."""
        self._stopping = True
        self._wake()

    def _wake(self) -> None:
        """Get the loop to look at _pending and _stopping: wake its poll, or kick its RECV."""
        try:
            os.write(self._wake_w, b"w")
        except BlockingIOError:
            pass  # already pending
        self._kick()

    def _kick(self) -> None:
        """Interrupt a RECV of the loop thread until it acknowledges (no-op when polling).

        A signal that arrives after the loop checked for kicks but before it
        entered RECV interrupts nothing, so it is sent again every
        _KICK_RETRY until the loop has left RECV mode or seen this kick. The
        lock keeps the thread alive while it is signalled (it clears
        _blocked_in under the lock before it returns).
        """
        cond = self._kick_cond
        with cond:
            self._kicks += 1
            target = self._kicks
            me = threading.get_ident()
            while (
                self._blocked_in is not None
                and self._blocked_in != me  # a handler or signal handler of the loop itself
                and self._kicks_seen < target
            ):
                kernel.pthread_kill(self._blocked_in, KICK_SIGNAL)
                cond.wait(_KICK_RETRY)

    def _take_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for lst in pending:
            self._listeners[lst.fd] = lst
            self._poll.register(lst.fd, _POLLIN)

    def _drop(self, lst: Listener) -> None:
        self._poll.unregister(lst.fd)
        del self._listeners[lst.fd]
        lst.close()

    @property
    def listeners(self) -> list[Listener]:
        return list(self._listeners.values())

    def close(self) -> None:
        """Close every listener and the wake-up pipe (after run returned)."""
        self._take_pending()
        for lst in list(self._listeners.values()):
            self._drop(lst)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1

    # --- the loop ----------------------------------------------------------
    def run(self) -> None:
        """Serve until no listener is left (every filter's tasks are gone) or stop()."""
        while True:
            if self._pending:  # RECV mode returns for them (polling takes them itself)
                self._take_pending()
            if not self._listeners or self._stopping:
                return
            lst = self._single()
            if lst is not None:
                self._serve_blocking(lst)
            else:
                self._serve_polling()

    def _single(self) -> Listener | None:
        """The listener to block in RECV on, if the single-listener mode applies."""
        if not self._can_block or len(self._listeners) != 1:
            return None
        for lst in self._listeners.values():
            if lst.sync_wakeup:  # 6.6+: RECV also returns when the last task is gone
                return lst
        return None

    def _serve_blocking(self, lst: Listener) -> None:
        """Block in RECV on ``lst`` until kicked (add_listener, stop) or its tasks are gone."""
        cond = self._kick_cond
        with cond:
            self._blocked_in = threading.get_ident()
            self._kicks_seen = seen = self._kicks
        try:
            if self._pending or self._stopping:
                return  # asked for before we were kickable
            fd = lst.fd
            recv = lst.ioctls.recv
            handle = self._handle
            while self._kicks == seen:
                try:
                    raw = recv(fd)
                except OSError as e:
                    if e.errno == _EINTR:
                        continue  # a kick (seen above) or some other signal
                    if e.errno == _ENOENT:
                        if _hung_up(fd):  # no task left: ENOENT at once, forever
                            self._drop(lst)
                            return
                        continue  # the caller left before we took its notification
                    self.log(f"sentry: RECV on listener {fd} failed: {e}")
                    continue
                handle(lst, raw)
        finally:
            with cond:
                self._blocked_in = None
                cond.notify_all()

    def _serve_polling(self) -> None:
        """poll() every listener and the wake-up pipe until the set allows blocking."""
        poll = self._poll.poll
        listeners = self._listeners
        wake_r = self._wake_r
        serve = self.serve_one
        while listeners and not self._stopping:
            changed = False
            for fd, events in poll():
                if fd == wake_r:
                    try:
                        os.read(wake_r, 4096)
                    except BlockingIOError:
                        pass
                    self._take_pending()
                    changed = True
                    continue
                lst = listeners.get(fd)
                if lst is None:
                    continue
                if events & _POLLIN:
                    serve(lst)
                if events & _POLLGONE:
                    self._drop(lst)
                    changed = True
            if changed and self._single() is not None:
                return

    def serve_one(self, lst: Listener) -> None:
        """RECV one notification from ``lst`` (which must be readable) and answer it."""
        try:
            raw = lst.recv_raw()
        except OSError as e:
            if e.errno not in (_ENOENT, _EINTR):
                self.log(f"sentry: RECV on listener {lst.fd} failed: {e}")
            return  # ENOENT: the caller left already, or the filter has no task left
        self._handle(lst, raw)

    def _handle(self, lst: Listener, raw: tuple[int, ...]) -> None:
        """Dispatch and answer one received notification (raw: NotifIoctls.recv's tuple)."""
        nr = raw[3]
        tracing = self.strace is not None
        started = _now() if tracing else 0
        call = Call(raw[0], raw[1], nr, raw[4], raw[5], raw[6:12], lst, tracing)
        handler = self.routing.get(nr) if raw[4] == _ARCH else None
        result: Result
        if handler is None:  # unknown number, or a foreign ABI the filter let through
            result = _ENOSYS_RESULT
            disposition = UNROUTED
        else:
            try:
                result = handler(call)
            except NotificationGone:
                self._count(GONE, nr)
                if tracing:
                    self._trace(call, "? (caller gone)", started)
                return
            except OSError as e:
                result = Errno(e.errno or HANDLER_FAILURE_ERRNO)
                disposition = ERROR
            except Exception:
                self.log(
                    f"sentry: handler for syscall {self._name(nr)} failed"
                    f" ({call!r}); answering EIO\n{_format_exception()}"
                )
                result = _EIO_RESULT
                disposition = FAILED
            else:
                if result.__class__ is int:  # the common case, without the chain below
                    try:
                        lst.ioctls.send(lst.fd, raw[0], result, 0)
                        disposition = VALUE
                    except OSError as e:
                        if e.errno != _ENOENT:
                            self.log(f"sentry: answering {self._name(nr)} ({call!r}) failed: {e}")
                        disposition = GONE
                    key = (disposition, nr)
                    counts = self.counts
                    counts[key] = counts.get(key, 0) + 1
                    if tracing:
                        self._trace(
                            call, str(result) if disposition is VALUE else "? (gone)", started
                        )
                    return
                disposition = ""
        self._answer(lst, call, result, disposition, started)

    def _answer(
        self, lst: Listener, call: Call, result: Result, disposition: str, started: int
    ) -> None:
        """Every answer but a plain value from a handler: errno, fd, CONTINUE, a bad result."""
        nr = call.nr
        notif_id = call.id
        try:
            if type(result) is int:
                lst.send_value(notif_id, result)
                disposition = disposition or VALUE
            elif isinstance(result, Errno):
                lst.send_error(notif_id, result.errno)
                disposition = disposition or ERROR
            elif isinstance(result, InstallFd):
                install = result
                try:
                    result = _addfd_here(lst, call, install)
                    disposition = FD
                except OSError as e:
                    if e.errno == _ENOENT:
                        raise  # the caller is gone
                    # The caller still waits and must be answered: EMFILE (its fd
                    # limit), or EBADF for an fd ADDFD does not take (O_PATH).
                    self.log(f"sentry: installing an fd for {self._name(nr)} failed: {e}")
                    result = Errno(e.errno or HANDLER_FAILURE_ERRNO)
                    lst.send_error(notif_id, result.errno)
                    disposition = ERROR
                finally:
                    if install.close:
                        os.close(install.fd)
            elif isinstance(result, Continue):
                lst.send_continue(notif_id)
                disposition = CONTINUED
            else:
                self.log(f"sentry: handler for {self._name(nr)} returned {result!r}; answering EIO")
                result = _EIO_RESULT
                lst.send_error(notif_id, HANDLER_FAILURE_ERRNO)
                disposition = FAILED
        except OSError as e:
            if e.errno != _ENOENT:
                self.log(f"sentry: answering {self._name(nr)} ({call!r}) failed: {e}")
            disposition = GONE
        self._count(disposition, nr)
        if call.tracing:
            self._trace(call, _result_text(result) if disposition != GONE else "? (gone)", started)

    # --- observability -----------------------------------------------------
    def _count(self, disposition: str, nr: int) -> None:
        key = (disposition, nr)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1

    def _name(self, nr: int) -> str:
        return self.names.get(nr) or f"syscall_{nr}"

    def stats(self) -> dict[str, dict[str, int]]:
        """{disposition: {syscall name: count}} of everything served so far.

        Safe from another thread: copying a dict is one C call under the GIL,
        so the loop thread cannot add a key in the middle of it.
        """
        out: dict[str, dict[str, int]] = {}
        for (disposition, nr), n in sorted(self.counts.copy().items()):
            out.setdefault(disposition, {})[self._name(nr)] = n
        return out

    def _trace(self, call: Call, result: str, started: int) -> None:
        assert self.strace is not None
        if call.detail is None:
            count = self.argc.get(call.nr)
            args = list(call.args[:count] if count is not None else call.args)
            while count is None and args and args[-1] == 0:
                args.pop()
            detail = ", ".join(hex(a) for a in args)
        else:
            detail = call.detail
        took = (time.perf_counter_ns() - started) / 1000
        self.strace.write(
            f"[{call.pid:>7}] {self._name(call.nr)}({detail}) = {result} ({took:.1f}us)\n"
        )


def _addfd_here(lst: Listener, call: Call, install: InstallFd) -> int:
    """NOTIF_ADDFD with ADDFD_FLAG_SEND, with the caller and the sentry kept on
    this CPU.

    The kernel wakes the caller of an ADDFD with a plain wake-up, not the
    synchronous one SYNC_WAKE_UP gives a SEND, and the caller then wakes the
    sentry (waiting in the ioctl for the fd to be installed) the same way.
    While the other runs here, the scheduler puts each on the other, idle
    CPU, and waking an idle vCPU costs ~50 us on this kind of machine: an
    open through the gofer took ~200 us, against ~120 us with both allowed
    only this CPU for the moment of the ADDFD (measured with a counter in
    this function: the ioctl itself 35-40 us -> 11.5 us). Each gets its own
    CPU mask back as soon as the ioctl returns; the caller can change its
    mask only with a call of its own, which it cannot make before the fd is
    installed, and a change it made earlier is the mask read here.
    """
    pid = call.pid
    try:
        own = _own_cpus()  # read before the first pin
        mask = os.sched_getaffinity(pid)
        cpu = _current_cpu()
        pinned = cpu in mask and len(mask) > 1 and len(own) > 1
        if pinned:
            os.sched_setaffinity(pid, (cpu,))
            os.sched_setaffinity(0, (cpu,))
    except OSError:
        pinned = False
    try:
        return lst.addfd_send(call.id, install.fd, install.cloexec)
    finally:
        if pinned:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(pid, mask)
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, own)


def _result_text(result: Result | int) -> str:
    if isinstance(result, Errno):
        name = _errno.errorcode.get(result.errno, str(result.errno))
        return f"-1 {name} ({os.strerror(result.errno)})"
    if isinstance(result, Continue):
        return "(continued in the kernel)"
    if isinstance(result, InstallFd):
        return f"fd {result.fd}"
    return str(result)


def _format_exception() -> str:
    """The current exception with its frames (file, line, function), like a
    traceback without source lines: the traceback module costs ~5 ms at
    import (linecache, tokenize, re), and a confined sentry could not read
    the sources anyway."""
    exc = sys.exc_info()[1]
    if exc is None:
        return ""
    lines = ["Traceback (most recent call last):"]
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        lines.append(f'  File "{code.co_filename}", line {tb.tb_lineno}, in {code.co_name}')
        tb = tb.tb_next
    lines.append(f"{type(exc).__name__}: {exc}")
    return "\n".join(lines)
