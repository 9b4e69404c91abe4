"""The cgroup v2 device filter (pysandbox.oci.cgroups.devices_bpf), on the real kernel.

Programs are loaded into the kernel (the verifier must accept each one),
attached to a scratch cgroup under the cgroup2 mount, and a real child process
moved into that cgroup tries opens and mknods; denied ones fail with EPERM.
The compiler's output is also run through a tiny interpreter of the few
instructions it emits and compared with the reference semantics.
"""

from __future__ import annotations

import errno
import json
import os
import random
import secrets
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci import kernel
from pysandbox.oci.cgroups import CgroupError, new_manager, v2_mountpoint
from pysandbox.oci.cgroups import devices_bpf as dbpf
from pysandbox.oci.cgroups.v2 import V2Manager


def _cgroup2() -> str | None:
    try:
        return v2_mountpoint()
    except CgroupError:
        return None


CGROUP2 = _cgroup2()

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for bpf(2) and cgroups"),
    pytest.mark.skipif(CGROUP2 is None, reason="no cgroup2 mount"),
]

ACC = {"m": 1, "r": 2, "w": 4}


# --- fixtures and helpers ---------------------------------------------------------------


@pytest.fixture
def cgdir() -> Iterator[str]:
    """A scratch cgroup in the cgroup2 hierarchy, removed (with its programs) afterwards."""
    assert CGROUP2 is not None
    path = os.path.join(CGROUP2, f"pysandbox-test-dev-{secrets.token_hex(4)}")
    os.mkdir(path)
    yield path
    for sub, _dn, _fn in os.walk(path, topdown=False):
        procs = Path(sub, "cgroup.procs")
        if procs.exists():
            for pid in procs.read_text().split():
                try:
                    os.kill(int(pid), 9)
                except ProcessLookupError:
                    pass
        try:
            os.rmdir(sub)
        except OSError:
            pass
    assert not os.path.exists(path), f"scratch cgroup {path} left behind"


_PROBE = r"""
import json, os, sys
cg, tmp, ops = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
with open(os.path.join(cg, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
flags = {"r": os.O_RDONLY, "w": os.O_WRONLY, "rw": os.O_RDWR}
out = {}
for op in ops:
    kind, arg, mode = op.split()
    try:
        if kind == "open":
            os.close(os.open(arg, flags[mode] | os.O_CLOEXEC))
        else:
            typ, nums = mode[0], mode[1:].split(":")
            node = os.path.join(tmp, f"n{len(out)}")
            os.mknod(node, (0o20600 if typ == "c" else 0o60600),
                     os.makedev(int(nums[0]), int(nums[1])))
            os.unlink(node)
        out[op] = 0
    except OSError as e:
        out[op] = e.errno
print(json.dumps(out))
"""


