"""Escape attempts from inside real sandboxed containers (``--sandbox sentry``).

One static C probe (probes/escape.c, compiled once per module) makes each
attempt and prints ``NAME RETURN ERRNO [DETAIL...]`` per attempt. Every attempt
must fail without harm under pysandbox. Most are run a second time under runc
with the same config minus ``linux.seccomp``: there the attack reaches the
kernel and gets past its permission check (or succeeds), which proves the probe
is a real attack and that the refusal under pysandbox is pysandbox's doing.

The probe's arguments are chosen so that a permitted call does nothing that
lasts: bogus module images, kexec with bad flags, reboot with a bad magic, a
tmpfs over /tmp in the container's own mount namespace, a read-only mapping
for process_vm_writev.

Each group of attempts runs in one container per runtime (module-scoped
fixtures), and parametrised tests assert per attempt: the whole file takes a
few seconds. Lines ``NAME_status exit CODE`` / ``NAME_status signal SIGNAME``
report how a forked child of the probe ended.
"""

from __future__ import annotations

import copy
import json
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci.specgen import default_spec
from tests.conftest import ID_PREFIX, Runner, wait_for
from tests.integration.inside import mine_left

SENTRY = ("--sandbox", "sentry")
PROBES = Path(__file__).resolve().parent / "probes"
PROBE_IN_ROOTFS = "/escape"
RELEASE = "4.4.0"  # the kernel release the sentry reports (syscalls/info.py)

# Capabilities that let the kernel's own permission check pass for the denied
# calls: under runc (no seccomp) the attack then goes through, under pysandbox
# the filter refuses it even so.
PRIVILEGED = (
    "CAP_SYS_ADMIN",
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SYS_MODULE",
    "CAP_SYS_BOOT",
    "CAP_DAC_READ_SEARCH",
    "CAP_SYSLOG",
)
CAP_SETS = ("bounding", "effective", "permitted")


@dataclass(frozen=True)
class Attempt:
    """One line of the probe: NAME RETURN ERRNO [DETAIL...] (for a status line,
    ``ret`` is "exit" or "signal" and ``err`` the code or signal name)."""

    ret: str
    err: str
    detail: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.err == "-"

    def __str__(self) -> str:
        return " ".join((self.ret, self.err, *self.detail))


@dataclass(frozen=True)
class Outcome:
    """What one container printed, by attempt name, and how it ended."""

    lines: dict[str, Attempt]
    stdout: str
    stderr: str
    returncode: int

    def __getitem__(self, name: str) -> Attempt:
        assert name in self.lines, (
            f"the probe printed no {name!r} line (exit {self.returncode})\n"
            f"stdout:\n{self.stdout}\nstderr:\n{self.stderr}"
        )
        return self.lines[name]


def parse(res: subprocess.CompletedProcess[str]) -> Outcome:
    lines: dict[str, Attempt] = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            lines[parts[0]] = Attempt(parts[1], parts[2], tuple(parts[3:]))
    return Outcome(lines, res.stdout, res.stderr, res.returncode)


