"""Would Linux refuse this execve, and with which errno? A pure decision.

The sentry serves execve/execveat: the gofer resolves and opens the file as
the caller, the sentry learns its ``fstat`` and first bytes (``ExecFacts``),
and :func:`check_exec` answers what Linux 6.18 (x86_64) would answer before
the point of no return of the exec, plus what the sandbox deliberately does
not run. Nothing here does I/O: bytes beyond the ones handed in come through
the caller's ``read_more(offset, size)``, and only when they are needed.

What the kernel decides, in its order (fs/exec.c, fs/namei.c, fs/binfmt_*.c),
each checked against the running kernel by tests/unit/test_execcheck.py:

1. Opening (``do_open_execat`` -> ``may_open`` -> ``generic_permission``):
   a symlink opened without following it (execveat AT_SYMLINK_NOFOLLOW, or an
   O_PATH fd of a symlink with AT_EMPTY_PATH) is ELOOP; anything but a regular
   file is EACCES (directories, fifos, devices, sockets, whatever their mode);
   a noexec mount is EACCES; then execute permission for the owner, group or
   other class (the first class that matches decides, even when a later class
   would grant it); CAP_DAC_OVERRIDE grants execute only if at least one of
   the three x bits is set; CAP_DAC_READ_SEARCH never grants execute of a
   file. Read permission is not needed (an unreadable binary runs, it is only
   made undumpable), so the gofer must read ``head`` with its own rights.
2. The first BINPRM_BUF_SIZE (256) bytes, zero-padded past the end of the
   file, pick the binary format: ``\\x7fELF`` (binfmt_elf), ``#!``
   (binfmt_script), anything else ENOEXEC. An empty file is ENOEXEC.
3. ``#!`` (binfmt_script): the line ends at the first newline within the 256
   bytes, but the search stops at a NUL (the kernel's strnchr); without such
   a newline the interpreter path must be followed by a blank or NUL within
   the buffer, else it may be truncated and the exec is ENOEXEC (since Linux
   5.0; the argument may be cut short, and byte 255 is then dropped). Blanks
   are space and tab only (a CR is part of the path). Nothing but blanks
   after ``#!`` is ENOEXEC. The one optional argument is everything after the
   blanks that follow the path, with trailing blanks removed, inner blanks
   kept, cut at a NUL (it can be empty: ``#!/bin/sh \\0``). An interpreter
   path that is empty because a NUL follows the blanks (a file that is just
   ``#!``) makes Linux open the empty path, which it resolves to the caller's
   working directory, a directory: EACCES.
   A script named through a close-on-exec descriptor (execveat with
   AT_EMPTY_PATH, or a relative path under a close-on-exec dirfd) would be
   unreachable for its interpreter: ENOENT (``path_inaccessible``).
4. ELF (binfmt_elf): e_type ET_EXEC or ET_DYN, e_machine EM_X86_64, else
   ENOEXEC; e_phentsize 56, 1 to 1170 program headers (65536 bytes, measured
   on 6.18; kernels that still cap the table at one page refuse more than 73)
   that can be read in full, else ENOEXEC. The *first* PT_INTERP counts, later
   ones are ignored: p_filesz 2..PATH_MAX else ENOEXEC; an offset that is negative as a loff_t
   (p_offset or p_offset + p_filesz >= 2**63) is EINVAL (rw_verify_area); a
   short read, e.g. beyond the end of the file, is EIO; no NUL in the last
   byte is ENOEXEC; the path is the bytes before the first NUL, and an empty
   one is EACCES as above.
   Everything Linux checks later (mapping the segments, a missing PT_LOAD,
   the interpreter's own e_type) is past the point of no return: the exec
   "succeeds" and the process dies with SIGSEGV, so such files are allowed.

What the caller decides (it has the paths, the mounts and the namespaces):

* Resolving the path (ENOENT, ENOTDIR, search permission EACCES, ELOOP,
  ENAMETOOLONG), for the file itself and for the interpreter the verdict
  names, which Linux opens like the file (the same rules of point 1) from the
  caller's root and working directory. :func:`check_exec_chain` does that
  walk given a resolver: an ELF's PT_INTERP must be an x86_64 ELF
  (:func:`check_elf_interpreter`: fewer than 64 bytes is EIO, not an ELF,
  another machine or unreadable program headers is ELIBBAD); a script's
  interpreter may be another script, up to MAX_SCRIPT_DEPTH scripts in a row
  (one more is ELOOP, reported after the interpreter was opened).
* ETXTBSY: a file open for writing cannot be executed; only the kernel knows
  the writers, so it still decides that when the call is handed back.
* What the facts do not carry: POSIX ACLs (which can grant or refuse execute
  beyond the mode), idmapped mounts and user namespaces (capabilities count
  only if the file's owner and group are mapped in the caller's user
  namespace; pass the caps that are effective for this file), fsuid/fsgid
  that differ from euid/egid, LSMs (SELinux, Landlock), a filesystem without
  mmap (ENOEXEC).
* A verdict describes the file the facts came from; if the sentry hands the
  call back to the kernel (SECCOMP_USER_NOTIF_FLAG_CONTINUE) the kernel
  resolves the path again, so the decision only holds while that path cannot
  change in between (DESIGN.md, rule 1).

Where the sandbox deliberately refuses what Linux runs (``Refused.deliberate``),
with ENOEXEC as gVisor does:

* i386 ELF (ELFCLASS32, EM_386): Linux with IA32 emulation runs it, but the
  sandbox's seccomp filter kills the i386 syscall ABI (``int 0x80``), so the
  program could not do anything; refusing the exec is the clean answer.
* x32 ELF (ELFCLASS32, EM_X86_64): run by Linux only with CONFIG_X86_X32_ABI;
  its syscall ABI is killed by the filter too.
* An ELF whose e_ident is not ELFCLASS64 + ELFDATA2LSB: Linux's x86_64 loader
  never looks at those bytes and runs an x86_64 header whatever they say; the
  sandbox runs only well-formed ELF64 little-endian files. The same holds for
  the PT_INTERP interpreter, refused there with ELIBBAD.
* Formats registered with binfmt_misc (qemu-user for foreign architectures,
  Java, Wine, ...): a host-side handler would run for the workload, so the
  sandbox knows only ELF and ``#!`` and answers ENOEXEC for the rest.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Callable
from errno import EACCES, EINVAL, EIO, ELIBBAD, ELOOP, ENOENT, ENOEXEC

from pysandbox.oci.records import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final, Literal, TypeAlias

BINPRM_BUF_SIZE: Final = 256  # include/uapi/linux/binfmts.h: what picks the format
HEAD_SIZE: Final = 4096  # what the gofer should hand in: ELF header + usual phdrs
PATH_MAX: Final = 4096
MAX_PHDR_TABLE: Final = 65536  # load_elf_phdrs: bytes of program headers
MAX_SCRIPT_DEPTH: Final = 5  # exec_binprm: #! scripts in a row before ELOOP
CAP_DAC_OVERRIDE: Final = 1

ELF_MAGIC: Final = b"\x7fELF"
ELFCLASS32: Final = 1
ELFCLASS64: Final = 2
ELFDATA2LSB: Final = 1
EM_386: Final = 3
EM_486: Final = 6
EM_X86_64: Final = 62
EHDR64_SIZE: Final = 64
PHDR64_SIZE: Final = 56
_LOFF_MAX: Final = (1 << 63) - 1  # loff_t: offsets at or beyond 2**63 are negative
_BLANKS: Final = b" \t"
# Elf64_Ehdr and Elf64_Phdr (elf.h), read with struct: pyelftools reads them
# the same (tests/unit/test_execcheck.py checks both agree) but costs ~40 ms to
# import, which the sentry would pay at every container's start.
_EHDR64: Final = struct.Struct("<16sHHIQQQIHHHHHH")
_PHDR64: Final = struct.Struct("<IIQQQQQQ")
_ET_EXEC: Final = 2
_ET_DYN: Final = 3
_PT_INTERP: Final = 3
_ET_NAMES: Final = {0: "ET_NONE", 1: "ET_REL", 2: "ET_EXEC", 3: "ET_DYN", 4: "ET_CORE"}
_EM_NAMES: Final = {3: "EM_386", 6: "EM_486", 40: "EM_ARM", 62: "EM_X86_64", 183: "EM_AARCH64"}

ReadMore: TypeAlias = Callable[[int, int], bytes]


class ExecFacts(NamedTuple):
    """What the sentry learned about the file: fstat of the fd the gofer
    opened (of the symlink itself where execveat's AT_SYMLINK_NOFOLLOW names
    one), its first bytes and its mount's flags."""

    mode: int
    uid: int
    gid: int
    size: int
    head: bytes  # the first up to HEAD_SIZE bytes (fewer only at the end of the file)
    noexec_mount: bool  # the file's mount has MS_NOEXEC


