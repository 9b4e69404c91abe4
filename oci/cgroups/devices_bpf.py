"""The cgroup v2 devices controller: OCI device rules compiled to an eBPF program.

cgroup v2 has no ``devices.allow``/``devices.deny`` files; the kernel instead
runs every ``BPF_PROG_TYPE_CGROUP_DEVICE`` program attached (type
``BPF_CGROUP_DEVICE``) to the cgroup of the process -- and those of its
ancestors -- whenever it opens or mknods a device node. The program sees a
``struct bpf_cgroup_dev_ctx`` ::

    u32 access_type;  /* low 16 bits: BPF_DEVCG_DEV_{BLOCK=1,CHAR=2};
                         high 16 bits: BPF_DEVCG_ACC_{MKNOD=1,READ=2,WRITE=4} */
    u32 major;
    u32 minor;

and returns 1 to allow the access or 0 to refuse it (EPERM).

Semantics of a rule list (``linux.resources.devices``), the same on v1 and v2
as far as a container can tell:

* rules apply in order and a later rule wins over an earlier one, **per
  access bit**: a request (say ``rw`` for ``O_RDWR``) is allowed when every
  requested bit is allowed by the last rule that matches the device and names
  that bit; bits no rule names fall back to the default, which is *allow* (a
  new cgroup's default) -- so a list starting with a deny-all rule, as every
  runtime's does, is a default-deny allow list;
* type ``a`` (or a missing type) is every device with every access, whatever
  numbers or access the rule carries (what the kernel's v1 ``devices.allow``
  does with ``a``, and so the v1 driver here);
* a missing major/minor, or ``-1``, is a wildcard; access is a subset of
  ``rwm`` (empty or missing: ``rwm``).

The per-bit reading is deliberate: it is what the rule list says in every
case the v1 kernel handles (where it differs -- ``allow c 1:* r`` then
``allow c 1:3 w`` refuses an ``O_RDWR`` open that two separate opens would
get anyway; a later ``deny c 1:3 w`` after ``allow c *:* rwm`` is ignored by
v1's exact-match removal -- this one is the one that does what was written).

The program is generated here by a small assembler (no clang, no libbpf): one
pass over the rules from last to first, keeping the still-undecided requested
access bits in a register.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Mapping

from .. import kernel
from . import CgroupError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final

__all__ = [
    "DeviceRule",
    "attached_programs",
    "compile_rules",
    "disassemble",
    "install",
    "load",
    "parse_rules",
]

# --- eBPF instruction encoding (include/uapi/linux/bpf_common.h, bpf.h) ----------

# instruction classes
BPF_LDX: Final = 0x01
BPF_ALU: Final = 0x04  # 32-bit ALU
BPF_JMP: Final = 0x05
BPF_JMP32: Final = 0x06
BPF_ALU64: Final = 0x07
# load/store size and mode
BPF_W: Final = 0x00
BPF_MEM: Final = 0x60
# operand source
BPF_K: Final = 0x00
BPF_X: Final = 0x08
# ALU operations
BPF_AND: Final = 0x50
BPF_RSH: Final = 0x70
BPF_MOV: Final = 0xB0
# jump operations
BPF_JEQ: Final = 0x10
BPF_JNE: Final = 0x50
BPF_EXIT: Final = 0x90

# struct bpf_cgroup_dev_ctx
DEVCG_DEV_BLOCK: Final = 1
DEVCG_DEV_CHAR: Final = 2
DEVCG_ACC_MKNOD: Final = 1
DEVCG_ACC_READ: Final = 2
DEVCG_ACC_WRITE: Final = 4
ACC_ALL: Final = DEVCG_ACC_MKNOD | DEVCG_ACC_READ | DEVCG_ACC_WRITE
_CTX_ACCESS_TYPE: Final = 0
_CTX_MAJOR: Final = 4
_CTX_MINOR: Final = 8

_ACCESS_BITS: Final = {"m": DEVCG_ACC_MKNOD, "r": DEVCG_ACC_READ, "w": DEVCG_ACC_WRITE}
_TYPES: Final = {"b": DEVCG_DEV_BLOCK, "c": DEVCG_DEV_CHAR}

# registers: r1 = context on entry (scratch afterwards), r0 = verdict
R0, R1, R2, R3, R4, R5 = range(6)
_TYPE, _WANT, _MAJOR, _MINOR = R2, R3, R4, R5  # what the prologue leaves where

PROG_NAME: Final = "pysandbox_dev"
LICENSE: Final = "Apache-2.0"  # a device program calls no GPL-only helper


class Insn:
    """One eBPF instruction. (A plain class: importing dataclasses would cost
    more start-up time than compiling and loading the whole program.)"""

    __slots__ = ("code", "dst", "imm", "off", "src")

    def __init__(self, code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> None:
        self.code, self.dst, self.src, self.off, self.imm = code, dst, src, off, imm

    def encode(self) -> bytes:
        """struct bpf_insn, little-endian: u8 code; u4 dst, u4 src; s16 off; s32 imm."""
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, self.imm)


def ldx_w(dst: int, src: int, off: int) -> Insn:
    """dst = *(u32 *)(src + off)"""
    return Insn(BPF_LDX | BPF_W | BPF_MEM, dst, src, off)


def alu32_imm(op: int, dst: int, imm: int) -> Insn:
    return Insn(BPF_ALU | op | BPF_K, dst, 0, 0, imm)


def alu32_reg(op: int, dst: int, src: int) -> Insn:
    return Insn(BPF_ALU | op | BPF_X, dst, src)


def mov64_imm(dst: int, imm: int) -> Insn:
    return Insn(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)


def jmp32_imm(op: int, dst: int, imm: int, off: int) -> Insn:
    """if (u32)dst <op> imm: skip off instructions"""
    return Insn(BPF_JMP32 | op | BPF_K, dst, 0, off, imm)


def exit_insn() -> Insn:
    return Insn(BPF_JMP | BPF_EXIT)


def assemble(insns: Iterable[Insn]) -> bytes:
    return b"".join(i.encode() for i in insns)


_OP_NAMES: Final = {BPF_AND: "&=", BPF_RSH: ">>=", BPF_MOV: "="}
_JMP_NAMES: Final = {BPF_JEQ: "==", BPF_JNE: "!="}


def disassemble(prog: bytes) -> list[str]:
    """A readable listing of a program made here (for logs and test failures)."""
    out: list[str] = []
    for n in range(len(prog) // 8):
        code, regs, off, imm = struct.unpack_from("<BBhi", prog, 8 * n)
        dst, src = regs & 0xF, regs >> 4
        cls, op = code & 0x07, code & 0xF0
        if cls == BPF_LDX:
            text = f"w{dst} = *(u32 *)(r{src} {off:+d})"
        elif cls in (BPF_ALU, BPF_ALU64):
            reg = "w" if cls == BPF_ALU else "r"
            rhs = f"{reg}{src}" if code & BPF_X else hex(imm)
            text = f"{reg}{dst} {_OP_NAMES.get(op, hex(op))} {rhs}"
        elif code == BPF_JMP | BPF_EXIT:
            text = "exit"
        else:
            text = f"if w{dst} {_JMP_NAMES.get(op, hex(op))} {hex(imm)} goto {n + 1 + off}"
        out.append(f"{n:4d}: {text}")
    return out


# --- rules ----------------------------------------------------------------------------


class DeviceRule:
    """One ``linux.resources.devices`` entry, validated.

    ``dev_type`` is ``"a"``, ``"b"`` or ``"c"``; ``None`` numbers are wildcards;
    ``access`` is a mask of ``DEVCG_ACC_*`` bits.
    """

    __slots__ = ("access", "allow", "dev_type", "major", "minor")

    def __init__(
        self,
        allow: bool,
        dev_type: str = "a",
        major: int | None = None,
        minor: int | None = None,
        access: int = ACC_ALL,
    ) -> None:
        self.allow = allow
        self.dev_type = dev_type
        self.major = major
        self.minor = minor
        self.access = access

    def _key(self) -> tuple[bool, str, int | None, int | None, int]:
        return (self.allow, self.dev_type, self.major, self.minor, self.access)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceRule) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return "DeviceRule(allow={!r}, dev_type={!r}, major={!r}, minor={!r}, access={!r})".format(
            *self._key()
        )

    @classmethod
    def from_oci(cls, rule: Mapping[str, Any]) -> DeviceRule:
        dtype = rule.get("type") or "a"
        if dtype not in ("a", "b", "c"):
            raise CgroupError(f"cgroup devices: invalid device type {dtype!r}")
        access_text = rule.get("access") or "rwm"
        if not isinstance(access_text, str) or any(ch not in "rwm" for ch in access_text):
            raise CgroupError(f"cgroup devices: invalid access {access_text!r}")
        if dtype == "a":
            return cls(bool(rule.get("allow")))
        access = 0
        for ch in access_text:
            access |= _ACCESS_BITS[ch]
        return cls(
            bool(rule.get("allow")),
            dtype,
            _number(rule.get("major"), "major"),
            _number(rule.get("minor"), "minor"),
            access,
        )

    @property
    def everything(self) -> bool:
        """Whether the rule decides every request on its own (nothing before it counts)."""
        return self.dev_type == "a"

    def allows(self, dev_type: str, major: int, minor: int, want: int) -> bool | None:
        """The reference semantics for one rule: the verdict it gives on its own
        for the requested bits it names, or None when it does not apply."""
        if self.dev_type != "a" and self.dev_type != dev_type:
            return None
        if self.major is not None and self.major != major:
            return None
        if self.minor is not None and self.minor != minor:
            return None
        return self.allow if want & self.access else None


def _number(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise CgroupError(f"cgroup devices: invalid {what} number {value!r}")
    if value == -1:
        return None
    if value < 0 or value > 0xFFFFFFFF:
        raise CgroupError(f"cgroup devices: invalid {what} number {value}")
    return value


def parse_rules(rules: Iterable[Mapping[str, Any]]) -> list[DeviceRule]:
    return [DeviceRule.from_oci(r) for r in rules]


def evaluate(rules: list[DeviceRule], dev_type: str, major: int, minor: int, want: int) -> bool:
    """What the compiled program decides, computed directly (for tests and debugging):
    every requested bit must be allowed by the last rule naming it, default allow."""
    for bit in (DEVCG_ACC_MKNOD, DEVCG_ACC_READ, DEVCG_ACC_WRITE):
        if not want & bit:
            continue
        verdict = True
        for rule in reversed(rules):
            v = rule.allows(dev_type, major, minor, bit)
            if v is not None:
                verdict = v
                break
        if not verdict:
            return False
    return True


# --- compiler ---------------------------------------------------------------------------


def _rule_block(rule: DeviceRule) -> list[Insn]:
    """Code for one rule, entered with the undecided requested bits in _WANT."""
    if rule.allow and rule.access == ACC_ALL:
        body = [mov64_imm(R0, 1), exit_insn()]
    elif rule.allow:
        # the bits it names are decided (allowed); done once nothing is left
        body = [
            alu32_imm(BPF_AND, _WANT, ~rule.access & ACC_ALL),
            jmp32_imm(BPF_JNE, _WANT, 0, 2),
            mov64_imm(R0, 1),
            exit_insn(),
        ]
    elif rule.access == ACC_ALL:
        body = [mov64_imm(R0, 0), exit_insn()]
    else:
        # refuse when an undecided requested bit is one it names
        body = [
            alu32_reg(BPF_MOV, R1, _WANT),
            alu32_imm(BPF_AND, R1, rule.access),
            jmp32_imm(BPF_JEQ, R1, 0, 2),
            mov64_imm(R0, 0),
            exit_insn(),
        ]
    tests: list[tuple[int, int]] = []
    if rule.dev_type != "a":
        tests.append((_TYPE, _TYPES[rule.dev_type]))
    if rule.major is not None:
        tests.append((_MAJOR, rule.major))
    if rule.minor is not None:
        tests.append((_MINOR, rule.minor))
    code: list[Insn] = []
    for n, (reg, value) in enumerate(tests):
        skip = len(tests) - n - 1 + len(body)  # to the next rule's block
        code.append(jmp32_imm(BPF_JNE, reg, _imm32(value), skip))
    return code + body


def _imm32(value: int) -> int:
    """A u32 as the s32 immediate field (JMP32 compares the low 32 bits)."""
    return value - (1 << 32) if value >= 1 << 31 else value


def compile_insns(rules: list[DeviceRule]) -> list[Insn]:
    code = [
        ldx_w(_TYPE, R1, _CTX_ACCESS_TYPE),
        alu32_reg(BPF_MOV, _WANT, _TYPE),
        alu32_imm(BPF_RSH, _WANT, 16),
        alu32_imm(BPF_AND, _TYPE, 0xFFFF),
        ldx_w(_MAJOR, R1, _CTX_MAJOR),
        ldx_w(_MINOR, R1, _CTX_MINOR),
    ]
    for rule in reversed(rules):
        code += _rule_block(rule)
        if rule.everything:
            return code  # what comes before it can never decide: unreachable code is refused
    code += [mov64_imm(R0, 1), exit_insn()]  # no rule named the bits left: allow
    return code


def compile_rules(rules: Iterable[Mapping[str, Any]] | list[DeviceRule]) -> bytes:
    """OCI device rules (dicts) or :class:`DeviceRule` objects -> program bytes."""
    parsed = [r if isinstance(r, DeviceRule) else DeviceRule.from_oci(r) for r in rules]
    return assemble(compile_insns(parsed))


# --- kernel -------------------------------------------------------------------------------


def load(prog: bytes) -> int:
    """Load a device program; returns its fd. The verifier's log is in the error."""
    try:
        return kernel.bpf_prog_load(
            kernel.BPF_PROG_TYPE_CGROUP_DEVICE, prog, license=LICENSE, name=PROG_NAME
        )
    except OSError as e:
        raise CgroupError(f"cgroup devices: loading the eBPF device filter: {e.strerror}") from e


