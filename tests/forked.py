"""Run a function in a forked child (which may then load seccomp filters or
worse without harming the test process) and collect its JSON-able result."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any


def run_in_child(child: Callable[[], Any]) -> tuple[int, Any]:
    """Fork; the child runs child() and reports its JSON result (or the
    exception it raised, as {"exception": repr}) through a pipe.
    Returns (wait status, result or None if the child died without a word)."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(rfd)
            os.write(wfd, json.dumps(child()).encode())
        except BaseException as e:
            try:
                os.write(wfd, json.dumps({"exception": repr(e)}).encode())
            finally:
                code = 3
        os._exit(code)
    os.close(wfd)
    chunks = []
    while chunk := os.read(rfd, 65536):
        chunks.append(chunk)
    os.close(rfd)
    _, status = os.waitpid(pid, 0)
    data = b"".join(chunks)
    return status, json.loads(data) if data else None
