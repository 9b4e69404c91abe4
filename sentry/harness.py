"""Run a function in a forked child under a seccomp filter whose listener the parent gets.

For the sentry's tests and benchmarks (and as the shape of what init does):
the child sets no_new_privs, loads the filter as init does
(kernel.seccomp_load_listener: NEW_LISTENER, WAIT_KILLABLE_RECV), sends the
listener fd to the parent over a socketpair *before* making any call the
filter routes to it (sendmsg, close and exit must be allowed by the filter),
closes its copy and runs ``body``.
The parent serves the listener; the child's exit status is ``body``'s return
value (1 and a traceback on stderr if it raised).
"""

from __future__ import annotations

import os
import socket
import sys
import traceback
from collections.abc import Callable

from pysandbox.oci import kernel

from .notify import recv_listener, send_listener


def spawn_under_filter(bpf: bytes, body: Callable[[], int]) -> tuple[int, int]:
    """Fork; the child runs ``body`` under ``bpf``. Returns (child pid, listener fd)."""
    parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 1
        try:
            parent_sock.close()
            kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
            fd = kernel.seccomp_load_listener(bpf)  # as init loads it (oci/spawn.py)
            send_listener(child_sock, fd)
            os.close(fd)
            child_sock.close()
            code = body()
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    child_sock.close()
    try:
        fd = recv_listener(parent_sock)
    except BaseException:
        os.waitpid(pid, 0)
        raise
    finally:
        parent_sock.close()
    return pid, fd