def probe(cg: str, tmp: Path, ops: list[str]) -> dict[str, int]:
    """Run a child in cgroup cg; each op is ``open PATH r|w|rw`` or ``mknod - cMAJ:MIN``.
    Returns op -> 0 (worked) or the errno."""
    res = subprocess.run(
        [sys.executable, "-S", "-c", _PROBE, cg, str(tmp), json.dumps(ops)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    result: dict[str, int] = json.loads(res.stdout)
    return result


def oci(allow: bool, typ: str | None = None, major: int | None = None, minor: int | None = None,
        access: str | None = "rwm") -> dict[str, Any]:  # fmt: skip
    rule: dict[str, Any] = {"allow": allow}
    if typ is not None:
        rule["type"] = typ
    if major is not None:
        rule["major"] = major
    if minor is not None:
        rule["minor"] = minor
    if access is not None:
        rule["access"] = access
    return rule


DENY_ALL = oci(False)
EPERM = errno.EPERM


def attach(cg: str, rules: list[dict[str, Any]]) -> int:
    return dbpf.install(cg, dbpf.compile_rules(rules))


# --- a tiny interpreter for the instructions the compiler emits ---------------------------


def run_program(prog: bytes, dev_type: int, major: int, minor: int, access: int) -> int:
    ctx = struct.pack("<III", (access << 16) | dev_type, major, minor)
    regs = [0] * 11
    pc, steps = 0, 0
    while True:
        steps += 1
        assert steps < 100_000
        code, r, off, imm = struct.unpack_from("<BBhi", prog, 8 * pc)
        dst, src = r & 0xF, r >> 4
        pc += 1
        cls, op = code & 7, code & 0xF0
        if code == dbpf.BPF_LDX | dbpf.BPF_W | dbpf.BPF_MEM:
            assert src == 1
            regs[dst] = struct.unpack_from("<I", ctx, off)[0]
        elif cls in (dbpf.BPF_ALU, dbpf.BPF_ALU64):
            rhs = regs[src] if code & dbpf.BPF_X else imm
            mask = 0xFFFFFFFF if cls == dbpf.BPF_ALU else 0xFFFFFFFFFFFFFFFF
            if op == dbpf.BPF_MOV:
                regs[dst] = rhs & mask
            elif op == dbpf.BPF_AND:
                regs[dst] = (regs[dst] & rhs) & mask
            elif op == dbpf.BPF_RSH:
                regs[dst] = (regs[dst] & mask) >> rhs
            else:
                raise AssertionError(f"unexpected ALU op {code:#x}")
        elif code == dbpf.BPF_JMP | dbpf.BPF_EXIT:
            return regs[0]
        elif cls == dbpf.BPF_JMP32:
            a, b = regs[dst] & 0xFFFFFFFF, imm & 0xFFFFFFFF
            taken = a == b if op == dbpf.BPF_JEQ else a != b if op == dbpf.BPF_JNE else None
            assert taken is not None, f"unexpected jump {code:#x}"
            if taken:
                pc += off
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


def random_rules(rng: random.Random) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [DENY_ALL] if rng.random() < 0.6 else []
    for _ in range(rng.randint(0, 8)):
        typ = rng.choice(["a", "b", "c", "c", "c", None]) if rng.random() < 0.1 else "c"
        if rng.random() < 0.1:
            typ = "b"
        access = "".join(ch for ch in "rwm" if rng.random() < 0.5) or "r"
        rules.append(
            oci(
                rng.random() < 0.6,
                typ,
                rng.choice([None, -1, 1, 1, 5]),
                rng.choice([None, -1, 3, 5, 9]),
                access,
            )
        )
    return rules


# --- compiler ------------------------------------------------------------------------------


def test_instruction_encoding() -> None:
    # r0 = 1 (BPF_ALU64|BPF_MOV|BPF_K = 0xb7) and exit (0x95)
    assert dbpf.mov64_imm(0, 1).encode() == bytes.fromhex("b700000001000000")
    assert dbpf.exit_insn().encode() == bytes.fromhex("9500000000000000")
    # w2 = *(u32 *)(r1 + 4): BPF_LDX|BPF_MEM|BPF_W = 0x61, src 1 dst 2
    assert dbpf.ldx_w(2, 1, 4).encode() == bytes.fromhex("6112040000000000")
    # if w3 != 7 goto +2: BPF_JMP32|BPF_JNE|BPF_K = 0x56
    assert dbpf.jmp32_imm(dbpf.BPF_JNE, 3, 7, 2).encode() == bytes.fromhex("5603020007000000")
    # w3 >>= 16 (0x74), w2 &= 0xffff (0x54), w1 = w3 (0xbc)
    assert dbpf.alu32_imm(dbpf.BPF_RSH, 3, 16).encode() == bytes.fromhex("7403000010000000")
    assert dbpf.alu32_imm(dbpf.BPF_AND, 2, 0xFFFF).encode() == bytes.fromhex("54020000ffff0000")
    assert dbpf.alu32_reg(dbpf.BPF_MOV, 1, 3).encode() == bytes.fromhex("bc31000000000000")


def test_deny_all_program_is_short_and_denies() -> None:
    prog = dbpf.compile_rules([DENY_ALL])
    assert len(prog) // 8 == 6 + 2  # prologue, then r0 = 0; exit
    assert run_program(prog, 2, 1, 3, ACC["r"]) == 0


def test_rules_before_a_catch_all_are_not_emitted() -> None:
    short = dbpf.compile_rules([oci(True, "c", 1, 3), DENY_ALL])
    assert short == dbpf.compile_rules([DENY_ALL])


def test_compiled_programs_match_the_reference_semantics() -> None:
    rng = random.Random(1234)
    devices = [(t, ma, mi) for t in (1, 2) for ma in (1, 5, 7) for mi in (3, 5, 9, 0)]
    for _ in range(300):
        rules = random_rules(rng)
        parsed = dbpf.parse_rules(rules)
        prog = dbpf.compile_rules(parsed)
        for t, ma, mi in devices:
            for acc in range(1, 8):
                want = dbpf.evaluate(parsed, "b" if t == 1 else "c", ma, mi, acc)
                got = run_program(prog, t, ma, mi, acc)
                assert got == int(want), (rules, (t, ma, mi, acc), dbpf.disassemble(prog))


def test_reference_semantics_later_rule_wins_per_bit() -> None:
    rules = dbpf.parse_rules([DENY_ALL, oci(True, "c", 1, None, "rwm"), oci(False, "c", 1, 5, "w")])
    assert dbpf.evaluate(rules, "c", 1, 5, ACC["r"])
    assert not dbpf.evaluate(rules, "c", 1, 5, ACC["w"])
    assert not dbpf.evaluate(rules, "c", 1, 5, ACC["r"] | ACC["w"])
    assert dbpf.evaluate(rules, "c", 1, 3, ACC["w"])
    assert not dbpf.evaluate(rules, "b", 1, 3, ACC["r"])


@pytest.mark.parametrize(
    "rule",
    [
        {"allow": True, "type": "x"},
        {"allow": True, "type": "c", "access": "rx"},
        {"allow": True, "type": "c", "major": "1"},
        {"allow": True, "type": "c", "minor": -2},
        {"allow": True, "type": "c", "major": True},
    ],
)
def test_invalid_rules_are_refused(rule: dict[str, Any]) -> None:
    with pytest.raises(CgroupError, match="cgroup devices: invalid"):
        dbpf.compile_rules([rule])


def test_type_a_means_everything_whatever_else_it_says() -> None:
    assert dbpf.compile_rules([oci(False, "a", 1, 3, "r")]) == dbpf.compile_rules([DENY_ALL])
    assert dbpf.compile_rules([{"allow": False}]) == dbpf.compile_rules([DENY_ALL])


# --- the kernel: load, attach, replace --------------------------------------------------------


def test_verifier_accepts_every_compiled_program() -> None:
    rng = random.Random(99)
    samples = [random_rules(rng) for _ in range(40)]
    samples += [[], [DENY_ALL], [oci(True)], [oci(True, "c", 2**32 - 1, 2**31, "m")]]
    for rules in samples:
        fd = dbpf.load(dbpf.compile_rules(rules))
        try:
            ptype, prog_id, name = kernel.bpf_prog_info(fd)
            assert ptype == kernel.BPF_PROG_TYPE_CGROUP_DEVICE
            assert prog_id > 0
            assert name == dbpf.PROG_NAME
        finally:
            os.close(fd)


def test_a_bad_program_fails_with_the_verifier_log() -> None:
    prog = dbpf.assemble([dbpf.mov64_imm(0, 1)])  # no exit
    with pytest.raises(kernel.BpfLoadError) as info:
        kernel.bpf_prog_load(kernel.BPF_PROG_TYPE_CGROUP_DEVICE, prog)
    assert info.value.errno == errno.EINVAL
    assert "exit" in info.value.verifier_log
    with pytest.raises(CgroupError, match=r"loading the eBPF device filter: .*verifier log"):
        dbpf.load(prog)


def test_install_replaces_the_previous_program(cgdir: str) -> None:
    assert dbpf.attached_programs(cgdir) == (0, [])
    first = attach(cgdir, [DENY_ALL])
    flags, ids = dbpf.attached_programs(cgdir)
    assert ids == [first]
    assert flags & kernel.BPF_F_ALLOW_MULTI
    second = attach(cgdir, [oci(True)])
    assert second != first
    assert dbpf.attached_programs(cgdir)[1] == [second]


def test_install_swaps_a_single_program_attached_without_multi(cgdir: str) -> None:
    fd = dbpf.load(dbpf.compile_rules([DENY_ALL]))
    dirfd = os.open(cgdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        kernel.bpf_prog_attach(dirfd, fd, kernel.BPF_CGROUP_DEVICE, 0)
    finally:
        os.close(dirfd)
        os.close(fd)
    new = attach(cgdir, [oci(True)])
    assert dbpf.attached_programs(cgdir) == (0, [new])


def test_install_on_a_missing_cgroup_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match=r"cgroup devices: open .*No such file"):
        attach(str(tmp_path / "nope"), [DENY_ALL])


# --- the kernel: what a process in the cgroup can do ---------------------------------------


NULL_R, NULL_W, NULL_RW = "open /dev/null r", "open /dev/null w", "open /dev/null rw"
ZERO_R, ZERO_W, ZERO_RW = "open /dev/zero r", "open /dev/zero w", "open /dev/zero rw"
FULL_R = "open /dev/full r"
URANDOM_R = "open /dev/urandom r"
MKNOD_NULL, MKNOD_ZERO, MKNOD_MEM = "mknod - c1:3", "mknod - c1:5", "mknod - c1:1"
MKNOD_TTY, MKNOD_LOOP = "mknod - c5:0", "mknod - b7:0"
ALL_OPS = [NULL_R, NULL_W, NULL_RW, ZERO_R, ZERO_W, ZERO_RW, FULL_R, URANDOM_R]
ALL_OPS += [MKNOD_NULL, MKNOD_ZERO, MKNOD_MEM, MKNOD_TTY, MKNOD_LOOP]


def expect(result: dict[str, int], allowed: set[str]) -> None:
    want = {op: (0 if op in allowed else EPERM) for op in result}
    assert result == want


def test_no_program_allows_everything(cgdir: str, tmp_path: Path) -> None:
    expect(probe(cgdir, tmp_path, ALL_OPS), set(ALL_OPS))


def test_deny_all(cgdir: str, tmp_path: Path) -> None:
    attach(cgdir, [DENY_ALL])
    expect(probe(cgdir, tmp_path, ALL_OPS), set())


def test_allow_list(cgdir: str, tmp_path: Path) -> None:
    attach(cgdir, [DENY_ALL, oci(True, "c", 1, 3, "rwm"), oci(True, "c", 1, 5, "r")])
    expect(probe(cgdir, tmp_path, ALL_OPS), {NULL_R, NULL_W, NULL_RW, ZERO_R, MKNOD_NULL})


def test_runc_default_rules(cgdir: str, tmp_path: Path) -> None:
    from pysandbox.oci.lifecycle import _DEFAULT_DEVICE_RULES

    rules = [DENY_ALL]
    for typ, major, minor, access in _DEFAULT_DEVICE_RULES:
        rules.append(oci(True, typ, major, minor, access))
    attach(cgdir, rules)
    mknods = {MKNOD_NULL, MKNOD_ZERO, MKNOD_MEM, MKNOD_TTY, MKNOD_LOOP}
    opens = {NULL_R, NULL_W, NULL_RW, ZERO_R, ZERO_W, ZERO_RW, FULL_R, URANDOM_R}
    expect(probe(cgdir, tmp_path, ALL_OPS), mknods | opens)
    expect(probe(cgdir, tmp_path, ["open /dev/kmsg r"]), set())  # c 1:11


def test_wildcard_major_and_minor(cgdir: str, tmp_path: Path) -> None:
    attach(cgdir, [DENY_ALL, oci(True, "c", None, None, "m"), oci(True, "c", 1, -1, "r")])
    expect(
        probe(cgdir, tmp_path, ALL_OPS),
        {NULL_R, ZERO_R, FULL_R, URANDOM_R, MKNOD_NULL, MKNOD_ZERO, MKNOD_MEM, MKNOD_TTY},
    )


def test_block_wildcard_does_not_cover_char_devices(cgdir: str, tmp_path: Path) -> None:
    attach(cgdir, [DENY_ALL, oci(True, "b", -1, -1, "rwm")])
    expect(probe(cgdir, tmp_path, ALL_OPS), {MKNOD_LOOP})


def test_later_rule_wins(cgdir: str, tmp_path: Path) -> None:
    attach(cgdir, [DENY_ALL, oci(True, "c", 1, None, "rwm"), oci(False, "c", 1, 5, "w")])
    expect(
        probe(cgdir, tmp_path, ALL_OPS),
        {NULL_R, NULL_W, NULL_RW, ZERO_R, FULL_R, URANDOM_R, MKNOD_NULL, MKNOD_ZERO, MKNOD_MEM},
    )
    # and the other way round: the later allow gives back read only
    attach(cgdir, [DENY_ALL, oci(False, "c", 1, 3, "rwm"), oci(True, "c", 1, 3, "r")])
    expect(probe(cgdir, tmp_path, [NULL_R, NULL_W, NULL_RW, ZERO_R]), {NULL_R})


def test_default_is_allow_without_a_leading_deny_all(cgdir: str, tmp_path: Path) -> None:
    attach(cgdir, [oci(False, "c", 1, 5, "rwm")])
    expect(
        probe(cgdir, tmp_path, ALL_OPS),
        set(ALL_OPS) - {ZERO_R, ZERO_W, ZERO_RW, MKNOD_ZERO},
    )


def test_a_trailing_allow_all_wins(cgdir: str, tmp_path: Path) -> None:
    attach(cgdir, [DENY_ALL, oci(False, "c", 1, 3), oci(True)])
    expect(probe(cgdir, tmp_path, ALL_OPS), set(ALL_OPS))


def test_update_replaces_the_rules(cgdir: str, tmp_path: Path) -> None:
    attach(cgdir, [DENY_ALL])
    expect(probe(cgdir, tmp_path, [NULL_R, ZERO_R]), set())
    attach(cgdir, [DENY_ALL, oci(True, "c", 1, 3, "r")])
    expect(probe(cgdir, tmp_path, [NULL_R, ZERO_R]), {NULL_R})


def test_a_parent_program_applies_to_child_cgroups(cgdir: str, tmp_path: Path) -> None:
    child = os.path.join(cgdir, "sub")
    os.mkdir(child)
    attach(cgdir, [DENY_ALL, oci(True, "c", 1, 3, "rw")])
    attach(child, [DENY_ALL, oci(True, "c", 1, None, "r")])  # cannot widen the parent's
    expect(probe(child, tmp_path, [NULL_R, NULL_W, ZERO_R]), {NULL_R})


# --- V2Manager ---------------------------------------------------------------------------


@pytest.fixture
def manager() -> Iterator[V2Manager]:
    m = V2Manager(f"/pysandbox-test-dev-{secrets.token_hex(4)}", mountpoint=CGROUP2)
    m.create()
    yield m
    m.destroy()
    assert not os.path.exists(m.dir)


def test_manager_apply_and_update_devices(manager: V2Manager, tmp_path: Path) -> None:
    manager.apply({"devices": [DENY_ALL, oci(True, "c", 1, 3, "rwm")]})
    assert len(dbpf.attached_programs(manager.dir)[1]) == 1
    expect(probe(manager.dir, tmp_path, [NULL_RW, ZERO_R, MKNOD_ZERO]), {NULL_RW})
    manager.apply({"devices": [DENY_ALL, oci(True, "c", 1, 5, "r")]})
    assert len(dbpf.attached_programs(manager.dir)[1]) == 1
    expect(probe(manager.dir, tmp_path, [NULL_RW, ZERO_R, MKNOD_ZERO]), {ZERO_R})
    manager.apply({"devices": []})  # no rules: the filter stays as it is
    manager.apply(None)
    assert len(dbpf.attached_programs(manager.dir)[1]) == 1


def test_manager_refuses_invalid_device_rules(manager: V2Manager) -> None:
    with pytest.raises(CgroupError, match="invalid device type"):
        manager.apply({"devices": [{"allow": True, "type": "q"}]})
    assert dbpf.attached_programs(manager.dir)[1] == []


def test_memory_limit_without_the_memory_controller_fails_clearly(manager: V2Manager) -> None:
    if "memory" in manager.controllers() or "memory" in (
        Path(manager.mountpoint, "cgroup.controllers").read_text().split()
    ):
        pytest.skip("this cgroup2 hierarchy has the memory controller")
    with pytest.raises(CgroupError, match="the memory controller is not available"):
        manager.apply({"memory": {"limit": 64 << 20}})


def test_mode_override_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYSANDBOX_CGROUP_MODE", "v2")
    monkeypatch.delenv("PYSANDBOX_CGROUP2_MOUNT", raising=False)
    m = new_manager(None, "abc")
    assert isinstance(m, V2Manager)
    assert m.mountpoint == CGROUP2
    monkeypatch.setenv("PYSANDBOX_CGROUP2_MOUNT", "/somewhere/else")
    m = new_manager(None, "abc")
    assert isinstance(m, V2Manager) and m.mountpoint == "/somewhere/else"
    assert m.to_dict()["mountpoint"] == "/somewhere/else"
    # an explicit mode wins over the environment
    assert new_manager(None, "abc", mode="v1").mode == "v1"
    monkeypatch.setenv("PYSANDBOX_CGROUP_MODE", "v3")
    with pytest.raises(CgroupError, match="unknown cgroup mode 'v3'"):
        new_manager(None, "abc")
