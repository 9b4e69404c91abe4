"""TraceeMemory and the process_vm_* bindings, on this process's own memory."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os

import pytest

from pysandbox.oci import kernel
from pysandbox.sentry.memory import PAGE_SIZE, TraceeMemory

_libc = ctypes.CDLL(None, use_errno=True)


def _two_pages_second_unmapped() -> tuple[mmap.mmap, int]:
    m = mmap.mmap(-1, 2 * PAGE_SIZE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    assert _libc.munmap(ctypes.c_void_p(base + PAGE_SIZE), ctypes.c_size_t(PAGE_SIZE)) == 0
    return m, base


def test_read_write_roundtrip_and_large_transfers() -> None:
    mem = TraceeMemory(os.getpid())
    size = kernel.VM_BUF_SIZE * 2 + 123  # split into several transfers
    buf = ctypes.create_string_buffer(size)
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    mem.write(ctypes.addressof(buf), data)
    assert buf.raw[:size] == data
    assert mem.read(ctypes.addressof(buf), size) == data
    assert mem.read(ctypes.addressof(buf), 0) == b""


def test_cstring_stops_at_nul_before_an_unmapped_page_and_faults_past_it() -> None:
    mem = TraceeMemory(os.getpid())
    m, base = _two_pages_second_unmapped()
    text = b"/a/path/at/the/end"
    at = base + PAGE_SIZE - len(text) - 1
    ctypes.memmove(at, text + b"\0", len(text) + 1)
    assert mem.read_cstring(at) == text
    ctypes.memmove(at + 1, text, len(text))  # no NUL before the hole
    with pytest.raises(OSError) as e:
        mem.read_cstring(at + 1)
    assert e.value.errno == errno.EFAULT
    with pytest.raises(OSError) as e:
        mem.read(base + PAGE_SIZE - 4, 8)  # straddles into the hole: all or nothing
    assert e.value.errno == errno.EFAULT
    del m


def test_cstring_across_pages_and_too_long() -> None:
    mem = TraceeMemory(os.getpid())
    m = mmap.mmap(-1, 3 * PAGE_SIZE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
    text = b"x" * (PAGE_SIZE + 100)
    ctypes.memmove(base + 10, text + b"\0", len(text) + 1)
    assert mem.read_cstring(base + 10, 3 * PAGE_SIZE) == text
    with pytest.raises(OSError) as e:
        mem.read_cstring(base + 10, 200)
    assert e.value.errno == errno.ENAMETOOLONG
    del m


def test_writes_honour_page_protection() -> None:
    mem = TraceeMemory(os.getpid())
    m = mmap.mmap(-1, PAGE_SIZE)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    _libc.mprotect(ctypes.c_void_p(addr), ctypes.c_size_t(PAGE_SIZE), mmap.PROT_READ)
    with pytest.raises(OSError) as e:
        mem.write(addr, b"nope")
    assert e.value.errno == errno.EFAULT
    assert mem.read(addr, 4) == b"\0\0\0\0"
    for bad in (0, 8):
        with pytest.raises(OSError) as e:
            mem.read(bad, 4)
        assert e.value.errno == errno.EFAULT
