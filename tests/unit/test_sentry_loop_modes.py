"""The loop's two ways of waiting: RECV itself (one listener) and poll (several).

With one listener the loop thread blocks in RECV; add_listener and stop must
get it out (KICK_SIGNAL) without losing the request and without spinning, and
it must go back to RECV when the second listener is gone.
"""

from __future__ import annotations

import os
import threading
import time

from pysandbox.oci import kernel
from pysandbox.sentry import bpf, harness, loop
from pysandbox.syscalls import info as handlers_info


def _spawn(body_seconds: float, w: int) -> tuple[int, int]:
    """A child that makes one uname (reporting its release on ``w``), then sleeps."""

    def body() -> int:
        os.write(w, os.uname().release.encode() + b"\n")
        time.sleep(body_seconds)
        return 0

    prog = bpf.routing_filter(notify=[kernel.SYS_UNAME])
    return harness.spawn_under_filter(prog, body)


def _read_line(r: int, timeout: float) -> bytes:
    import select

    ready = select.select([r], [], [], timeout)[0]
    assert ready, "no answer in time: the loop did not serve the call"
    return os.read(r, 100).strip()


def _reap(pid: int) -> int:
    return os.waitpid(pid, 0)[1]


def test_one_listener_blocks_in_recv_and_a_second_one_is_served_at_once() -> None:
    sentry = loop.Sentry(handlers_info.InfoHandlers().routes())
    r, w = os.pipe()
    pid1, fd1 = _spawn(1.5, w)
    first = sentry.add_listener(fd1)
    cpu: list[float] = []

    def run() -> None:
        t0 = time.thread_time()
        sentry.run()
        cpu.append(time.thread_time() - t0)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert _read_line(r, 5) == b"4.4.0"
        time.sleep(0.1)  # the loop is now blocked in RECV on the only listener
        if first.sync_wakeup:
            assert sentry._blocked_in == thread.ident
        pid2, fd2 = _spawn(0.3, w)
        t0 = time.monotonic()
        sentry.add_listener(fd2)
        assert _read_line(r, 5) == b"4.4.0"
        assert time.monotonic() - t0 < 1.0  # not after child 1's sleep ended
        assert _reap(pid2) == 0
        assert _reap(pid1) == 0
        thread.join(5)
        assert not thread.is_alive(), "the loop did not end after both children exited"
    finally:
        os.close(r)
        os.close(w)
        sentry.close()
    assert sentry.stats() == {"value": {"syscall_63": 2}}
    assert cpu[0] < 0.3, f"the loop used {cpu[0]:.3f}s of CPU while mostly idle"


def test_stop_gets_the_loop_out_of_recv() -> None:
    sentry = loop.Sentry(handlers_info.InfoHandlers().routes())
    r, w = os.pipe()
    pid, fd = _spawn(30, w)
    sentry.add_listener(fd)
    thread = threading.Thread(target=sentry.run, daemon=True)
    thread.start()
    try:
        assert _read_line(r, 5) == b"4.4.0"
        time.sleep(0.1)
        t0 = time.monotonic()
        sentry.stop()
        thread.join(5)
        assert not thread.is_alive(), "stop() did not end run()"
        assert time.monotonic() - t0 < 1.0
        assert len(sentry.listeners) == 1  # stop leaves the listeners open
    finally:
        os.kill(pid, 9)
        _reap(pid)
        os.close(r)
        os.close(w)
        sentry.close()


def test_stop_from_a_handler_of_the_loop_itself() -> None:
    sentry: loop.Sentry

    def uname(call: loop.Call) -> loop.Result:
        sentry.stop()  # the loop thread kicks itself: must not wait for itself
        return 0

    sentry = loop.Sentry({kernel.SYS_UNAME: uname})
    r, w = os.pipe()
    pid, fd = _spawn(30, w)
    sentry.add_listener(fd)
    thread = threading.Thread(target=sentry.run, daemon=True)
    thread.start()
    try:
        thread.join(5)
        assert not thread.is_alive(), "stop() from a handler did not end run()"
    finally:
        os.kill(pid, 9)
        _reap(pid)
        os.close(r)
        os.close(w)
        sentry.close()
