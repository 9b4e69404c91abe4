"""oci/seccomp.py against the real kernel: every filter is loaded in a forked child."""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci import kernel
from pysandbox.oci import seccomp as sc
from tests.forked import run_in_child

SPECS = Path(__file__).resolve().parents[3] / "shared" / "reference" / "specs"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

NR_GETPID = 39
NR_CLONE = 56
NR_GETPGID = 121
NR_GETPPID = 110
NR_GETPRIORITY = 140
NR_ACCT = 163
NR_ADD_KEY = 248
NR_KEYCTL = 250
NR_CLONE3 = 435
NR_BEYOND_TABLE = 1000  # above any x86_64 syscall the profiles name

ADDR_NO_RANDOMIZE = 0x0040000
KEYCTL_GET_KEYRING_ID = 0


def raw(nr: int, *args: int) -> int:
    """syscall(2): the result, or -errno."""
    ret = int(_libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args)))
    return -ctypes.get_errno() if ret == -1 else ret


def profile(name: str) -> dict[str, Any]:
    seccomp: dict[str, Any] = json.loads((SPECS / name).read_text())["linux"]["seccomp"]
    return seccomp


def run_filtered(compiled: sc.CompiledFilter, body: Callable[[int | None], Any]) -> tuple[int, Any]:
    """Fork; the child loads the filter, runs body(listener_fd) and reports its
    JSON result through a pipe. Returns (wait status, result or None)."""
    return run_in_child(lambda: body(sc.load_filter(compiled)))


def ok(compiled: sc.CompiledFilter, body: Callable[[int | None], Any]) -> Any:
    status, result = run_filtered(compiled, body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, result)
    return result


def allow_but(rule: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [rule], **top}


# --- docker's and podman's real profiles ------------------------------------------


def test_docker_profile_compiles_fast() -> None:
    seccomp = profile("docker-run-config.json")
    names = sum(len(s["names"]) for s in seccomp["syscalls"])
    assert len(seccomp["syscalls"]) == 12 and names == 357
    start = time.perf_counter()
    compiled = sc.compile_bpf(seccomp)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed
    assert len(compiled.bpf) % 8 == 0 and 100 < len(compiled.bpf) // 8 <= 4096
    assert compiled.flags == 0 and not compiled.needs_listener
    assert compiled.listener_path is None and compiled.listener_metadata is None


def test_docker_profile_under_the_kernel() -> None:
    compiled = sc.compile_bpf(profile("docker-run-config.json"))

    def body(_: int | None) -> dict[str, Any]:
        out: dict[str, Any] = {"getpid": raw(NR_GETPID) == os.getpid()}
        try:
            kernel.unshare(kernel.CLONE_NEWUSER)
            out["unshare"] = 0
        except OSError as e:
            out["unshare"] = e.errno
        out["personality_query"] = kernel.personality(0xFFFFFFFF)
        try:
            kernel.personality(ADDR_NO_RANDOMIZE)
            out["personality_set"] = 0
        except OSError as e:
            out["personality_set"] = e.errno
        out["keyctl"] = raw(NR_KEYCTL, KEYCTL_GET_KEYRING_ID, 0)
        # clone with a namespace flag: denied by the MASKED_EQ rule, no child appears
        flags = kernel.CLONE_NEWNS | signal.SIGCHLD
        ret = raw(NR_CLONE, flags, 0, 0, 0, 0)
        if ret == 0:
            os._exit(0)  # a grandchild must never run on here
        out["clone_newns"] = ret
        # a plain fork (clone without namespace flags) is allowed
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        out["clone3"] = raw(NR_CLONE3, 0, 0)
        out["beyond_table"] = raw(NR_BEYOND_TABLE)
        # docker 20.10's profile allows socket() without argument rules
        try:
            socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
            out["vsock"] = 0
        except OSError as e:
            out["vsock"] = e.errno
        return out

    out = ok(compiled, body)
    assert out["getpid"] is True
    assert out["unshare"] == errno.EPERM  # not in docker's list without CAP_SYS_ADMIN
    assert out["personality_query"] >= 0
    assert out["personality_set"] == errno.EPERM
    assert out["keyctl"] == -errno.EPERM
    assert out["clone_newns"] == -errno.EPERM
    assert out["fork"] == 7
    assert out["clone3"] == -errno.ENOSYS  # docker's explicit errnoRet 38
    assert out["beyond_table"] == -errno.ENOSYS  # runc's ENOSYS stub, not EPERM
    assert out["vsock"] != errno.EPERM


