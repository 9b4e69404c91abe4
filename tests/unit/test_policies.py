"""policies/: profile validation, and the compiled filters under the real kernel.

Filters are loaded in forked children. Most tests compile with
``sentry_action="errno"`` (sentry calls answer ENOTSUP) so a child never waits
on a listener nobody serves; one test loads the real notifying filter and
answers from the parent through pidfd_getfd.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci import kernel
from pysandbox.policies import compiler as pc
from pysandbox.syscalls import table
from tests.forked import run_in_child

REPO = Path(__file__).resolve().parents[2]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long

NR = {s.name: s.nr for s in table.all_syscalls()}
X32_BIT = 0x40000000
CLONE_NEWUSER = 0x10000000
CLONE_FILES = 0x00000400
SIGCHLD = 17
AF_INET, AF_NETLINK, AF_PACKET = 2, 16, 17
SOCK_DGRAM, SOCK_RAW = 2, 3
NETLINK_ROUTE, NETLINK_AUDIT = 0, 9
FIONREAD, TIOCSTI, TIOCGPTN = 0x541B, 0x5412, 0x80045430
PR_SET_NAME, PR_SET_MM = 15, 35
ADDR_NO_RANDOMIZE = 0x0040000


def raw(nr: int, *args: int) -> int:
    """syscall(2): the result, or -errno."""
    ret = int(_libc.syscall(ctypes.c_long(nr), *(ctypes.c_ulong(a) for a in args)))
    return -ctypes.get_errno() if ret == -1 else ret


def run_filtered(bpf: bytes, flags: int, body: Callable[[int, int], Any]) -> tuple[int, Any]:
    """Fork; the child loads the filter, runs body(listener or -1, its pid) and reports its
    JSON result through a pipe. Returns (wait status, result or None)."""

    def child() -> Any:
        me = os.getpid()  # before the filter: strict routes getpid to the sentry
        fd = kernel.seccomp_load_bpf(bpf, flags)
        return body(fd if flags else -1, me)

    return run_in_child(child)


def errno_variant(name: str) -> pc.CompiledPolicy:
    return pc.compile_profile(pc.load_profile(name), sentry_action="errno")


def probe(name: str) -> dict[str, int]:
    """Run the common probes under a profile (sentry calls answer ENOTSUP)."""
    compiled = errno_variant(name)

    def body(_: int, me: int) -> dict[str, int]:
        out: dict[str, int] = {}
        pid = raw(NR["getpid"])
        out["getpid"] = 0 if pid == me else pid
        out["bpf"] = raw(NR["bpf"], 0, 0, 0)
        out["mount"] = raw(NR["mount"], 0, 0, 0, 0, 0)
        out["io_uring_setup"] = raw(NR["io_uring_setup"], 1, 0)
        out["nr_1000"] = raw(1000)
        out["nr_gap_400"] = raw(400)
        out["clone3"] = raw(NR["clone3"], 0, 0)
        out["uname"] = raw(NR["uname"], 0)
        r = raw(NR["clone"], CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)
        if r == 0:  # the filter let it through: do not run on as a copy
            os._exit(0)
        out["clone_newuser"] = r
        out["unshare_newuser"] = raw(NR["unshare"], CLONE_NEWUSER)
        out["unshare_files"] = raw(NR["unshare"], CLONE_FILES)
        pid = os.fork()  # clone without namespace flags
        if pid == 0:
            os._exit(7)
        out["fork"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        for key, args in {
            "socket_inet": (AF_INET, SOCK_DGRAM, 0),
            "socket_packet": (AF_PACKET, SOCK_RAW, 0),
            "socket_netlink_route": (AF_NETLINK, SOCK_RAW, NETLINK_ROUTE),
            "socket_netlink_audit": (AF_NETLINK, SOCK_RAW, NETLINK_AUDIT),
        }.items():
            fd = raw(NR["socket"], *args)
            out[key] = min(fd, 0)
            if fd >= 0:
                os.close(fd)
        r_fd, _w_fd = os.pipe()
        nread = ctypes.c_int(-1)
        ret = int(_libc.ioctl(r_fd, ctypes.c_ulong(FIONREAD), ctypes.byref(nread)))
        out["ioctl_fionread"] = -ctypes.get_errno() if ret == -1 else ret
        out["ioctl_tiocsti"] = raw(NR["ioctl"], r_fd, TIOCSTI, 0)
        # A sign-extended request (an int constant passed as long) still matches.
        out["ioctl_tiocgptn_sext"] = raw(NR["ioctl"], r_fd, 0xFFFFFFFF00000000 | TIOCGPTN, 0)
        buf = ctypes.create_string_buffer(b"probe\0")
        out["prctl_set_name"] = raw(NR["prctl"], PR_SET_NAME, ctypes.addressof(buf))
        out["prctl_set_mm"] = raw(NR["prctl"], PR_SET_MM, 0, 0)
        out["personality_query"] = min(raw(NR["personality"], 0xFFFFFFFF), 0)
        out["personality_no_aslr"] = raw(NR["personality"], ADDR_NO_RANDOMIZE)
        out["settimeofday"] = raw(NR["settimeofday"], 0, 0)
        return out

    status, out = run_filtered(compiled.bpf, 0, body)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, out)
    assert isinstance(out, dict)
    return out


# --- profiles as data ---------------------------------------------------------------


@pytest.mark.parametrize("name", pc.BUILTIN_PROFILES)
def test_every_syscall_has_exactly_one_disposition(name: str) -> None:
    prof = pc.load_profile(name)
    assert set(prof.dispositions) == {s.name for s in table.all_syscalls()}
    for sname, d in prof.dispositions.items():
        assert d.kind in pc.DISPOSITIONS, sname
        assert (d.kind == "deny") == (d.errno is not None), sname
        assert d.rule is None or d.kind == "host", sname


@pytest.mark.parametrize("name", pc.BUILTIN_PROFILES)
def test_path_taking_syscalls_are_never_host(name: str) -> None:
    prof = pc.load_profile(name)
    host = [s.name for s in table.all_syscalls() if s.takes_path]
    bad = [n for n in host if prof.dispositions[n].kind == "host"]
    assert not bad, f"{name}: path-taking syscalls on the host: {bad}"


@pytest.mark.parametrize("name", pc.BUILTIN_PROFILES)
def test_routing_covers_sentry_calls(name: str) -> None:
    prof = pc.load_profile(name)
    routing = pc.routing_table(prof)
    for sname, d in prof.dispositions.items():
        nr = NR[sname]
        routed = d.kind == "sentry" or (d.rule is not None and d.rule.otherwise == "sentry")
        assert (nr in routing) == routed, sname
        if routed:
            assert routing[nr].split(".")[0] in table.AREAS, routing[nr]


def test_privileged_and_bypassing_calls_are_denied_everywhere() -> None:
    for name in pc.BUILTIN_PROFILES:
        prof = pc.load_profile(name)
        for sname in ("mount", "bpf", "kexec_load", "init_module", "keyctl", "userfaultfd",
                      "io_uring_setup", "io_uring_enter", "open_by_handle_at", "perf_event_open",
                      "reboot", "swapon", "settimeofday", "clock_settime"):  # fmt: skip
            d = prof.dispositions[sname]
            assert (d.kind, d.errno) == ("deny", "EPERM"), (name, sname)
        assert prof.dispositions["seccomp"].kind == "sentry"
        assert prof.dispositions["clone3"].errno == "ENOSYS"


def test_extends_overrides_only_what_it_names() -> None:
    default, ci, strict = (pc.load_profile(n) for n in ("default", "ci", "strict"))
    assert ci.dispositions["ptrace"].kind == "deny"
    assert default.dispositions["ptrace"].kind == "sentry"
    assert ci.dispositions["read"] == default.dispositions["read"]
    assert strict.dispositions["getpid"].kind == "sentry"
    assert default.dispositions["getpid"].kind == "host"


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


def test_unknown_syscall_is_named(tmp_path: Path) -> None:
    p = write(tmp_path, "p", 'extends = "default"\n[host]\ncalls = ["getpid", "frobnicate"]\n')
    with pytest.raises(pc.PolicyError, match="unknown syscall 'frobnicate'"):
        pc.load_profile(p)


def test_two_dispositions_are_named(tmp_path: Path) -> None:
    text = 'extends = "default"\n[host]\ncalls = ["getpid"]\n[deny]\nEPERM = ["getpid"]\n'
    with pytest.raises(pc.PolicyError, match=r"'getpid' has two dispositions: \[host\] and"):
        pc.load_profile(write(tmp_path, "p", text))


def test_missing_disposition_is_named(tmp_path: Path) -> None:
    src = (REPO / "policies" / "default.toml").read_text().replace('"getpid", ', "", 1)
    with pytest.raises(pc.PolicyError, match=r"no disposition to 1 syscall.*: getpid$"):
        pc.load_profile(write(tmp_path, "p", src))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('extends = "default"\n[deny]\nEWHATEVER = ["getpid"]\n', "unknown errno 'EWHATEVER'"),
        (
            'extends = "default"\n[host.rules.socket]\n'
            'allow = [{arg0 = "AF_BOGUS"}]\nelse = "EPERM"\n',
            "unknown constant 'AF_BOGUS'",
        ),
        (
            'extends = "default"\n[host.rules.getpid]\nallow = [{arg0 = 1}]\nelse = "EPERM"\n',
            "getpid takes 0 argument",
        ),
        ('extends = "default"\nsomething = 1\n', "unknown top-level key"),
        ('extends = "nonexistent"\n', "no such profile"),
    ],
)
def test_invalid_profiles(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(pc.PolicyError, match=message):
        pc.load_profile(write(tmp_path, "p", text))


def test_extends_cycle(tmp_path: Path) -> None:
    write(tmp_path, "a", f'extends = "{tmp_path}/b.toml"\n')
    b = write(tmp_path, "b", f'extends = "{tmp_path}/a.toml"\n')
    with pytest.raises(pc.PolicyError, match="cycle"):
        pc.load_profile(b)


def test_compile_cached(tmp_path: Path) -> None:
    prof = pc.load_profile("default")
    first = pc.compile_cached(prof, str(tmp_path))
    files = list(tmp_path.glob("policy-*.bpf"))
    assert len(files) == 1 and files[0].read_bytes() == first.bpf
    again = pc.compile_cached(prof, str(tmp_path))
    assert again == first
    assert first.needs_listener and first.routing[NR["uname"]] == "info.uname"
    other = pc.compile_cached(prof, str(tmp_path), sentry_action="errno")
    assert other.bpf != first.bpf and not other.needs_listener
    assert len(list(tmp_path.glob("policy-*.bpf"))) == 2


# --- the compiled filters under the kernel --------------------------------------------


def test_default_profile_under_the_kernel() -> None:
    out = probe("default")
    assert out["getpid"] == 0
    assert out["bpf"] == -errno.EPERM
    assert out["mount"] == -errno.EPERM
    assert out["io_uring_setup"] == -errno.EPERM
    assert out["settimeofday"] == -errno.EPERM
    assert out["nr_1000"] == -errno.ENOSYS
    assert out["nr_gap_400"] == -errno.ENOSYS
    assert out["clone3"] == -errno.ENOSYS
    assert out["uname"] == -errno.ENOTSUP  # sentry (errno variant)
    assert out["clone_newuser"] == -errno.EPERM
    assert out["unshare_newuser"] == -errno.EPERM
    assert out["unshare_files"] == 0
    assert out["fork"] == 7
    assert out["socket_inet"] == 0
    assert out["socket_packet"] == -errno.EAFNOSUPPORT
    assert out["socket_netlink_route"] == 0
    assert out["socket_netlink_audit"] == -errno.EAFNOSUPPORT
    assert out["ioctl_fionread"] == 0
    assert out["ioctl_tiocsti"] == -errno.ENOTSUP  # not allowed: to the sentry
    assert out["ioctl_tiocgptn_sext"] == -errno.ENOTTY  # allowed: the kernel answers
    assert out["prctl_set_name"] == 0
    assert out["prctl_set_mm"] == -errno.ENOTSUP
    assert out["personality_query"] == 0
    assert out["personality_no_aslr"] == -errno.ENOTSUP


def test_ci_profile_under_the_kernel() -> None:
    out = probe("ci")
    assert out["getpid"] == 0
    assert out["socket_inet"] == -errno.EAFNOSUPPORT
    assert out["socket_netlink_route"] == 0
    assert out["socket_packet"] == -errno.EAFNOSUPPORT
    assert out["personality_no_aslr"] == -errno.EPERM
    assert out["clone_newuser"] == -errno.EPERM
    assert out["fork"] == 7


def test_strict_profile_under_the_kernel() -> None:
    out = probe("strict")
    assert out["getpid"] == -errno.ENOTSUP  # routed to the sentry
    assert out["socket_inet"] == -errno.ENOTSUP
    assert out["bpf"] == -errno.EPERM
    assert out["nr_1000"] == -errno.ENOSYS


def test_x32_numbers_kill_the_process() -> None:
    compiled = errno_variant("default")

    def body(_: int, me: int) -> int:
        return raw(X32_BIT | NR["getpid"])

    status, out = run_filtered(compiled.bpf, 0, body)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS, (status, out)


PROBE_C = r"""
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