class ExecCred(NamedTuple):
    """The caller's effective ids (they stand for fsuid/fsgid) and capabilities."""

    euid: int
    egid: int
    groups: tuple[int, ...]
    caps: int  # effective capabilities, bit N = capability N


class ElfExec(NamedTuple):
    """Allowed: an x86_64 ELF that Linux loads natively. ``interp`` is the
    PT_INTERP path (the dynamic loader, NUL stripped) the caller still has
    to resolve and check (:func:`check_elf_interpreter`); None for a static
    or static-pie binary and for an interpreter checked as one."""

    elf_type: str  # "ET_EXEC" or "ET_DYN" (anything for an interpreter)
    interp: bytes | None
    elf_class: int = 64
    machine: str = "EM_X86_64"

    @property
    def kind(self) -> Literal["elf"]:
        return "elf"

    @property
    def allowed(self) -> bool:
        return True

    @property
    def errno(self) -> int:
        return 0


class ScriptExec(NamedTuple):
    """Allowed: a ``#!`` script. Linux runs ``interp [arg] <script path>
    <argv[1:]>``; the caller still has to resolve and check ``interp``
    (relative to the caller's working directory unless absolute)."""

    interp: bytes
    arg: bytes | None

    @property
    def kind(self) -> Literal["script"]:
        return "script"

    @property
    def allowed(self) -> bool:
        return True

    @property
    def errno(self) -> int:
        return 0