# --- the probe and the containers ----------------------------------------------------


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """probes/escape.c, compiled once (static: the busybox rootfs has no libc)."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.fail("gcc is needed to build the escape probe (apt-get install gcc libc6-dev)")
    exe = tmp_path_factory.mktemp("probe") / "escape"
    res = subprocess.run(
        [gcc, "-static", "-O1", "-Wall", "-o", str(exe), str(PROBES / "escape.c")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, f"gcc failed:\n{res.stderr}"
    return exe


def runc_binary() -> str:
    found = shutil.which("runc") or ("/usr/sbin/runc" if Path("/usr/sbin/runc").exists() else None)
    if found is None:
        pytest.fail("runc is needed to show that each attack is real without the sandbox")
    return found


def configure(
    config: dict[str, Any],
    argv: list[str],
    *,
    add_caps: tuple[str, ...] = (),
    drop_caps: tuple[str, ...] = (),
    host_pid: bool = False,
) -> dict[str, Any]:
    """A copy of ``config`` that runs the probe with ``argv``."""
    config = copy.deepcopy(config)
    config["process"]["args"] = [PROBE_IN_ROOTFS, *argv]
    caps = config["process"]["capabilities"]
    for kind in CAP_SETS:
        kept = [c for c in caps.get(kind, []) if c not in drop_caps]
        caps[kind] = kept + [c for c in add_caps if c not in kept]
    if host_pid:
        namespaces = config["linux"]["namespaces"]
        config["linux"]["namespaces"] = [ns for ns in namespaces if ns["type"] != "pid"]
    return config


def install(bundle: Path, rootfs: Path, probe: Path, config: dict[str, Any]) -> None:
    """A bundle at ``bundle``: a copy of ``rootfs`` with the probe, and ``config``."""
    if not (bundle / "rootfs").exists():
        shutil.copytree(rootfs, bundle / "rootfs", symlinks=True)
    shutil.copy2(probe, bundle / "rootfs" / PROBE_IN_ROOTFS.lstrip("/"))
    (bundle / "config.json").write_text(json.dumps(config, indent=2))


def run_sandboxed(runtime: Runner, bundle: Path, cid: str) -> Outcome:
    res = runtime(*SENTRY, "run", "--bundle", str(bundle), cid, timeout=60)
    out = parse(res)
    assert res.returncode == 0, f"probe exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    return out


def run_runc(tmp: Path, rootfs: Path, probe: Path, config: dict[str, Any]) -> Outcome:
    """The same probe and config under runc, without any seccomp filter."""
    runc = runc_binary()
    config = copy.deepcopy(config)
    config["linux"].pop("seccomp", None)
    bundle = tmp / "runc-bundle"
    bundle.mkdir(exist_ok=True)
    install(bundle, rootfs, probe, config)
    root = str(tmp / "runc-state")
    cid = f"{ID_PREFIX}runc-{uuid.uuid4().hex[:8]}"
    try:
        res = subprocess.run(
            [runc, "--root", root, "run", "--bundle", str(bundle), cid],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        subprocess.run([runc, "--root", root, "delete", "--force", cid], capture_output=True)
    out = parse(res)
    assert res.returncode == 0, f"runc: probe exited {res.returncode}\n{res.stdout}\n{res.stderr}"
    return out


@dataclass(frozen=True)
class Runs:
    """One probe run under pysandbox and the same under runc (no seccomp)."""

    sandbox: Outcome
    runc: Outcome


def both(
    tmp: Path, rootfs: Path, probe: Path, config: dict[str, Any], *, runc: bool = True
) -> Runs:
    """Run under pysandbox (own state root under ``tmp``), then under runc."""
    runtime = Runner(tmp / "state")
    cid = ID_PREFIX + uuid.uuid4().hex[:10]
    bundle = tmp / "bundle"
    bundle.mkdir()
    install(bundle, rootfs, probe, config)
    try:
        sandbox = run_sandboxed(runtime, bundle, cid)
    finally:
        left = mine_left(tmp, cid)
        if left:
            runtime("delete", "--force", cid)
    assert not left, f"the sandboxed probe left things behind: {left}"
    empty = Outcome({}, "", "", 0)
    return Runs(sandbox, run_runc(tmp, rootfs, probe, config) if runc else empty)


def base_config() -> dict[str, Any]:
    config: dict[str, Any] = default_spec(["true"], terminal=False)
    return config


# --- calls the profile denies --------------------------------------------------------

# name: (errno under pysandbox, what runc without seccomp and with the same
# capabilities gives). "ok" is success (a return >= 0); an errno there is one
# the kernel returns only after its permission check passed, or ENOSYS where
# this kernel lacks the feature (CONFIG_MODULES, CONFIG_KEXEC): then the
# sandbox's different errno still shows that the filter answered, not the kernel.
DENIED: dict[str, tuple[str, frozenset[str]]] = {
    "io_uring_setup": ("EPERM", frozenset({"ok"})),
    "bpf": ("EPERM", frozenset({"ok"})),
    "userfaultfd": ("EPERM", frozenset({"ok"})),
    "keyctl": ("EPERM", frozenset({"ok"})),
    "add_key": ("EPERM", frozenset({"ENODEV"})),
    "mount": ("EPERM", frozenset({"ok"})),
    "umount2": ("EPERM", frozenset({"ok"})),
    "fsopen": ("EPERM", frozenset({"ok"})),
    "open_by_handle_at": ("EPERM", frozenset({"EINVAL"})),
    "name_to_handle_at": ("EOPNOTSUPP", frozenset({"EOVERFLOW"})),
    "kexec_load": ("EPERM", frozenset({"EINVAL", "ENOSYS"})),
    "kexec_file_load": ("EPERM", frozenset({"EINVAL", "ENOSYS"})),
    "init_module": ("EPERM", frozenset({"ENOEXEC", "ENOSYS"})),
    "finit_module": ("EPERM", frozenset({"EINVAL", "ENOSYS"})),
    "delete_module": ("EPERM", frozenset({"ENOENT", "ENOSYS"})),
    "perf_event_open": ("EPERM", frozenset({"ok"})),
    "setns": ("EPERM", frozenset({"ok"})),
    "clone_newuser": ("EPERM", frozenset({"ok"})),
    "clone_newns": ("EPERM", frozenset({"ok"})),
    "clone3": ("ENOSYS", frozenset({"ok"})),
    "reboot": ("EPERM", frozenset({"EINVAL"})),
    "syslog": ("EPERM", frozenset({"ok"})),
}


@pytest.fixture(scope="module")
def denied_runs(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path, probe: Path
) -> Runs:
    config = configure(base_config(), ["denied"], add_caps=PRIVILEGED)
    return both(tmp_path_factory.mktemp("denied"), busybox_rootfs, probe, config)


@pytest.mark.parametrize("name", list(DENIED))
def test_denied_call_is_refused(denied_runs: Runs, name: str) -> None:
    want = DENIED[name][0]
    got = denied_runs.sandbox[name]
    assert (got.ret, got.err) == ("-1", want), (
        f"{name} inside pysandbox (with {', '.join(PRIVILEGED)}): got {got}, want -1 {want}"
    )


@pytest.mark.parametrize("name", list(DENIED))
def test_denied_call_is_a_real_attack_under_runc(denied_runs: Runs, name: str) -> None:
    allowed = DENIED[name][1]
    got = denied_runs.runc[name]
    assert ("ok" if got.ok else got.err) in allowed, (
        f"{name} under runc without seccomp (same capabilities): got {got}, "
        f"want one of {sorted(allowed)}: the probe would not prove anything"
    )


def test_sandbox_still_serves_after_the_denied_calls(denied_runs: Runs) -> None:
    got = denied_runs.sandbox["uname"]
    assert got.ok and got.detail == (RELEASE,), f"uname after the attempts: {got}"


# --- user namespaces, seccomp filters, other ABIs (docker's default capabilities) -----


@pytest.fixture(scope="module")
def unprivileged_runs(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path, probe: Path
) -> Runs:
    config = configure(base_config(), ["userns", "seccomp", "abi"])
    return both(tmp_path_factory.mktemp("unprivileged"), busybox_rootfs, probe, config)


USERNS = ("unshare_user_uts", "sethostname_user_uts", "unshare_user", "unshare_uts_mnt")
# Without CAP_SYS_ADMIN and without a user namespace, these stay refused too.
USERNS_THEN = ("sethostname", "mount")


@pytest.mark.parametrize("name", USERNS + USERNS_THEN)
def test_user_namespace_cannot_regain_capabilities(unprivileged_runs: Runs, name: str) -> None:
    got = unprivileged_runs.sandbox[name]
    assert (got.ret, got.err) == ("-1", "EPERM"), f"{name} inside pysandbox: got {got}"


def test_hostname_unchanged_after_the_user_namespace_attempts(unprivileged_runs: Runs) -> None:
    got = unprivileged_runs.sandbox
    for child in ("unshare_user_uts", "userns"):
        status = got[f"{child}_status"]
        assert (status.ret, status.err) == ("exit", "0"), f"{child} child: {status}"
    assert got["nodename"].detail == ("pysandbox",), f"hostname changed: {got['nodename']}"


def test_user_namespace_escalation_is_real_under_runc(unprivileged_runs: Runs) -> None:
    got = unprivileged_runs.runc
    # A new user namespace gives every capability back: a UTS and a mount
    # namespace of its own, sethostname and mount work there.
    for name in USERNS + USERNS_THEN:
        assert got[name].ok, f"{name} under runc without seccomp: {got[name]}"


def test_no_second_seccomp_listener(unprivileged_runs: Runs) -> None:
    got = unprivileged_runs.sandbox["seccomp_new_listener"]
    assert got.ret == "-1", f"seccomp(SECCOMP_FILTER_FLAG_NEW_LISTENER) installed: {got}"
    assert got.err in ("EPERM", "EBUSY"), f"seccomp(NEW_LISTENER): {got}"
    status = unprivileged_runs.sandbox["seccomp_new_listener_status"]
    assert (status.ret, status.err) == ("exit", "0"), f"the child did not exit cleanly: {status}"


def test_second_seccomp_listener_is_real_under_runc(unprivileged_runs: Runs) -> None:
    got = unprivileged_runs.runc["seccomp_new_listener"]
    assert got.ok, f"seccomp(NEW_LISTENER) under runc without seccomp: {got}"


def test_ret_trace_filter_does_not_loosen_the_sandbox(unprivileged_runs: Runs) -> None:
    got = unprivileged_runs.sandbox
    # The filter may or may not install; the sandbox's answers win either way.
    assert got["seccomp_ret_trace"].err in ("-", "EPERM"), got["seccomp_ret_trace"]
    keyctl = got["trace_keyctl"]
    assert (keyctl.ret, keyctl.err) == ("-1", "EPERM"), f"keyctl after RET_TRACE: {keyctl}"
    uname = got["trace_uname"]
    assert uname.ok and uname.detail == (RELEASE,), f"uname after RET_TRACE: {uname}"
    status = got["seccomp_ret_trace_status"]
    assert (status.ret, status.err) == ("exit", "0"), f"the child did not exit cleanly: {status}"


def test_ret_trace_filter_takes_effect_under_runc(unprivileged_runs: Runs) -> None:
    got = unprivileged_runs.runc
    # Without a tracer, RET_TRACE makes the call fail with ENOSYS: the filter works.
    assert got["seccomp_ret_trace"].ok, got["seccomp_ret_trace"]
    assert got["trace_keyctl"].err == "ENOSYS", got["trace_keyctl"]
    assert got["trace_uname"].err == "ENOSYS", got["trace_uname"]


@pytest.mark.parametrize("name", ["int80_getpid", "int80_keyctl", "x32_getpid"])
def test_foreign_abi_is_killed(unprivileged_runs: Runs, name: str) -> None:
    got = unprivileged_runs.sandbox
    status = got[f"{name}_status"]
    assert (status.ret, status.err) == ("signal", "SIGSYS"), (
        f"{name}: the process must be killed by SIGSYS (arch check), got {status}"
    )
    assert name not in got.lines, f"{name} returned to its caller: {got.lines[name]}"


def test_foreign_abi_reaches_the_kernel_under_runc(unprivileged_runs: Runs) -> None:
    got = unprivileged_runs.runc
    for name in ("int80_getpid", "int80_keyctl", "x32_getpid"):
        assert got[f"{name}_status"].ret == "exit", f"{name}: {got[f'{name}_status']}"
    # i386 getpid and keyctl are served by the host kernel...
    assert got["int80_getpid"].ok and int(got["int80_getpid"].ret) > 0, got["int80_getpid"]
    assert got["int80_keyctl"].ok, f"i386 keyctl without seccomp: {got['int80_keyctl']}"
    # ...x32 only where the kernel was built with it.
    assert got["x32_getpid"].ok or got["x32_getpid"].err == "ENOSYS", got["x32_getpid"]


def test_sandbox_still_serves_after_the_foreign_abis(unprivileged_runs: Runs) -> None:
    got = unprivileged_runs.sandbox["uname"]
    assert got.ok and got.detail == (RELEASE,), f"uname after the attempts: {got}"


# --- a process outside the container (the host's pid namespace is shared) ------------


def start_host_sleep() -> tuple[subprocess.Popen[bytes], int]:
    """A `sleep` on the host and the start of its ELF header mapping (read-only)."""
    proc = subprocess.Popen(["sleep", "60"])

    def elf_header() -> int | None:
        # Popen may return before exec has mapped the binary (vfork).
        for line in Path(f"/proc/{proc.pid}/maps").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[5].endswith("/sleep") and int(fields[2], 16) == 0:
                return int(fields[0].split("-", 1)[0], 16)
        return None

    try:
        addr: int = wait_for(elf_header, timeout=5)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, addr


@dataclass(frozen=True)
class OutsideRuns(Runs):
    pid: int
    alive_after: bool  # the host process survived the sandboxed attempts


@pytest.fixture(scope="module")
def outside_runs(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path, probe: Path
) -> Iterator[OutsideRuns]:
    proc, addr = start_host_sleep()
    try:
        pid = proc.pid
        # CAP_SYS_PTRACE and CAP_KILL: the kernel alone would let every attempt
        # through; no pid namespace: the host's processes are visible.
        config = configure(
            base_config(),
            ["outside", str(pid), f"{addr:x}"],
            add_caps=("CAP_SYS_PTRACE", "CAP_KILL"),
            host_pid=True,
        )
        runs = both(tmp_path_factory.mktemp("outside"), busybox_rootfs, probe, config)
        alive = proc.poll() is None
        yield OutsideRuns(runs.sandbox, runs.runc, pid, alive)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


OUTSIDE = (
    "kill",
    "tgkill",
    "pidfd_open",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace_attach",
    "ptrace_seize",
)
# Under runc without seccomp these succeed (process_vm_* are checked apart).
OUTSIDE_OK = ("kill", "tgkill", "pidfd_open", "pidfd_send_signal", "ptrace_attach", "ptrace_seize")


@pytest.mark.parametrize("name", OUTSIDE)
def test_process_outside_the_container_is_out_of_reach(
    outside_runs: OutsideRuns, name: str
) -> None:
    got = outside_runs.sandbox[name]
    assert got.ret == "-1" and got.err in ("ESRCH", "EPERM"), (
        f"{name} on host pid {outside_runs.pid} from pysandbox (with CAP_SYS_PTRACE, "
        f"host pid namespace): got {got}, want -1 ESRCH or EPERM"
    )
    if name == "pidfd_open":
        assert "pidfd_send_signal" not in outside_runs.sandbox.lines


def test_process_outside_the_container_survives(outside_runs: OutsideRuns) -> None:
    assert outside_runs.alive_after, f"host pid {outside_runs.pid} died"


def test_process_outside_the_container_is_reachable_under_runc(
    outside_runs: OutsideRuns,
) -> None:
    plain = outside_runs.runc
    for name in OUTSIDE_OK:
        assert plain[name].ok, f"{name} under runc without seccomp: {plain[name]}"
    # Reads the host process's ELF header; writing meets the read-only mapping.
    readv = plain["process_vm_readv"]
    assert (readv.ret, readv.detail) == ("8", ("7f454c46",)), f"process_vm_readv: {readv}"
    assert plain["process_vm_writev"].err == "EFAULT", plain["process_vm_writev"]


# --- a thread rewrites the argument while the sentry handles the call ----------------

RACE_ROUNDS = 2000


def test_racing_threads_do_not_raise_limits_or_garble_names(
    tmp_path: Path, busybox_rootfs: Path, probe: Path
) -> None:
    # CAP_SYS_ADMIN for sethostname; no CAP_SYS_RESOURCE, so the hard limit
    # may only go down.
    config = configure(
        base_config(),
        ["race", str(RACE_ROUNDS)],
        add_caps=("CAP_SYS_ADMIN",),
        drop_caps=("CAP_SYS_RESOURCE",),
    )
    out = both(tmp_path, busybox_rootfs, probe, config, runc=False).sandbox
    before = out["rlimit_before"]
    race = out["rlimit_race"]
    after = out["rlimit_after"]
    hard = int(before.err)  # rlimit_before SOFT HARD
    ok, refused, other, highest = race.ret, race.err, race.detail[0], race.detail[1]
    assert int(ok) + int(refused) == RACE_ROUNDS and other == "0", f"rlimit_race {race}"
    assert int(ok) > 0, f"the legal prlimit64 never succeeded: {race}"
    assert int(highest) <= hard, f"hard RLIMIT_NOFILE rose to {highest} (was {hard})"
    assert int(after.err) <= hard, f"hard RLIMIT_NOFILE after the race: {after} (was {hard})"

    names = out["hostname_race"]  # A B MIXED FAILED BAD
    a, b = int(names.ret), int(names.err)
    mixed, failed, bad = (int(x) for x in names.detail)
    assert failed == 0 and bad == 0, f"sethostname under a racing writer: {names}"
    assert a + b + mixed == RACE_ROUNDS, f"hostname_race {names}"
    # The name is copied once: each result is one of the two names (8-byte
    # aligned stores; a copy that tore them would show up as mixed).
    assert mixed == 0, f"hostname mixed from both values {mixed} times: {names}"
