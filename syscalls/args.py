"""Decoding register arguments: a notification reports all six as unsigned 64-bit."""

from __future__ import annotations


def s32(value: int) -> int:
    """The low 32 bits as a C int (pid_t, int flags): the kernel ignores the high half."""
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value
