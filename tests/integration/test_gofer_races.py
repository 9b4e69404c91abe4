"""The gofer under the host's ordinary churn: other processes mounting and
unmounting (every container start does) must not change what a path names."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pysandbox.gofer import process as gofer_process
from pysandbox.gofer.protocol import Credentials
from pysandbox.oci import kernel


def test_dotdot_paths_survive_mounts_elsewhere(tmp_path: Path) -> None:
    # A scoped lookup through ".." fails with EAGAIN whenever any mount on the
    # host raced it; the gofer must retry, not answer EAGAIN (or let ld report
    # ENOENT, as a build under load once did).
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "c").write_text("x")
    scratch = tmp_path / "m"
    scratch.mkdir()
    churn = os.fork()
    if churn == 0:
        code = 1
        try:
            kernel.unshare(kernel.CLONE_NEWNS)
            kernel.mount(None, "/", None, kernel.MS_REC | kernel.MS_PRIVATE)
            end = time.monotonic() + 3
            while time.monotonic() < end:
                kernel.mount("tmpfs", str(scratch), "tmpfs", 0)
                kernel.umount2(str(scratch))
            code = 0
        finally:
            os._exit(code)
    errors: dict[int, int] = {}
    try:
        with gofer_process.start(str(root), kernel_mounts=["/proc"]) as gofer:
            client = gofer.client(Credentials(0, 0))
            end = time.monotonic() + 2
            calls = 0
            while time.monotonic() < end:
                calls += 1
                try:
                    client.stat(b"/a/b/../c")
                except OSError as e:
                    errors[e.errno or 0] = errors.get(e.errno or 0, 0) + 1
    finally:
        _pid, status = os.waitpid(churn, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert calls > 500 and errors == {}, (calls, errors)