def _open_dir(cgroup_dir: str) -> int:
    try:
        return os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise CgroupError(f"cgroup devices: open {cgroup_dir}: {e.strerror}") from e


def attached_programs(cgroup_dir: str) -> tuple[int, list[int]]:
    """(attach flags, ids) of the device programs attached directly to a cgroup."""
    fd = _open_dir(cgroup_dir)
    try:
        return kernel.bpf_prog_query(fd, kernel.BPF_CGROUP_DEVICE)
    except OSError as e:
        raise CgroupError(f"cgroup devices: query {cgroup_dir}: {e.strerror}") from e
    finally:
        os.close(fd)


def install(cgroup_dir: str, prog: bytes) -> int:
    """Make prog the cgroup's device filter, replacing what was attached before.

    The new program is attached first (BPF_F_ALLOW_MULTI) and the old ones are
    detached afterwards, so no device access slips through in between (for a
    moment both run, and both must allow). The cgroup holds the program; it
    goes when the cgroup is removed. Returns the new program's id.
    """
    dirfd = _open_dir(cgroup_dir)
    try:
        try:
            flags, old = kernel.bpf_prog_query(dirfd, kernel.BPF_CGROUP_DEVICE)
        except OSError as e:
            raise CgroupError(f"cgroup devices: query {cgroup_dir}: {e.strerror}") from e
        prog_fd = load(prog)
        try:
            prog_id = kernel.bpf_prog_info(prog_fd)[1]
            if old and not flags & kernel.BPF_F_ALLOW_MULTI:
                # Someone attached a single program (no ALLOW_MULTI): attaching
                # with the same flags swaps it atomically.
                attach_flags, old = flags, []
            else:
                attach_flags = kernel.BPF_F_ALLOW_MULTI
            try:
                kernel.bpf_prog_attach(dirfd, prog_fd, kernel.BPF_CGROUP_DEVICE, attach_flags)
            except OSError as e:
                raise CgroupError(
                    f"cgroup devices: attach the eBPF device filter to {cgroup_dir}: {e.strerror}"
                ) from e
        finally:
            os.close(prog_fd)
        for old_id in old:
            _detach_id(dirfd, old_id, cgroup_dir)
        return prog_id
    finally:
        os.close(dirfd)


def _detach_id(dirfd: int, prog_id: int, cgroup_dir: str) -> None:
    try:
        fd = kernel.bpf_prog_get_fd_by_id(prog_id)
    except FileNotFoundError:
        return  # gone meanwhile
    except OSError as e:
        raise CgroupError(f"cgroup devices: program {prog_id}: {e.strerror}") from e
    try:
        kernel.bpf_prog_detach(dirfd, fd, kernel.BPF_CGROUP_DEVICE)
    except FileNotFoundError:
        pass  # someone else detached it
    except OSError as e:
        raise CgroupError(
            f"cgroup devices: detach the old device filter {prog_id} from {cgroup_dir}: "
            f"{e.strerror}"
        ) from e
    finally:
        os.close(fd)