class Refused(NamedTuple):
    """Refused with ``errno``. ``deliberate``: Linux may well run this file;
    the sandbox does not (see the module docstring)."""

    errno: int
    reason: str
    deliberate: bool = False

    @property
    def allowed(self) -> bool:
        return False


ExecVerdict: TypeAlias = ElfExec | ScriptExec | Refused
Resolve: TypeAlias = Callable[[bytes], "tuple[ExecFacts, ReadMore | None] | int"]


class _Unreadable(Exception):
    """Bytes beyond ``head`` are needed and there is no ``read_more``."""


def check_access(facts: ExecFacts, cred: ExecCred) -> int:
    """The errno of opening the file for exec (0 if allowed): the file type,
    the mount's noexec flag and execute permission, as ``do_open_execat``."""
    fmt = stat.S_IFMT(facts.mode)
    if fmt == stat.S_IFLNK:
        return ELOOP
    if fmt != stat.S_IFREG or facts.noexec_mount:
        return EACCES
    if facts.uid == cred.euid:
        granted = facts.mode & stat.S_IXUSR
    elif facts.gid == cred.egid or facts.gid in cred.groups:
        granted = facts.mode & stat.S_IXGRP
    else:
        granted = facts.mode & stat.S_IXOTH
    if granted:
        return 0
    if cred.caps >> CAP_DAC_OVERRIDE & 1 and facts.mode & 0o111:
        return 0
    return EACCES


def check_exec(
    facts: ExecFacts,
    cred: ExecCred,
    read_more: ReadMore | None = None,
    *,
    path_inaccessible: bool = False,
) -> ExecVerdict:
    """What Linux would answer to exec'ing the file ``facts`` describe, as far
    as these facts decide it (see the module docstring for the rest).

    ``read_more(offset, size)`` returns the file's bytes at ``offset`` (fewer
    at its end); it is called only for program headers or a PT_INTERP path
    beyond ``head``. Without it such a file is refused with EIO (fail closed).
    ``path_inaccessible``: the file is named through a close-on-exec fd
    (execveat), which makes a script ENOENT."""
    err = check_access(facts, cred)
    if err:
        return Refused(err, _ACCESS_REASONS[err])
    buf = _binprm_buf(facts, read_more)
    if buf.startswith(ELF_MAGIC):
        return _check_elf(buf, facts, read_more)
    if buf.startswith(b"#!"):
        return _check_script(buf, path_inaccessible)
    return Refused(ENOEXEC, "no ELF or #! magic: no binary format Linux knows")


