"""Compile and load the OCI ``linux.seccomp`` object (runtime-spec 1.2).

Two halves with different cost profiles:

* :func:`compile_bpf` / :func:`compile_cached` run in the runtime before the
  container exists. They validate the object, turn it into a libseccomp
  filter (through ``pyseccomp``, imported lazily: it costs ~25 ms because it
  looks libseccomp up with ldconfig) and export classic BPF bytes.
  :func:`compile_cached` keeps those bytes in a cache directory keyed by the
  sha256 of the canonical JSON, so docker's ~300-name default profile is
  compiled once per machine, not once per container.
* :func:`load_filter` runs in the container's init: it only hands the
  precompiled bytes to ``seccomp(2)`` through :mod:`pysandbox.oci.kernel`.

Semantics follow what runc documents and does:

* ``SCMP_ACT_KILL`` kills the thread (like ``SCMP_ACT_KILL_THREAD``);
  ``SCMP_ACT_ERRNO`` and ``SCMP_ACT_TRACE`` take ``errnoRet`` (for the
  default action ``defaultErrnoRet``) and default to EPERM.
* Conditions of one ``syscalls[]`` entry are ANDed in one rule, unless two
  of them name the same argument index (libseccomp can compare an argument
  only once per rule): then *every* condition of the entry becomes a rule of
  its own, i.e. they are ORed. This is runc's long-standing behaviour
  (opencontainers/runc#2735) and profiles such as docker's rely on it.
* Syscall names libseccomp does not know are skipped (profiles name calls
  that older kernels or libseccomp lack); unknown actions, operators,
  architectures and flags are errors that name the offending field.
* A rule whose action equals the default action is dropped (libseccomp would
  reject it and it changes nothing).
* Like runc, syscalls numbered above the highest one the profile names (on
  x86_64 and i386) return ENOSYS instead of the default action when the
  default action denies, so that libc falls back from syscalls newer than the
  profile (``fchmodat2``, ...) instead of failing with EPERM.
* ``SECCOMP_FILTER_FLAG_TSYNC`` is accepted and not passed: the filter is
  installed by a single-threaded init just before execve.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Mapping, Sequence

from pysandbox.oci import jsonio
from pysandbox.oci.records import record

from . import kernel

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = [
    "SUPPORTED_ACTIONS",
    "SUPPORTED_ARCHES",
    "SUPPORTED_FLAGS",
    "SUPPORTED_OPERATORS",
    "CompiledFilter",
    "SeccompError",
    "compile_bpf",
    "compile_cached",
    "load_filter",
]

_FIELD: Final = "linux.seccomp"

# --- kernel ABI constants (linux/seccomp.h, linux/audit.h) ---------------------
_RET_KILL_PROCESS: Final = 0x80000000
_RET_KILL_THREAD: Final = 0x00000000
_RET_TRAP: Final = 0x00030000
_RET_ERRNO: Final = 0x00050000
_RET_USER_NOTIF: Final = 0x7FC00000
_RET_TRACE: Final = 0x7FF00000
_RET_LOG: Final = 0x7FFC0000
_RET_ALLOW: Final = 0x7FFF0000
_RET_DATA: Final = 0x0000FFFF

FILTER_FLAG_TSYNC: Final = 1 << 0
FILTER_FLAG_LOG: Final = 1 << 1
FILTER_FLAG_SPEC_ALLOW: Final = 1 << 2
FILTER_FLAG_NEW_LISTENER: Final = 1 << 3
FILTER_FLAG_WAIT_KILLABLE_RECV: Final = 1 << 5

_EPERM: Final = 1
_ENOSYS: Final = 38

_AUDIT_ARCH_64BIT: Final = 0x80000000
_AUDIT_ARCH_LE: Final = 0x40000000
_MIPS64N32: Final = 0x20000000
_EM_386, _EM_MIPS, _EM_PARISC, _EM_PPC, _EM_PPC64, _EM_S390 = 3, 8, 15, 20, 21, 22
_EM_ARM, _EM_X86_64, _EM_AARCH64, _EM_RISCV = 40, 62, 183, 243

# OCI name -> AUDIT_ARCH_* value (libseccomp's SCMP_ARCH_* tokens are the same).
_ARCHES: Final[dict[str, int]] = {
    "SCMP_ARCH_X86": _EM_386 | _AUDIT_ARCH_LE,
    "SCMP_ARCH_X86_64": _EM_X86_64 | _AUDIT_ARCH_64BIT | _AUDIT_ARCH_LE,
    "SCMP_ARCH_X32": _EM_X86_64 | _AUDIT_ARCH_LE,
    "SCMP_ARCH_ARM": _EM_ARM | _AUDIT_ARCH_LE,
    "SCMP_ARCH_AARCH64": _EM_AARCH64 | _AUDIT_ARCH_64BIT | _AUDIT_ARCH_LE,
    "SCMP_ARCH_MIPS": _EM_MIPS,
    "SCMP_ARCH_MIPS64": _EM_MIPS | _AUDIT_ARCH_64BIT,
    "SCMP_ARCH_MIPS64N32": _EM_MIPS | _AUDIT_ARCH_64BIT | _MIPS64N32,
    "SCMP_ARCH_MIPSEL": _EM_MIPS | _AUDIT_ARCH_LE,
    "SCMP_ARCH_MIPSEL64": _EM_MIPS | _AUDIT_ARCH_64BIT | _AUDIT_ARCH_LE,
    "SCMP_ARCH_MIPSEL64N32": _EM_MIPS | _AUDIT_ARCH_64BIT | _AUDIT_ARCH_LE | _MIPS64N32,
    "SCMP_ARCH_PPC": _EM_PPC,
    "SCMP_ARCH_PPC64": _EM_PPC64 | _AUDIT_ARCH_64BIT,
    "SCMP_ARCH_PPC64LE": _EM_PPC64 | _AUDIT_ARCH_64BIT | _AUDIT_ARCH_LE,
    "SCMP_ARCH_PARISC": _EM_PARISC,
    "SCMP_ARCH_PARISC64": _EM_PARISC | _AUDIT_ARCH_64BIT,
    "SCMP_ARCH_RISCV64": _EM_RISCV | _AUDIT_ARCH_64BIT | _AUDIT_ARCH_LE,
    "SCMP_ARCH_S390": _EM_S390,
    "SCMP_ARCH_S390X": _EM_S390 | _AUDIT_ARCH_64BIT,
}
_ARCH_X86_64: Final = _ARCHES["SCMP_ARCH_X86_64"]
_ARCH_X86: Final = _ARCHES["SCMP_ARCH_X86"]
_X32_SYSCALL_BIT: Final = 0x40000000

# OCI name -> (base SECCOMP_RET_* value, takes errnoRet)
_ACTIONS: Final[dict[str, tuple[int, bool]]] = {
    "SCMP_ACT_KILL": (_RET_KILL_THREAD, False),
    "SCMP_ACT_KILL_PROCESS": (_RET_KILL_PROCESS, False),
    "SCMP_ACT_KILL_THREAD": (_RET_KILL_THREAD, False),
    "SCMP_ACT_TRAP": (_RET_TRAP, False),
    "SCMP_ACT_ERRNO": (_RET_ERRNO, True),
    "SCMP_ACT_TRACE": (_RET_TRACE, True),
    "SCMP_ACT_ALLOW": (_RET_ALLOW, False),
    "SCMP_ACT_LOG": (_RET_LOG, False),
    "SCMP_ACT_NOTIFY": (_RET_USER_NOTIF, False),
}

# OCI name -> libseccomp enum scmp_compare value
_OPERATORS: Final[dict[str, int]] = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}

# OCI flag name -> seccomp(2) flag passed at load time (0: accepted, not passed)
_FLAGS: Final[dict[str, int]] = {
    "SECCOMP_FILTER_FLAG_TSYNC": 0,
    "SECCOMP_FILTER_FLAG_LOG": FILTER_FLAG_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": FILTER_FLAG_SPEC_ALLOW,
    "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV": FILTER_FLAG_WAIT_KILLABLE_RECV,
}

SUPPORTED_ACTIONS: Final[tuple[str, ...]] = tuple(_ACTIONS)
SUPPORTED_OPERATORS: Final[tuple[str, ...]] = tuple(_OPERATORS)
SUPPORTED_ARCHES: Final[tuple[str, ...]] = tuple(_ARCHES)
SUPPORTED_FLAGS: Final[tuple[str, ...]] = tuple(_FLAGS)

_MAX_ARGS: Final = 6
_U64_MAX: Final = (1 << 64) - 1
# Bump when the generated program changes for the same input (cache key).
_CACHE_FORMAT: Final = "pysandbox-seccomp-1"
_BPF_MAXINSNS: Final = 4096


class SeccompError(Exception):
    """An invalid or uncompilable ``linux.seccomp``; the message names the field."""


@record
class CompiledFilter:
    """A filter ready for :func:`load_filter`.

    ``flags`` are the seccomp(2) ``SECCOMP_FILTER_FLAG_*`` bits to pass at load
    (NEW_LISTENER when any rule or the default action is SCMP_ACT_NOTIFY).
    """

    bpf: bytes
    flags: int
    needs_listener: bool
    listener_path: str | None
    listener_metadata: str | None


@record
class _Cond:
    arg: int
    op: int
    value: int
    value_two: int


@record
class _Rule:
    field: str  # "linux.seccomp.syscalls[i]"
    names: tuple[str, ...]
    action: int
    conds: tuple[_Cond, ...]


@record
class _Plan:
    default_action: int
    arches: tuple[int, ...]
    rules: tuple[_Rule, ...]
    flags: int
    needs_listener: bool
    listener_path: str | None
    listener_metadata: str | None


# --- validation (pure Python, no libseccomp) ------------------------------------


def _int_field(value: Any, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SeccompError(f"{field}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise SeccompError(f"{field}: {value} out of range [{lo}, {hi}]")
    return value


def _str_field(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise SeccompError(f"{field}: expected a string, got {value!r}")
    return value


def _list_field(value: Any, field: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise SeccompError(f"{field}: expected a list, got {type(value).__name__}")
    return value


def _action(name: Any, errno_ret: Any, field: str, errno_field: str) -> int:
    name = _str_field(name, field)
    try:
        base, takes_errno = _ACTIONS[name]
    except KeyError:
        raise SeccompError(f'{field}: unknown action "{name}"') from None
    if not takes_errno:
        # runc ignores errnoRet for actions that carry no data; so do we.
        return base
    err = _EPERM if errno_ret is None else _int_field(errno_ret, errno_field, 0, _RET_DATA)
    return base | err


def _parse(seccomp: Mapping[str, Any]) -> _Plan:
    if not isinstance(seccomp, Mapping):
        raise SeccompError(f"{_FIELD}: expected an object, got {type(seccomp).__name__}")
    if "defaultAction" not in seccomp:
        raise SeccompError(f"{_FIELD}.defaultAction: required")
    default = _action(
        seccomp["defaultAction"],
        seccomp.get("defaultErrnoRet"),
        f"{_FIELD}.defaultAction",
        f"{_FIELD}.defaultErrnoRet",
    )
    needs_listener = default == _RET_USER_NOTIF

    arches: list[int] = []
    for i, arch in enumerate(_list_field(seccomp.get("architectures"), f"{_FIELD}.architectures")):
        field = f"{_FIELD}.architectures[{i}]"
        token = _ARCHES.get(_str_field(arch, field))
        if token is None:
            raise SeccompError(f'{field}: unknown architecture "{arch}"')
        if token not in arches:
            arches.append(token)

    flags = 0
    for i, flag in enumerate(_list_field(seccomp.get("flags"), f"{_FIELD}.flags")):
        field = f"{_FIELD}.flags[{i}]"
        bit = _FLAGS.get(_str_field(flag, field))
        if bit is None:
            raise SeccompError(f'{field}: unsupported flag "{flag}"')
        flags |= bit

    rules: list[_Rule] = []
    for i, call in enumerate(_list_field(seccomp.get("syscalls"), f"{_FIELD}.syscalls")):
        field = f"{_FIELD}.syscalls[{i}]"
        if not isinstance(call, Mapping):
            raise SeccompError(f"{field}: expected an object")
        names = tuple(
            _str_field(n, f"{field}.names[{j}]")
            for j, n in enumerate(_list_field(call.get("names"), f"{field}.names"))
        )
        if "action" not in call:
            raise SeccompError(f"{field}.action: required")
        action = _action(
            call["action"], call.get("errnoRet"), f"{field}.action", f"{field}.errnoRet"
        )
        conds: list[_Cond] = []
        for j, arg in enumerate(_list_field(call.get("args"), f"{field}.args")):
            afield = f"{field}.args[{j}]"
            if not isinstance(arg, Mapping):
                raise SeccompError(f"{afield}: expected an object")
            index = _int_field(arg.get("index"), f"{afield}.index", 0, _MAX_ARGS - 1)
            op_name = _str_field(arg.get("op"), f"{afield}.op")
            op = _OPERATORS.get(op_name)
            if op is None:
                raise SeccompError(f'{afield}.op: unknown operator "{op_name}"')
            value = _int_field(arg.get("value", 0), f"{afield}.value", 0, _U64_MAX)
            value_two = _int_field(arg.get("valueTwo", 0), f"{afield}.valueTwo", 0, _U64_MAX)
            conds.append(_Cond(index, op, value, value_two))
        if action == _RET_USER_NOTIF and names:
            needs_listener = True
        rules.append(_Rule(field, names, action, tuple(conds)))

    if needs_listener:
        flags |= FILTER_FLAG_NEW_LISTENER
    else:
        # The kernel rejects WAIT_KILLABLE_RECV without a listener; it is moot then.
        flags &= ~FILTER_FLAG_WAIT_KILLABLE_RECV

    path = seccomp.get("listenerPath")
    meta = seccomp.get("listenerMetadata")
    path = _str_field(path, f"{_FIELD}.listenerPath") if path is not None else None
    meta = _str_field(meta, f"{_FIELD}.listenerMetadata") if meta is not None else None
    return _Plan(
        default_action=default,
        arches=tuple(arches),
        rules=tuple(rules),
        flags=flags,
        needs_listener=needs_listener,
        listener_path=path or None,
        listener_metadata=meta or None,
    )


# --- compilation (libseccomp) ----------------------------------------------------


def _condition_groups(conds: tuple[_Cond, ...]) -> list[tuple[_Cond, ...]]:
    """One rule with all conditions (AND), or one rule per condition (OR) as runc does
    when any argument index repeats."""
    indexes = [c.arg for c in conds]
    if len(set(indexes)) == len(indexes):
        return [conds]
    return [(c,) for c in conds]


def _bpf_insn(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


_LD_W_ABS: Final = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K: Final = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGT_K: Final = 0x25
_JGE_K: Final = 0x35
_RET_K: Final = 0x06
_OFF_NR: Final = 0
_OFF_ARCH: Final = 4


def _enosys_stub(max_nr: dict[int, int]) -> bytes:
    """Prefix returning ENOSYS for syscalls above the profile's highest, per arch.

    The prefix falls through to libseccomp's program (which reloads the arch
    itself); classic BPF jumps are relative, so prepending keeps it intact.
    """
    blocks: list[list[tuple[int, int, int, int, str]]] = []
    for arch, top in max_nr.items():
        # Each block starts with A == arch; "END" means: go to libseccomp's program.
        block = [(_JEQ_K, 0, -1, arch, "next"), (_LD_W_ABS, 0, 0, _OFF_NR, "")]
        if arch == _ARCH_X86_64:
            block.append((_JGE_K, -1, 0, _X32_SYSCALL_BIT, "end"))  # x32: libseccomp's call
        block.append((_JGT_K, 0, -1, top, "end"))
        block.append((_RET_K, 0, 0, _RET_ERRNO | _ENOSYS, ""))
        blocks.append(block)
    total = 1 + sum(len(b) for b in blocks)
    out = [_bpf_insn(_LD_W_ABS, 0, 0, _OFF_ARCH)]
    pos = 1
    for block in blocks:
        start = pos
        for code, jt, jf, k, target in block:
            dest = total if target == "end" else start + len(block)
            dist = dest - pos - 1
            out.append(_bpf_insn(code, dist if jt < 0 else jt, dist if jf < 0 else jf, k))
            pos += 1
    return b"".join(out)


def _compile(plan: _Plan) -> bytes:
    import tempfile

    import pyseccomp  # lazily: ~25 ms, and the container init never needs it

    try:
        filt = pyseccomp.SyscallFilter(plan.default_action)
    except OSError as e:
        raise SeccompError(f"{_FIELD}.defaultAction: rejected by libseccomp: {e}") from None
    filt.set_attr(pyseccomp.Attr.CTL_NNP, 0)
    try:
        # Binary-tree syscall lookup: a 300-name profile costs O(log n) per syscall.
        filt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    except OSError:
        pass
    native = int(pyseccomp.system_arch())
    for i, arch in enumerate(plan.arches):
        if arch == native:
            continue
        try:
            filt.add_arch(arch)
        except OSError as e:
            raise SeccompError(
                f"{_FIELD}.architectures[{i}]: cannot be added to a filter for this host: {e}"
            ) from None
    all_arches = [native, *(a for a in plan.arches if a != native)]

    known: set[str] = set()
    for rule in plan.rules:
        groups = _condition_groups(rule.conds)
        for name in rule.names:
            nr = int(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))
            if nr == -1:  # __NR_SCMP_ERROR: unknown to libseccomp, skipped like runc does
                continue
            known.add(name)
            if rule.action == plan.default_action:
                continue
            for group in groups:
                args = [pyseccomp.Arg(c.arg, c.op, c.value, c.value_two) for c in group]
                try:
                    filt.add_rule(rule.action, nr, *args)
                except OSError as e:
                    raise SeccompError(
                        f'{rule.field}: libseccomp rejected the rule for "{name}": {e}'
                    ) from None

    with tempfile.TemporaryFile() as buf:
        filt.export_bpf(buf)
        buf.seek(0, io.SEEK_SET)
        prog = buf.read()

    base = plan.default_action & ~_RET_DATA
    if base not in (_RET_ALLOW, _RET_LOG, _RET_TRACE, _RET_USER_NOTIF) and known:
        max_nr: dict[int, int] = {}
        for arch in (_ARCH_X86_64, _ARCH_X86):
            if arch not in all_arches:
                continue
            nrs = [int(pyseccomp.resolve_syscall(arch, n)) for n in known]
            nrs = [n for n in nrs if 0 <= n < _X32_SYSCALL_BIT]
            if nrs:
                max_nr[arch] = max(nrs)
        if max_nr:
            prog = _enosys_stub(max_nr) + prog

    if not prog or len(prog) % 8 or len(prog) // 8 > _BPF_MAXINSNS:
        raise SeccompError(f"{_FIELD}: compiled program has {len(prog) // 8} instructions")
    return prog


def _compiled(plan: _Plan, prog: bytes) -> CompiledFilter:
    return CompiledFilter(
        bpf=prog,
        flags=plan.flags,
        needs_listener=plan.needs_listener,
        listener_path=plan.listener_path,
        listener_metadata=plan.listener_metadata,
    )


def compile_bpf(seccomp: Mapping[str, Any]) -> CompiledFilter:
    """Validate ``linux.seccomp`` and compile it to classic BPF with libseccomp.

    Raises :class:`SeccompError` naming the offending field.
    """
    plan = _parse(seccomp)
    return _compiled(plan, _compile(plan))


def _cache_key(seccomp: Mapping[str, Any]) -> str:
    canon = jsonio.dumps_sorted(seccomp)
    return jsonio.sha256_hex(f"{_CACHE_FORMAT}\n{canon}".encode())


def compile_cached(seccomp: Mapping[str, Any], cache_dir: str | None) -> CompiledFilter:
    """Like :func:`compile_bpf`, with the BPF kept in ``cache_dir/<sha256>.bpf``.

    The key is the sha256 of the canonical JSON (sorted keys) plus a format
    version; the file is written atomically (temp file + rename), so
    concurrent ``create``s are safe. ``cache_dir`` must be writable only by
    the runtime's user (it sits under the state root): whoever can write it
    chooses the filter. Validation always runs; only libseccomp is skipped on
    a hit. ``None`` disables the cache.
    """
    plan = _parse(seccomp)
    if cache_dir is None:
        return _compiled(plan, _compile(plan))
    path = os.path.join(cache_dir, _cache_key(seccomp) + ".bpf")
    cached = read_cached_bpf(path)
    if cached is not None:
        return _compiled(plan, cached)
    prog = _compile(plan)
    write_cached_bpf(path, prog)
    return _compiled(plan, prog)


def read_trusted(path: str) -> bytes | None:
    """A cache file's contents, or None when absent or not trustworthy:
    someone else's file, or one others could have written (a planted filter
    or routing table would be loaded into every container)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return None
            return f.read()
    except OSError:
        return None


def read_cached_bpf(path: str) -> bytes | None:
    """A cached BPF program, or None when absent or not a plausible program."""
    prog = read_trusted(path)
    if prog and len(prog) % 8 == 0 and len(prog) // 8 <= _BPF_MAXINSNS:
        return prog
    return None


def write_cached_bpf(path: str, prog: bytes) -> None:
    """Store a compiled program atomically (temp file + rename), so concurrent
    creates are safe; a read-only or full cache only costs time."""
    import tempfile

    cache_dir = os.path.dirname(path)
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".bpf", dir=cache_dir)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(prog)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError:
        pass


def load_filter(compiled: CompiledFilter) -> int | None:
    """Install the filter on the calling thread; return the listener fd if any.

    Does not set no_new_privs: the caller decides (with ``noNewPrivileges``
    false the filter is loaded while the process still holds CAP_SYS_ADMIN,
    as runc does). Every syscall the caller makes after this is subject to the
    filter, so load as late as possible, just before execve, and make sure the
    calls in between (sending the listener fd, closing fds, execve) are
    allowed and not routed to a listener nobody serves yet.
    """
    ret = kernel.seccomp_load_bpf(compiled.bpf, compiled.flags)
    return ret if compiled.needs_listener else None