def test_podman_profile_default_errno_ret() -> None:
    compiled = sc.compile_bpf(profile("podman-run-config.json"))

    def body(_: int | None) -> dict[str, int]:
        return {
            "getpid": raw(NR_GETPID),
            "add_key": raw(NR_ADD_KEY, 0, 0, 0, 0, 0),  # unlisted: defaultErrnoRet 38
            "acct": raw(NR_ACCT, 0),  # listed with errnoRet 1
        }

    out = ok(compiled, body)
    assert out["getpid"] > 0
    assert out["add_key"] == -errno.ENOSYS
    assert out["acct"] == -errno.EPERM


def test_socket_family_argument_rule() -> None:
    # newer docker profiles: socket allowed unless the family is AF_VSOCK
    seccomp = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["socket"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": socket.AF_VSOCK, "op": "SCMP_CMP_NE"}]},
            {"names": ["close", "write", "exit_group", "getpid", "fstat", "newfstatat",
                       "rt_sigaction", "rt_sigprocmask", "munmap", "mmap", "brk",
                       "getsockname", "getsockopt", "ioctl", "fcntl", "lseek"],
             "action": "SCMP_ACT_ALLOW"},
        ],
    }  # fmt: skip
    compiled = sc.compile_bpf(seccomp)

    def body(_: int | None) -> dict[str, int]:
        out = {}
        for fam in (socket.AF_UNIX, socket.AF_VSOCK):
            try:
                socket.socket(fam, socket.SOCK_STREAM).close()
                out[str(fam)] = 0
            except OSError as e:
                out[str(fam)] = e.errno or -1
        return out

    out = ok(compiled, body)
    assert out[str(socket.AF_UNIX)] == 0
    assert out[str(socket.AF_VSOCK)] == errno.EPERM


# --- actions ---------------------------------------------------------------------