def check_elf_interpreter(
    facts: ExecFacts, cred: ExecCred, read_more: ReadMore | None = None
) -> ExecVerdict:
    """What Linux would answer for the PT_INTERP interpreter of an ELF once
    the caller has resolved its path: opened like the file itself, then its
    ELF header must be readable (EIO), it must be an x86_64 ELF with valid
    program headers (ELIBBAD). Its own PT_INTERP and e_type do not matter
    here (a wrong e_type kills the process after the point of no return)."""
    err = check_access(facts, cred)
    if err:
        return Refused(err, "interpreter: " + _ACCESS_REASONS[err])
    try:
        ehdr = _pread(facts, read_more, 0, EHDR64_SIZE)
    except _Unreadable as e:
        return Refused(EIO, f"interpreter: {e}")
    except OSError as e:
        return Refused(e.errno or EIO, f"interpreter: reading its ELF header: {e}")
    if len(ehdr) < EHDR64_SIZE:
        return Refused(EIO, "interpreter: shorter than an ELF header")
    if not ehdr.startswith(ELF_MAGIC):
        return Refused(ELIBBAD, "interpreter: not an ELF file")
    if ehdr[4] != ELFCLASS64 or ehdr[5] != ELFDATA2LSB:
        foreign = _refuse_ident(ehdr)
        return Refused(ELIBBAD, "interpreter: " + foreign.reason, foreign.deliberate)
    elf = _elf_header(ehdr)
    if elf is None or elf.e_machine != EM_X86_64:
        machine = "?" if elf is None else elf.machine_name
        return Refused(ELIBBAD, f"interpreter: ELF for {machine}, not EM_X86_64")
    phdrs = _program_headers(elf, facts, read_more)
    if isinstance(phdrs, Refused):
        return Refused(ELIBBAD, "interpreter: " + phdrs.reason)
    return ElfExec(elf.type_name, None)


def check_exec_chain(
    facts: ExecFacts,
    cred: ExecCred,
    resolve: Resolve,
    read_more: ReadMore | None = None,
    *,
    path_inaccessible: bool = False,
) -> tuple[ExecVerdict, ...]:
    """Follow what Linux follows: a script's interpreter (which may be another
    script, MAX_SCRIPT_DEPTH scripts at most) and an ELF's PT_INTERP.
    ``resolve(path)`` opens ``path`` as the caller would (from its root and
    working directory, following symlinks) and returns its facts and a
    read_more, or the errno of the lookup. Returns every step's verdict; the
    last one decides (it is a Refused or an allowed verdict without
    anything left to resolve)."""
    steps: list[ExecVerdict] = []
    verdict = check_exec(facts, cred, read_more, path_inaccessible=path_inaccessible)
    scripts = 0
    while True:
        steps.append(verdict)
        if isinstance(verdict, Refused) or verdict.interp is None:
            return tuple(steps)
        found = resolve(verdict.interp)
        if isinstance(found, int):
            steps.append(Refused(found, f"resolving the interpreter {verdict.interp!r}"))
            return tuple(steps)
        interp_facts, interp_read = found
        if isinstance(verdict, ElfExec):
            steps.append(check_elf_interpreter(interp_facts, cred, interp_read))
            return tuple(steps)
        err = check_access(interp_facts, cred)
        if err:
            steps.append(Refused(err, "interpreter: " + _ACCESS_REASONS[err]))
            return tuple(steps)
        scripts += 1
        if scripts > MAX_SCRIPT_DEPTH:
            steps.append(Refused(ELOOP, f"more than {MAX_SCRIPT_DEPTH} #! scripts in a row"))
            return tuple(steps)
        verdict = check_exec(interp_facts, cred, interp_read, path_inaccessible=path_inaccessible)


# --- the pieces ----------------------------------------------------------------

_ACCESS_REASONS: Final = {
    ELOOP: "a symlink, not followed",
    EACCES: "not a regular file, on a noexec mount, or no execute permission",
}


def _pread(facts: ExecFacts, read_more: ReadMore | None, offset: int, size: int) -> bytes:
    """The file's bytes [offset, offset + size), fewer at its end (a short
    read), from ``head`` when they are there. Offsets are below 2**63."""
    end = min(offset + size, facts.size)
    if offset >= end:
        return b""
    if end <= len(facts.head):
        return facts.head[offset:end]
    if read_more is None:
        raise _Unreadable(f"needs bytes {offset}..{end} beyond the {len(facts.head)} read")
    return read_more(offset, end - offset)[: end - offset]


