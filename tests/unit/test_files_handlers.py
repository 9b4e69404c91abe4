"""The pieces of syscalls/files.py that need no container: credentials from
/proc/TID/status (real processes), id maps, the struct layouts."""

from __future__ import annotations

import os
import struct

import pytest

from pysandbox.gofer.protocol import Stat
from pysandbox.syscalls.files import IdMap, StatusFiles, pack_stat, read_creds


def test_credentials_are_the_tasks_own() -> None:
    pid = os.fork()
    if pid == 0:  # a task with other ids and umask than ours
        os.umask(0o027)
        os.setgroups([7, 8])
        os.setresgid(300, 301, 302)
        os.setresuid(200, 201, 202)
        import time

        time.sleep(5)
        os._exit(0)
    try:
        import time

        deadline = time.monotonic() + 5
        while read_creds(pid).ruid != 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        creds = read_creds(pid)
        assert (creds.ruid, creds.fsuid, creds.rgid, creds.fsgid) == (200, 201, 300, 301)
        assert creds.groups == (7, 8)
        assert creds.umask == 0o027
        assert creds.cap_effective == 0  # a uid change away from root clears them
        files = StatusFiles()
        assert files.creds(pid) == creds
        assert files.creds(pid) == creds  # the kept fd, read again
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    # the task is gone: its kept file says so, and the tid is not trusted again
    with pytest.raises(OSError):
        files.creds(pid)
    assert pid not in files.fds
    files.close()


def test_a_kept_status_file_never_speaks_for_a_new_task() -> None:
    files = StatusFiles()
    pid = os.fork()
    if pid == 0:
        import time

        time.sleep(5)
        os._exit(0)
    files.creds(pid)
    fd = files.fds[pid]
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.pread(fd, 100, 0)  # what makes reuse of the tid safe
    files.close()


def test_id_maps() -> None:
    ident = IdMap.of(os.getpid(), "uid")
    assert ident.ranges == [] and ident.to_host(5) == 5 and ident.to_container(5) == 5
    m = IdMap([(0, 100000, 1000), (1000, 5000, 10)])
    assert m.to_host(0) == 100000 and m.to_host(1005) == 5005
    assert m.to_container(100999) == 999 and m.to_container(5009) == 1009
    assert m.to_container(42) == 65534  # unmapped: the overflow id, as stat shows it
    with pytest.raises(OSError):
        m.to_host(2000)


def test_struct_stat_layout_is_the_kernels() -> None:
    st = Stat(1, 2, 0o100644, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
    raw = pack_stat(st, 40, 50)
    assert len(raw) == 144
    dev, ino, nlink, mode, uid, gid = struct.unpack_from("<QQQIII", raw)
    assert (dev, ino, nlink, mode, uid, gid) == (1, 2, 3, 0o100644, 40, 50)
    assert struct.unpack_from("<qqqqqqqqq", raw, 48) == (7, 8, 9, 10, 11, 12, 13, 14, 15)