/* argv[1]: a BPF file to load first ("-" for none); then an i386 getpid (20). */
int main(int argc, char **argv) {
    static unsigned char prog[65536];
    if (argc > 1 && argv[1][0] != '-') {
        FILE *f = fopen(argv[1], "rb");
        if (!f) return 10;
        size_t n = fread(prog, 1, sizeof prog, f);
        fclose(f);
        struct sock_fprog fprog = { (unsigned short)(n / 8), (struct sock_filter *)prog };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return 11;
        if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog)) return 12;
    }
    long r;
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
    return r > 0 ? 0 : 13;
}
"""


@pytest.fixture(scope="module")
def int80_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is not installed (make setup installs it)")
    d = tmp_path_factory.mktemp("int80")
    (d / "probe.c").write_text(PROBE_C)
    subprocess.run([gcc, "-static", "-O1", "-o", str(d / "probe"), str(d / "probe.c")], check=True)
    return d / "probe"


def test_i386_int80_kills_the_process(int80_probe: Path, tmp_path: Path) -> None:
    bare = subprocess.run([str(int80_probe), "-"], check=False)
    if bare.returncode != 0:
        pytest.skip(f"no i386 emulation on this kernel (int 0x80 unfiltered: {bare.returncode})")
    bpf = tmp_path / "default.bpf"
    bpf.write_bytes(errno_variant("default").bpf)
    filtered = subprocess.run([str(int80_probe), str(bpf)], check=False)
    assert filtered.returncode == -signal.SIGSYS


def test_notify_filter_with_a_listener() -> None:
    """The real default filter: uname is notified; the parent answers it through
    the child's listener (taken with pidfd_getfd); host calls need no answer."""
    compiled = pc.compile_profile(pc.load_profile("default"))
    assert compiled.needs_listener
    nr_uname = NR["uname"]
    assert compiled.routing[nr_uname] == "info.uname"
    ready_r, ready_w = os.pipe()
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(ready_r)
            os.close(rfd)
            listener = kernel.seccomp_load_bpf(
                compiled.bpf, kernel.SECCOMP_FILTER_FLAG_NEW_LISTENER
            )
            os.write(ready_w, str(listener).encode())
            result = {"getppid": raw(NR["getppid"]), "uname": raw(nr_uname, 0)}
            os.write(wfd, json.dumps(result).encode())
        except BaseException:
            code = 3
        os._exit(code)
    os.close(ready_w)
    os.close(wfd)
    try:
        target = int(os.read(ready_r, 32))
        pidfd = kernel.pidfd_open(pid)
        listener = kernel.pidfd_getfd(pidfd, target)
        # The child's interpreter may make other routed calls before uname
        # (they block until answered): answer those ENOSYS and keep serving
        # until uname arrives.
        deadline = time.monotonic() + 20
        while True:
            if not select.select([listener], [], [], max(0.0, deadline - time.monotonic()))[0]:
                os.kill(pid, signal.SIGKILL)
                pytest.fail("no uname notification within 20 s")
            notif = kernel.notif_recv(listener)
            notif_id, _, _, nr, arch = notif[:5]
            if nr == nr_uname:
                kernel.notif_send(listener, notif_id, 0, -errno.EHOSTDOWN)
                break
            kernel.notif_send(listener, notif_id, 0, -errno.ENOSYS)
        os.close(listener)
        os.close(pidfd)
        out = json.loads(os.read(rfd, 4096))
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(rfd)
    assert (nr, arch) == (nr_uname, kernel.AUDIT_ARCH_X86_64)
    assert out == {"getppid": os.getpid(), "uname": -errno.EHOSTDOWN}
    assert os.waitstatus_to_exitcode(status) == 0