def _binprm_buf(facts: ExecFacts, read_more: ReadMore | None) -> bytes:
    """bprm->buf: the first 256 bytes, zero-padded past the end of the file."""
    try:
        first = _pread(facts, read_more, 0, BINPRM_BUF_SIZE)
    except (_Unreadable, OSError):
        first = facts.head[:BINPRM_BUF_SIZE]
    return first.ljust(BINPRM_BUF_SIZE, b"\0")


def _check_script(buf: bytes, path_inaccessible: bool) -> ExecVerdict:
    parsed = _parse_shebang(buf)
    if isinstance(parsed, str):
        return Refused(ENOEXEC, parsed)
    interp, arg = parsed
    if path_inaccessible:
        return Refused(ENOENT, "a script named through a close-on-exec fd")
    if not interp:
        return Refused(EACCES, "empty interpreter path: Linux opens the working directory")
    return ScriptExec(interp, arg)


def _non_blank(buf: bytes, first: int, last: int) -> int:
    """Index of the first byte in buf[first..last] that is not a blank, or -1."""
    for i in range(first, last + 1):
        if buf[i] not in _BLANKS:
            return i
    return -1


def _terminator(buf: bytes, first: int, last: int) -> int:
    """Index of the first blank or NUL in buf[first..last], or -1."""
    for i in range(first, last + 1):
        if buf[i] in _BLANKS or buf[i] == 0:
            return i
    return -1


def _parse_shebang(buf: bytes) -> tuple[bytes, bytes | None] | str:
    """binfmt_script's reading of the ``#!`` line in the 256-byte buffer:
    (interpreter, argument or None), or why it is ENOEXEC."""
    last = len(buf) - 1
    nul = buf.find(b"\0")
    newline = buf.find(b"\n", 0, nul if nul >= 0 else len(buf))
    if newline >= 0:
        end = newline
    else:
        start = _non_blank(buf, 2, last)
        if start < 0:
            return "#! followed by nothing but blanks"
        if _terminator(buf, start, last) < 0:
            return f"#! line longer than {BINPRM_BUF_SIZE} bytes cuts the interpreter path"
        end = last  # the argument may be cut; the kernel drops the last byte
    while buf[end - 1] in _BLANKS:
        end -= 1
    name = _non_blank(buf, 2, end)
    if name < 0 or name == end:
        return "no interpreter after #!"
    sep = _terminator(buf, name, end)
    arg = None
    if sep >= 0 and buf[sep] != 0:
        start = _non_blank(buf, sep, end)
        if start >= 0:
            arg = buf[start:end].split(b"\0", 1)[0]
    return buf[name : sep if sep >= 0 else end], arg


class _Ehdr(NamedTuple):
    """The fields of an ELF64 LSB header the checks read."""

    e_type: int
    e_machine: int
    e_phoff: int
    e_phentsize: int
    e_phnum: int

    @property
    def type_name(self) -> str:
        return _ET_NAMES.get(self.e_type, f"ET_{self.e_type:#x}")

    @property
    def machine_name(self) -> str:
        return _EM_NAMES.get(self.e_machine, f"machine {self.e_machine}")


def _elf_header(ehdr: bytes) -> _Ehdr | None:
    """The ELF64 LSB header at the start of ``ehdr`` (None if it is short)."""
    if len(ehdr) < EHDR64_SIZE:
        return None
    f = _EHDR64.unpack_from(ehdr)
    return _Ehdr(e_type=f[1], e_machine=f[2], e_phoff=f[5], e_phentsize=f[9], e_phnum=f[10])


