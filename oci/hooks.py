"""OCI lifecycle hooks (runtime-spec config.md "POSIX-platform Hooks").

A hook is executed with ``path`` as the program, ``args`` as its argv (so
``args[0]`` is argv[0]; an empty ``args`` means ``[path]``) and exactly
``env`` as its environment: nothing of the runtime's environment leaks in. The
container's state JSON is written to its stdin, which is then closed; a hook
that never reads stdin, or exits before reading all of it, is not an error.

Output: like runc, a hook's stdout and stderr are both captured and only
surface when the hook fails (the error message carries the last lines of
stderr, or of stdout when stderr is empty). Passing a hook's stdout through
would corrupt the output of commands whose stdout is a protocol (``state``,
``run`` with a console), and containerd/podman only look at the error anyway.

A hook fails when it cannot be executed, exits non-zero, is killed by a
signal, or outlives ``timeout`` seconds (it is then sent SIGKILL). We wait for
the hook *process*, not for EOF on its pipes: a hook that leaves a background
child holding stdout/stderr open does not hang the runtime.

Hook numbers in messages are 0-based positions in their list, as runc prints
them.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

from pysandbox.oci.credentials import env_dict

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Protocol

__all__ = ["HookError", "run_hook", "run_hooks"]

# Keep at most this much of each output stream (the tail is what matters).
_OUTPUT_CAP: Final = 64 * 1024
# Lines of output quoted in an error message, and at most this many characters.
_TAIL_LINES: Final = 2
_TAIL_CHARS: Final = 512
_READ_CHUNK: Final = 65536


if TYPE_CHECKING:

    class HookLike(Protocol):
        """What a hook entry of config.json provides (``pysandbox.oci.config.Hook``)."""

        @property
        def path(self) -> str: ...

        @property
        def args(self) -> list[str]: ...

        @property
        def env(self) -> list[str]: ...

        @property
        def timeout(self) -> int | None: ...


class HookError(Exception):
    """A hook failed; ``str(err)`` is the message for the caller."""

    def __init__(self, kind: str, index: int, path: str, reason: str) -> None:
        self.kind = kind
        self.index = index
        self.path = path
        self.reason = reason
        super().__init__(f"{kind} hook #{index} ({path}): {reason}")


def _tail(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    if not text:
        return ""
    tail = " / ".join(line.strip() for line in text.splitlines()[-_TAIL_LINES:])
    tail = "".join(ch if ch.isprintable() else "?" for ch in tail[-_TAIL_CHARS:])
    return tail if len(tail) < _TAIL_CHARS else "..." + tail[3:]


def _append(buf: bytearray, chunk: bytes) -> None:
    buf += chunk
    if len(buf) > _OUTPUT_CAP:
        del buf[: len(buf) - _OUTPUT_CAP]


def _describe_status(status: int) -> str:
    if status >= 0:
        return f"exit status {status}"
    sig = -status
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = f"signal {sig}"
    return f"killed by signal {sig} ({name})"


def _drain(fd: int, buf: bytearray) -> bool:
    """Read what is available on a non-blocking fd; True once it hit EOF."""
    while True:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if not chunk:
            return True
        _append(buf, chunk)


def run_hook(hook: HookLike, state: bytes, *, kind: str, index: int) -> None:
    """Run one hook to completion; raise HookError if it fails."""
    path = hook.path
    argv = list(hook.args) if hook.args else [path]
    # execv semantics: a path is never looked up in PATH.
    executable = path if "/" in path else os.path.join(".", path)
    timeout = hook.timeout if hook.timeout is not None and hook.timeout > 0 else None

    def fail(reason: str) -> HookError:
        return HookError(kind, index, path, reason)

    try:
        proc = subprocess.Popen(
            argv,
            executable=executable,
            env=env_dict(hook.env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            restore_signals=True,
        )
    except OSError as exc:
        raise fail(f"exec failed: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL byte in path, args or env
        raise fail(f"exec failed: {exc}") from None

    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    in_fd, out_fd, err_fd = proc.stdin.fileno(), proc.stdout.fileno(), proc.stderr.fileno()
    for fd in (in_fd, out_fd, err_fd):
        os.set_blocking(fd, False)
    pidfd = os.pidfd_open(proc.pid)
    out_buf, err_buf = bytearray(), bytearray()
    pending = memoryview(state)
    deadline = None if timeout is None else time.monotonic() + timeout
    timed_out = False
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        poller.register(out_fd, select.POLLIN)
        poller.register(err_fd, select.POLLIN)
        stdin_open = True
        if pending:
            poller.register(in_fd, select.POLLOUT)
        else:
            proc.stdin.close()
            stdin_open = False
        exited = False
        while not exited:
            wait_ms: int | None = None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    timed_out = True
                    break
                wait_ms = max(1, int(left * 1000) + 1)
            for fd, _ev in poller.poll(wait_ms):
                if fd == pidfd:
                    exited = True
                elif fd == in_fd and stdin_open:
                    try:
                        n = os.write(in_fd, pending)
                        pending = pending[n:]
                        done = not pending
                    except BlockingIOError:
                        done = False
                    except OSError as exc:
                        # EPIPE: the hook does not want (more of) the state.
                        if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                            raise
                        done = True
                    if done:
                        poller.unregister(in_fd)
                        proc.stdin.close()
                        stdin_open = False
                elif fd in (out_fd, err_fd) and _drain(fd, out_buf if fd == out_fd else err_buf):
                    poller.unregister(fd)
        if timed_out:
            try:
                proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
        status = proc.wait()
        # Whatever the hook wrote before it exited is already in the pipes.
        _drain(out_fd, out_buf)
        _drain(err_fd, err_buf)
    finally:
        os.close(pidfd)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                stream.close()
            except OSError:
                pass
        if proc.returncode is None:
            proc.kill()
            proc.wait()

    if timed_out:
        reason = f"timed out after {timeout}s"
    elif status != 0:
        reason = _describe_status(status)
    else:
        return
    detail = _tail(bytes(err_buf)) or _tail(bytes(out_buf))
    raise fail(f"{reason}: {detail}" if detail else reason)


def run_hooks(
    hooks: Sequence[HookLike],
    state: bytes,
    *,
    kind: str,
    warn_only: bool = False,
    warn: Callable[[str], None] | None = None,
) -> None:
    """Run hooks in order; the first failure raises and skips the rest.

    With ``warn_only`` (poststop) a failure is passed to ``warn`` and the
    remaining hooks still run.
    """
    for index, hook in enumerate(hooks):
        try:
            run_hook(hook, state, kind=kind, index=index)
        except HookError as exc:
            if not warn_only:
                raise
            if warn is not None:
                warn(str(exc))