def test_compatibility_doc_is_current() -> None:
    from pysandbox.policies.report import compatibility_markdown

    doc = REPO / "docs" / "compatibility.md"
    assert doc.read_text() == compatibility_markdown(), "docs/compatibility.md is stale: make docs"


def test_cli_syscalls_json() -> None:
    code = "from pysandbox.oci.cli import main; raise SystemExit(main())"
    proc = subprocess.run(
        [sys.executable, "-c", code, "syscalls", "--profile", "ci", "--format", "json"],
        capture_output=True,
        check=True,
    )
    rows = json.loads(proc.stdout)
    assert len(rows) == len(table.all_syscalls())
    by = {r["name"]: r for r in rows}
    assert by["ptrace"]["disposition"] == "deny" and by["ptrace"]["errno"] == "EPERM"
    assert by["openat"]["disposition"] == "sentry" and by["openat"]["handler"] == "fs.openat"
    assert by["socket"]["constraint"].startswith("allowed if arg0 in {AF_UNIX}")


def test_cli_syscalls_table_and_bad_profile() -> None:
    code = "from pysandbox.oci.cli import main; raise SystemExit(main())"
    ok = subprocess.run(
        [sys.executable, "-c", code, "syscalls", "-p", "strict"], capture_output=True, text=True
    )
    assert ok.returncode == 0
    lines = ok.stdout.splitlines()
    assert lines[0].split()[:4] == ["NR", "NAME", "AREA", "DISPOSITION"]
    assert len(lines) == 1 + len(table.all_syscalls())
    assert any(line.split()[:4] == ["39", "getpid", "process", "sentry"] for line in lines)
    bad = subprocess.run(
        [sys.executable, "-c", code, "syscalls", "-p", "nope"], capture_output=True, text=True
    )
    assert bad.returncode == 1 and "no such profile" in bad.stderr