def _refuse_ident(buf: bytes) -> Refused:
    """An ELF that is not ELFCLASS64 + ELFDATA2LSB: say what it is."""
    ei_class, ei_data = buf[4], buf[5]
    machine = int.from_bytes(buf[18:20], "little")
    if ei_class == ELFCLASS32 and ei_data == ELFDATA2LSB:
        if machine in (EM_386, EM_486):
            return Refused(
                ENOEXEC,
                "i386 ELF: Linux runs it with IA32 emulation; the sandbox kills the i386 ABI",
                deliberate=True,
            )
        if machine == EM_X86_64:
            return Refused(
                ENOEXEC,
                "x32 ELF: Linux runs it with CONFIG_X86_X32_ABI; the sandbox kills the x32 ABI",
                deliberate=True,
            )
        return Refused(ENOEXEC, f"32-bit ELF for machine {machine}")
    e_type = int.from_bytes(buf[16:18], "little")
    x86_64 = machine == EM_X86_64 and e_type in (2, 3)  # ET_EXEC, ET_DYN
    return Refused(
        ENOEXEC,
        f"ELF with EI_CLASS {ei_class} and EI_DATA {ei_data}: the sandbox runs ELF64 LSB only"
        + (" (Linux ignores these bytes and would load it as x86_64)" if x86_64 else ""),
        deliberate=x86_64,
    )


def _check_elf(buf: bytes, facts: ExecFacts, read_more: ReadMore | None) -> ExecVerdict:
    if buf[4] != ELFCLASS64 or buf[5] != ELFDATA2LSB:
        return _refuse_ident(buf)
    elf = _elf_header(buf)
    if elf is None:
        return Refused(ENOEXEC, "unreadable ELF header")
    if elf.e_type not in (_ET_EXEC, _ET_DYN):
        return Refused(ENOEXEC, f"ELF of type {elf.type_name}: not an executable")
    if elf.e_machine != EM_X86_64:
        return Refused(ENOEXEC, f"ELF for {elf.machine_name}: no binary format for it on x86_64")
    phdrs = _program_headers(elf, facts, read_more)
    if isinstance(phdrs, Refused):
        return phdrs
    for p_type, p_offset, p_filesz in phdrs:
        if p_type == _PT_INTERP:  # only the first one counts
            interp = _read_interp(p_offset, p_filesz, facts, read_more)
            if isinstance(interp, Refused):
                return interp
            return ElfExec(elf.type_name, interp)
    return ElfExec(elf.type_name, None)


def _program_headers(
    elf: _Ehdr, facts: ExecFacts, read_more: ReadMore | None
) -> list[tuple[int, int, int]] | Refused:
    """load_elf_phdrs: (p_type, p_offset, p_filesz) of each program header, or
    ENOEXEC (EIO when the bytes are beyond ``head`` and there is no read_more)."""
    entsize, count, offset = elf.e_phentsize, elf.e_phnum, elf.e_phoff
    if entsize != PHDR64_SIZE:
        return Refused(ENOEXEC, f"e_phentsize {entsize}, not {PHDR64_SIZE}")
    size = entsize * count
    if size == 0 or size > MAX_PHDR_TABLE:
        return Refused(ENOEXEC, f"{count} program headers")
    if offset + size > _LOFF_MAX:
        return Refused(ENOEXEC, f"program headers at offset {offset}")
    try:
        table = _pread(facts, read_more, offset, size)
    except _Unreadable as e:
        return Refused(EIO, f"program headers: {e}")
    except OSError:
        return Refused(ENOEXEC, "program headers: read error")
    if len(table) < size:
        return Refused(ENOEXEC, "program headers beyond the end of the file")
    return [(t, o, n) for t, _flags, o, _va, _pa, n, _mem, _al in _PHDR64.iter_unpack(table)]


def _read_interp(
    offset: int, size: int, facts: ExecFacts, read_more: ReadMore | None
) -> bytes | Refused:
    """The PT_INTERP path as load_elf_binary reads it."""
    if size < 2 or size > PATH_MAX:
        return Refused(ENOEXEC, f"PT_INTERP of {size} bytes")
    if offset + size > _LOFF_MAX:
        return Refused(EINVAL, f"PT_INTERP at offset {offset}: negative as a file position")
    try:
        path = _pread(facts, read_more, offset, size)
    except _Unreadable as e:
        return Refused(EIO, f"PT_INTERP: {e}")
    except OSError as e:
        return Refused(e.errno or EIO, f"PT_INTERP: {e}")
    if len(path) < size:
        return Refused(EIO, "PT_INTERP beyond the end of the file")
    if path[-1] != 0:
        return Refused(ENOEXEC, "PT_INTERP not NUL-terminated")
    interp = path.split(b"\0", 1)[0]
    if not interp:
        return Refused(EACCES, "empty PT_INTERP path: Linux opens the working directory")
    return interp
