"""A tiny classic-BPF builder for seccomp filters that route by syscall number.

The product's filters come from the policy compiler (libseccomp, in
``policies/``). This builder exists for the sentry's own tests and benchmarks
and for bring-up: it emits the smallest correct filter for "these numbers go to
the listener, these fail with an errno, the rest is allowed", with the checks
every filter of ours must start with: a foreign architecture (i386 ``int
0x80``) and the x32 range (which carries AUDIT_ARCH_X86_64) kill the process.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping

from pysandbox.oci import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

_INSN: Final = struct.Struct("=HBBI")
_LD_W_ABS: Final = 0x20
_JEQ_K: Final = 0x15
_JGE_K: Final = 0x35
_RET_K: Final = 0x06
_OFF_NR: Final = 0
_OFF_ARCH: Final = 4
_X32_SYSCALL_BIT: Final = 0x40000000

RET_KILL_PROCESS: Final = 0x80000000
RET_ERRNO: Final = 0x00050000
RET_USER_NOTIF: Final = kernel.SECCOMP_RET_USER_NOTIF
RET_ALLOW: Final = 0x7FFF0000


def _insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return _INSN.pack(code, jt, jf, k)


def routing_filter(
    notify: Iterable[int] = (), errno: Mapping[int, int] | None = None, default: int = RET_ALLOW
) -> bytes:
    """BPF: arch/x32 check, then USER_NOTIF for ``notify``, ERRNO for ``errno``, else ``default``.

    A linear list of comparisons: fine for the few numbers tests route; the
    policy compiler builds the real, balanced filters.
    """
    rules: list[tuple[int, int]] = [(nr, RET_USER_NOTIF) for nr in notify]
    rules += [(nr, RET_ERRNO | (e & 0xFFFF)) for nr, e in (errno or {}).items()]
    prog = [
        _insn(_LD_W_ABS, 0, 0, _OFF_ARCH),
        _insn(_JEQ_K, 1, 0, kernel.AUDIT_ARCH_X86_64),
        _insn(_RET_K, 0, 0, RET_KILL_PROCESS),
        _insn(_LD_W_ABS, 0, 0, _OFF_NR),
        _insn(_JGE_K, 0, 1, _X32_SYSCALL_BIT),
        _insn(_RET_K, 0, 0, RET_KILL_PROCESS),
    ]
    for nr, action in rules:
        prog.append(_insn(_JEQ_K, 0, 1, nr))
        prog.append(_insn(_RET_K, 0, 0, action))
    prog.append(_insn(_RET_K, 0, 0, default))
    return b"".join(prog)