def test_errno_rule_with_errno_ret() -> None:
    compiled = sc.compile_bpf(
        allow_but({"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38})
    )
    out = ok(compiled, lambda _: [raw(NR_GETPPID), raw(NR_GETPID)])
    assert out[0] == -errno.ENOSYS and out[1] > 0


def test_errno_defaults_to_eperm() -> None:
    compiled = sc.compile_bpf(allow_but({"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}))
    assert ok(compiled, lambda _: raw(NR_GETPPID)) == -errno.EPERM


def test_trace_without_tracer_is_enosys() -> None:
    compiled = sc.compile_bpf(allow_but({"names": ["getppid"], "action": "SCMP_ACT_TRACE"}))
    assert ok(compiled, lambda _: raw(NR_GETPPID)) == -errno.ENOSYS


def test_log_allows() -> None:
    compiled = sc.compile_bpf(allow_but({"names": ["getppid"], "action": "SCMP_ACT_LOG"}))
    assert ok(compiled, lambda _: raw(NR_GETPPID)) == os.getpid()


@pytest.mark.parametrize(
    "action", ["SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"]
)
def test_kill_actions_kill_with_sigsys(action: str) -> None:
    compiled = sc.compile_bpf(allow_but({"names": ["getppid"], "action": action}))
    status, result = run_filtered(compiled, lambda _: raw(NR_GETPPID))
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS, (status, result)
    assert result is None


def test_trap_delivers_sigsys() -> None:
    compiled = sc.compile_bpf(allow_but({"names": ["getppid"], "action": "SCMP_ACT_TRAP"}))

    def body(_: int | None) -> list[int]:
        got: list[int] = []
        signal.signal(signal.SIGSYS, lambda sig, _frame: got.append(sig))
        raw(NR_GETPPID)
        return got

    assert ok(compiled, body) == [signal.SIGSYS]


def test_default_errno_ret() -> None:
    seccomp = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EACCES,
        "syscalls": [{"names": ["write", "exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"}],
    }
    out = ok(sc.compile_bpf(seccomp), lambda _: [raw(NR_GETPID), raw(NR_GETPPID)])
    assert out[0] > 0 and out[1] == -errno.EACCES


def test_notify_returns_a_listener_fd() -> None:
    seccomp = allow_but(
        {"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"},
        listenerPath="/run/agent.sock",
        listenerMetadata="meta",
        flags=["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
    )
    compiled = sc.compile_bpf(seccomp)
    assert compiled.needs_listener
    assert compiled.flags == sc.FILTER_FLAG_NEW_LISTENER | sc.FILTER_FLAG_WAIT_KILLABLE_RECV
    assert compiled.listener_path == "/run/agent.sock"
    assert compiled.listener_metadata == "meta"

    def body(fd: int | None) -> list[Any]:
        assert fd is not None
        return [os.readlink(f"/proc/self/fd/{fd}"), raw(NR_GETPID) > 0]

    assert ok(compiled, body) == ["anon_inode:seccomp notify", True]


def test_notify_default_action_needs_listener() -> None:
    compiled = sc.compile_bpf({"defaultAction": "SCMP_ACT_NOTIFY"})
    assert compiled.needs_listener and compiled.flags & sc.FILTER_FLAG_NEW_LISTENER


def test_no_listener_without_notify() -> None:
    seccomp = allow_but(
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO"},
        flags=["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV", "SECCOMP_FILTER_FLAG_TSYNC"],
    )
    compiled = sc.compile_bpf(seccomp)
    assert not compiled.needs_listener and compiled.flags == 0
    assert ok(compiled, lambda fd: fd) is None


@pytest.mark.parametrize(
    ("flag", "bit"),
    [
        ("SECCOMP_FILTER_FLAG_LOG", sc.FILTER_FLAG_LOG),
        ("SECCOMP_FILTER_FLAG_SPEC_ALLOW", sc.FILTER_FLAG_SPEC_ALLOW),
    ],
)
def test_flags_are_passed_and_load(flag: str, bit: int) -> None:
    compiled = sc.compile_bpf(
        allow_but({"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}, flags=[flag])
    )
    assert compiled.flags == bit
    assert ok(compiled, lambda _: raw(NR_GETPPID)) == -errno.EPERM


def test_load_does_not_set_no_new_privs() -> None:
    compiled = sc.compile_bpf(allow_but({"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}))

    def body(_: int | None) -> str:
        status = Path("/proc/self/status").read_text()
        return next(ln for ln in status.splitlines() if ln.startswith("NoNewPrivs:"))

    assert ok(compiled, body).split() == ["NoNewPrivs:", "0"]


# --- argument conditions -----------------------------------------------------------


def test_masked_eq_compares_all_64_bits() -> None:
    compiled = sc.compile_bpf(
        allow_but(
            {
                "names": ["getpgid"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EDOM,
                "args": [
                    {
                        "index": 0,
                        "value": 0xF000000,
                        "valueTwo": 0x3000000,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            }
        )
    )
    out = ok(
        compiled,
        lambda _: [raw(NR_GETPGID, v) for v in (0x3000005, 0x3FFFFFF, 0x4000005, 0, 0x1_0300_0005)],
    )
    # pids above PID_MAX_LIMIT never exist: ESRCH unless the rule matches; 0 is
    # ourselves; bits above 32 are masked out here, so 0x1_0300_0005 matches too
    assert out[:3] == [-errno.EDOM, -errno.EDOM, -errno.ESRCH]
    assert out[3] > 0 and out[4] == -errno.EDOM

    high = sc.compile_bpf(
        allow_but(
            {
                "names": ["getpgid"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EDOM,
                "args": [
                    {
                        "index": 0,
                        "value": 0xFFFF_FFFF_0000_0000,
                        "valueTwo": 0x1_0000_0000,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            }
        )
    )
    out = ok(high, lambda _: [raw(NR_GETPGID, 0x1_0000_0000), raw(NR_GETPGID, 0)])
    assert out[0] == -errno.EDOM and out[1] > 0


def test_same_index_conditions_are_ored() -> None:
    compiled = sc.compile_bpf(
        allow_but(
            {
                "names": ["getpgid"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EDOM,
                "args": [
                    {"index": 0, "value": 0x7777777, "op": "SCMP_CMP_EQ"},
                    {"index": 0, "value": 0x9999999, "op": "SCMP_CMP_EQ"},
                ],
            }
        )
    )
    out = ok(compiled, lambda _: [raw(NR_GETPGID, v) for v in (0x7777777, 0x9999999, 0x8888888)])
    assert out == [-errno.EDOM, -errno.EDOM, -errno.ESRCH]


def test_distinct_index_conditions_are_anded() -> None:
    compiled = sc.compile_bpf(
        allow_but(
            {
                "names": ["getpriority"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EDOM,
                "args": [
                    {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                    {"index": 1, "value": 0x700_0000, "op": "SCMP_CMP_GE"},
                ],
            }
        )
    )

    def body(_: int | None) -> list[int]:
        return [
            raw(NR_GETPRIORITY, 0, 0x700_0001),  # both hold
            raw(NR_GETPRIORITY, 0, 0),  # only arg0 holds
            raw(NR_GETPRIORITY, 1, 0x700_0001),  # only arg1 holds: PRIO_PGRP, no such group
        ]

    out = ok(compiled, body)
    assert out[0] == -errno.EDOM
    assert out[1] >= 0
    assert out[2] == -errno.ESRCH


@pytest.mark.parametrize(
    ("op", "matching", "other"),
    [
        ("SCMP_CMP_NE", 0x8888888, 0x7777777),
        ("SCMP_CMP_LT", 0x7777776, 0x7777777),
        ("SCMP_CMP_LE", 0x7777777, 0x7777778),
        ("SCMP_CMP_EQ", 0x7777777, 0x7777778),
        ("SCMP_CMP_GE", 0x7777777, 0x7777776),
        ("SCMP_CMP_GT", 0x7777778, 0x7777777),
    ],
)
def test_operators(op: str, matching: int, other: int) -> None:
    compiled = sc.compile_bpf(
        allow_but(
            {
                "names": ["getpgid"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EDOM,
                "args": [{"index": 0, "value": 0x7777777, "op": op}],
            }
        )
    )
    out = ok(compiled, lambda _: [raw(NR_GETPGID, matching), raw(NR_GETPGID, other)])
    assert out == [-errno.EDOM, -errno.ESRCH]


# --- names, arches, dropped rules ------------------------------------------------------


def test_unknown_syscall_names_are_skipped() -> None:
    compiled = sc.compile_bpf(
        allow_but({"names": ["no_such_syscall_xyz", "getppid"], "action": "SCMP_ACT_ERRNO"})
    )
    assert ok(compiled, lambda _: raw(NR_GETPPID)) == -errno.EPERM


def test_rule_with_the_default_action_is_dropped() -> None:
    seccomp = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        ],
    }
    out = ok(sc.compile_bpf(seccomp), lambda _: [raw(NR_GETPID), raw(NR_GETPPID)])
    assert out[0] > 0 and out[1] == -errno.ENOSYS


def test_native_arch_is_always_filtered() -> None:
    only_x86 = allow_but(
        {"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}, architectures=["SCMP_ARCH_X86"]
    )
    assert ok(sc.compile_bpf(only_x86), lambda _: raw(NR_GETPPID)) == -errno.EPERM
    native = sc.compile_bpf(allow_but({"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}))
    multi = sc.compile_bpf(
        allow_but(
            {"names": ["getppid"], "action": "SCMP_ACT_ERRNO"},
            architectures=["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        )
    )
    assert len(multi.bpf) > len(native.bpf)


def test_features_lists() -> None:
    assert "SCMP_ACT_NOTIFY" in sc.SUPPORTED_ACTIONS and len(sc.SUPPORTED_ACTIONS) == 9
    assert "SCMP_CMP_MASKED_EQ" in sc.SUPPORTED_OPERATORS and len(sc.SUPPORTED_OPERATORS) == 7
    assert {"SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"} <= set(sc.SUPPORTED_ARCHES)
    assert "SECCOMP_FILTER_FLAG_SPEC_ALLOW" in sc.SUPPORTED_FLAGS


# --- cache -----------------------------------------------------------------------------


def test_compile_cached_writes_and_reuses(tmp_path: Path) -> None:
    cache = tmp_path / "cache" / "seccomp"
    seccomp = profile("docker-run-config.json")
    first = sc.compile_cached(seccomp, str(cache))
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".bpf"
    assert len(files[0].stem) == 64 and int(files[0].stem, 16) >= 0
    assert files[0].read_bytes() == first.bpf
    assert first == sc.compile_bpf(seccomp)

    # same content, different key order: same key
    reordered = dict(reversed(list(seccomp.items())))
    start = time.perf_counter()
    again = sc.compile_cached(reordered, str(cache))
    hit = time.perf_counter() - start
    assert again == first and len(list(cache.iterdir())) == 1
    assert hit < 0.05, hit

    # the cache is really read: plant another valid program under that key
    other = sc.compile_bpf(allow_but({"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}))
    files[0].write_bytes(other.bpf)
    assert sc.compile_cached(seccomp, str(cache)).bpf == other.bpf

    # a corrupt entry is recompiled and replaced
    files[0].write_bytes(b"junk")
    assert sc.compile_cached(seccomp, str(cache)).bpf == first.bpf
    assert files[0].read_bytes() == first.bpf

    # errnoRet is part of the key
    a = sc.compile_cached(allow_but({"names": ["getppid"], "action": "SCMP_ACT_ERRNO"}), str(cache))
    b = sc.compile_cached(
        allow_but({"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}), str(cache)
    )
    assert a.bpf != b.bpf and len(list(cache.iterdir())) == 3
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp")]


def test_compile_cached_keeps_listener_fields(tmp_path: Path) -> None:
    seccomp = allow_but(
        {"names": ["getppid"], "action": "SCMP_ACT_NOTIFY"}, listenerPath="/run/a.sock"
    )
    first = sc.compile_cached(seccomp, str(tmp_path))
    second = sc.compile_cached(seccomp, str(tmp_path))
    assert first == second and second.needs_listener and second.listener_path == "/run/a.sock"


def test_compile_cached_survives_unwritable_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    seccomp = allow_but({"names": ["getppid"], "action": "SCMP_ACT_ERRNO"})
    assert sc.compile_cached(seccomp, str(blocker / "sub")) == sc.compile_bpf(seccomp)
    assert sc.compile_cached(seccomp, None) == sc.compile_bpf(seccomp)


def test_cache_key_is_sha256_of_canonical_json(tmp_path: Path) -> None:
    seccomp = allow_but({"names": ["getppid"], "action": "SCMP_ACT_ERRNO"})
    sc.compile_cached(seccomp, str(tmp_path))
    (entry,) = tmp_path.iterdir()
    assert entry.stem == sc._cache_key(seccomp)
    assert entry.stem != hashlib.sha256(b"").hexdigest()


# --- errors name the field ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("seccomp", "message"),
    [
        ({}, "linux.seccomp.defaultAction: required"),
        (
            {"defaultAction": "SCMP_ACT_FOO"},
            'linux.seccomp.defaultAction: unknown action "SCMP_ACT_FOO"',
        ),
        (
            {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": -1},
            "linux.seccomp.defaultErrnoRet: -1 out of range",
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW",
             "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_VAX"]},
            'linux.seccomp.architectures[1]: unknown architecture "SCMP_ARCH_VAX"',
        ),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_BOGUS"]},
            'linux.seccomp.flags[0]: unsupported flag "SECCOMP_FILTER_FLAG_BOGUS"',
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["write"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["open"], "action": "SCMP_ACT_ALLOW"},
                    {"names": ["close"], "action": "SCMP_ACT_FOO"},
                ],
            },
            'linux.seccomp.syscalls[3].action: unknown action "SCMP_ACT_FOO"',
        ),
        (
            {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]},
            "linux.seccomp.syscalls[0].action: required",
        ),
        (
            allow_but(
                {"names": ["read"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_ABOUT"}]}
            ),
            'linux.seccomp.syscalls[0].args[0].op: unknown operator "SCMP_CMP_ABOUT"',
        ),
        (
            allow_but(
                {"names": ["read"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 1, "value": 1, "op": "SCMP_CMP_EQ"},
                          {"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}
            ),
            "linux.seccomp.syscalls[0].args[1].index: 6 out of range [0, 5]",
        ),
        (
            allow_but(
                {"names": ["read"], "action": "SCMP_ACT_ERRNO",
                 "args": [{"index": 0, "value": 1 << 64, "op": "SCMP_CMP_EQ"}]}
            ),
            "linux.seccomp.syscalls[0].args[0].value:",
        ),
        (
            allow_but({"names": ["read"], "action": "SCMP_ACT_ERRNO", "errnoRet": "EPERM"}),
            "linux.seccomp.syscalls[0].errnoRet: expected an integer",
        ),
        (
            allow_but({"names": "read", "action": "SCMP_ACT_ERRNO"}),
            "linux.seccomp.syscalls[0].names: expected a list",
        ),
    ],
)  # fmt: skip
def test_errors_name_the_field(seccomp: dict[str, Any], message: str) -> None:
    with pytest.raises(sc.SeccompError) as info:
        sc.compile_bpf(seccomp)
    assert str(info.value).startswith(message), str(info.value)
    with pytest.raises(sc.SeccompError):
        sc.compile_cached(seccomp, None)


def test_big_endian_arch_is_refused_by_field() -> None:
    seccomp = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_S390X"]}
    with pytest.raises(sc.SeccompError, match=r"^linux\.seccomp\.architectures\[0\]: "):
        sc.compile_bpf(seccomp)
