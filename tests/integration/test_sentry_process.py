"""Process and signal calls served by the sentry, in real containers.

One static C probe makes every call with raw syscall(2) and prints
``name return errno [extra...]`` per call. It runs under ``--sandbox sentry``
and under ``--sandbox none`` (plain namespaces and cgroups): wherever the
sandbox must not differ from Linux, the lines must be identical; the few
deliberate differences are asserted on their own. A second mode probes
targets outside the container (host processes, the sentry) from a container
that shares the host's pid namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runner

SENTRY = ("--sandbox", "sentry")
NONE = ("--sandbox", "none")

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/times.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Each line: name, return value, errno name (or -), extra words. */
static long R;
static int E;
#define SYS(...) (errno = 0, R = syscall(__VA_ARGS__), E = errno, (void)E, R)
static void out(const char *name, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#include <stdarg.h>
static void out(const char *name, const char *fmt, ...) {
    printf("%s %ld %s", name, R, R < 0 ? strerrorname_np(E) : "-");
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        putchar(' ');
        vprintf(fmt, ap);
        va_end(ap);
    }
    putchar('\n');
    fflush(stdout);
}

static pid_t sleeper(void) {
    pid_t pid = fork();
    if (pid == 0) {
        for (;;) pause();
    }
    return pid;
}

static void burn(void) {
    volatile unsigned long x = 0;
    for (unsigned long i = 0; i < 60000000UL; i++) x += i;
}

static int basic(void) {
    struct rlimit rl, rl2;
    uint64_t big[2];

    SYS(SYS_getrlimit, RLIMIT_NOFILE, &rl);
    out("getrlimit", "%lu %lu", (unsigned long)rl.rlim_cur, (unsigned long)rl.rlim_max);
    rl2.rlim_cur = 64; rl2.rlim_max = rl.rlim_max;
    SYS(SYS_setrlimit, RLIMIT_NOFILE, &rl2);
    out("setrlimit_lower_soft", NULL);
    SYS(SYS_getrlimit, RLIMIT_NOFILE, &rl2);
    out("getrlimit_after", "%lu %lu", (unsigned long)rl2.rlim_cur, (unsigned long)rl2.rlim_max);
    rl2.rlim_cur = 100; rl2.rlim_max = 50;
    SYS(SYS_setrlimit, RLIMIT_NOFILE, &rl2);
    out("setrlimit_soft_above_hard", NULL);
    SYS(SYS_setrlimit, 99, &rl);
    out("setrlimit_bad_resource", NULL);
    SYS(SYS_getrlimit, 99, &rl2);
    out("getrlimit_bad_resource", NULL);
    SYS(SYS_getrlimit, RLIMIT_NOFILE, (void *)8);
    out("getrlimit_efault", NULL);
    SYS(SYS_setrlimit, RLIMIT_NOFILE, (void *)8);
    out("setrlimit_efault", NULL);
    rl2.rlim_cur = 64; rl2.rlim_max = 1000;
    SYS(SYS_setrlimit, RLIMIT_NOFILE, &rl2);
    out("setrlimit_lower_hard", NULL);
    rl2.rlim_cur = 64; rl2.rlim_max = 2000;
    SYS(SYS_setrlimit, RLIMIT_NOFILE, &rl2);
    out("setrlimit_raise_hard", NULL);
    big[0] = 10; big[1] = ~0ULL; /* above nr_open */
    SYS(SYS_prlimit64, 0, RLIMIT_NOFILE, big, NULL);
    out("prlimit_nofile_infinite", NULL);
    big[0] = 1 << 20; big[1] = 1 << 20;
    SYS(SYS_prlimit64, 0, RLIMIT_CORE, NULL, big);
    out("prlimit_old_core", "%llu %llu", (unsigned long long)big[0], (unsigned long long)big[1]);
    big[0] = 4096; big[1] = 8192;
    SYS(SYS_prlimit64, getpid(), RLIMIT_CORE, big, big);
    out("prlimit_self_set", NULL);
    SYS(SYS_prlimit64, 0, RLIMIT_CORE, NULL, big);
    out("prlimit_self_get", "%llu %llu", (unsigned long long)big[0], (unsigned long long)big[1]);
    SYS(SYS_prlimit64, 99999, RLIMIT_CORE, NULL, big);
    out("prlimit_esrch", NULL);
    pid_t child = sleeper();
    SYS(SYS_prlimit64, child, RLIMIT_CORE, NULL, big);
    out("prlimit_child", "%llu %llu", (unsigned long long)big[0], (unsigned long long)big[1]);

    /* usage and time */
    struct tms t1, t2;
    long c1 = SYS(SYS_times, &t1);
    out("times", NULL);
    burn();
    struct rusage ru;
    SYS(SYS_getrusage, RUSAGE_SELF, &ru);
    out("getrusage_self", "%d %d", ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec > 0,
        ru.ru_maxrss > 0 && ru.ru_minflt > 0);
    SYS(SYS_getrusage, RUSAGE_THREAD, &ru);
    out("getrusage_thread", "%d", ru.ru_maxrss > 0);
    SYS(SYS_getrusage, RUSAGE_CHILDREN, &ru);
    out("getrusage_children", NULL);
    SYS(SYS_getrusage, 5, &ru);
    out("getrusage_bad_who", NULL);
    SYS(SYS_getrusage, RUSAGE_SELF, (void *)8);
    out("getrusage_efault", NULL);
    long c2 = SYS(SYS_times, &t2);
    out("times_monotonic", "%d %d", c2 >= c1 && c1 > 0, t2.tms_utime + t2.tms_stime > 0);
    SYS(SYS_times, NULL);
    out("times_null", "%d", R > 0);
    unsigned cpu = 999, node = 999;
    SYS(SYS_getcpu, &cpu, &node, NULL);
    out("getcpu", "%d %d", cpu < (unsigned)sysconf(_SC_NPROCESSORS_CONF), node < 64);
    SYS(SYS_getcpu, NULL, NULL, NULL);
    out("getcpu_null", NULL);

    /* signals */
    SYS(SYS_kill, child, 0);
    out("kill_child_0", NULL);
    SYS(SYS_kill, 99999, 0);
    out("kill_esrch", NULL);
    SYS(SYS_kill, 0, 0);
    out("kill_group_0", NULL);
    SYS(SYS_tgkill, getpid(), syscall(SYS_gettid), 0);
    out("tgkill_self", NULL);
    SYS(SYS_tkill, syscall(SYS_gettid), 0);
    out("tkill_self", NULL);
    SYS(SYS_tkill, 99999, 0);
    out("tkill_esrch", NULL);
    SYS(SYS_tgkill, 0, 1, 0);
    out("tgkill_einval", NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigaddset(&set, SIGUSR2);
    sigprocmask(SIG_BLOCK, &set, NULL);
    siginfo_t si;
    memset(&si, 0, sizeof si);
    si.si_signo = SIGUSR1;
    si.si_code = SI_QUEUE;
    si.si_pid = getpid();
    si.si_uid = getuid();
    si.si_value.sival_int = 4242;
    SYS(SYS_rt_sigqueueinfo, getpid(), SIGUSR1, &si);
    out("rt_sigqueueinfo_self", NULL);
    siginfo_t got;
    struct timespec ts = {2, 0};
    int s = sigtimedwait(&set, &got, &ts);
    R = s; E = errno;
    out("rt_sigqueueinfo_got", "%d %d", got.si_code == SI_QUEUE, got.si_value.sival_int);
    SYS(SYS_rt_tgsigqueueinfo, getpid(), syscall(SYS_gettid), SIGUSR1, &si);
    out("rt_tgsigqueueinfo_self", NULL);
    s = sigtimedwait(&set, &got, &ts);
    SYS(SYS_kill, child, SIGTERM);
    out("kill_child_term", NULL);
    int status = 0;
    waitpid(child, &status, 0);
    R = WIFSIGNALED(status) ? WTERMSIG(status) : -1000;
    E = 0;
    out("kill_child_delivered", NULL);

    child = sleeper();
    int pidfd = SYS(SYS_pidfd_open, child, 0);
    out("pidfd_open_child", NULL);
    SYS(SYS_pidfd_open, 99999, 0);
    out("pidfd_open_esrch", NULL);
    SYS(SYS_pidfd_send_signal, 0, SIGTERM, NULL, 0);
    out("pidfd_send_signal_ebadf", NULL);
    SYS(SYS_pidfd_send_signal, pidfd, SIGTERM, NULL, 99);
    out("pidfd_send_signal_einval", NULL);
    SYS(SYS_pidfd_send_signal, pidfd, 0, NULL, 0);
    out("pidfd_send_signal_0", NULL);
    SYS(SYS_pidfd_send_signal, pidfd, SIGTERM, NULL, 0);
    out("pidfd_send_signal_child", NULL);
    waitpid(child, &status, 0);
    R = WIFSIGNALED(status) ? WTERMSIG(status) : -1000;
    E = 0;
    out("pidfd_delivered", NULL);
    SYS(SYS_pidfd_send_signal, pidfd, SIGTERM, NULL, 0);
    out("pidfd_send_signal_reaped", NULL);
    close(pidfd);
    int self = syscall(SYS_pidfd_open, getpid(), 0);
    si.si_signo = SIGUSR2;
    si.si_value.sival_int = 77;
    SYS(SYS_pidfd_send_signal, self, SIGUSR2, &si, 0);
    out("pidfd_send_signal_info", NULL);
    memset(&got, 0, sizeof got);
    s = sigtimedwait(&set, &got, &ts);
    R = s; E = errno;
    out("pidfd_info_got", "%d %d", got.si_code == SI_QUEUE, got.si_value.sival_int);
    si.si_code = SI_USER;
    SYS(SYS_pidfd_send_signal, self, SIGUSR2, &si, 0);
    out("pidfd_send_signal_forged_self", NULL);
    sigtimedwait(&set, &got, &(struct timespec){0, 1000000});
    si.si_signo = SIGUSR1;
    si.si_code = SI_QUEUE;
    SYS(SYS_pidfd_send_signal, self, SIGUSR2, &si, 0);
    out("pidfd_send_signal_signo_mismatch", NULL);
    SYS(SYS_pidfd_send_signal, self, SIGUSR2, (void *)8, 0);
    out("pidfd_send_signal_efault", NULL);
    close(self);

    /* tracing */
    child = fork();
    if (child == 0) {
        ptrace(PTRACE_TRACEME, 0, 0, 0);
        raise(SIGSTOP);
        _exit(7);
    }
    waitpid(child, &status, 0);
    R = WIFSTOPPED(status) ? WSTOPSIG(status) : -1000;
    E = 0;
    out("ptrace_traceme_stopped", NULL);
    long val = 0;
    SYS(SYS_ptrace, PTRACE_PEEKUSER, child, 0, &val);
    out("ptrace_peekuser", NULL);
    SYS(SYS_ptrace, PTRACE_CONT, child, 0, 0);
    out("ptrace_cont", NULL);
    waitpid(child, &status, 0);
    R = WIFEXITED(status) ? WEXITSTATUS(status) : -1000;
    E = 0;
    out("ptrace_child_exit", NULL);
    SYS(SYS_ptrace, PTRACE_ATTACH, 99999, 0, 0);
    out("ptrace_attach_esrch", NULL);
    child = sleeper();
    SYS(SYS_ptrace, PTRACE_SEIZE, child, 0, 1 << 21 /* PTRACE_O_SUSPEND_SECCOMP */);
    out("ptrace_seize_suspend_seccomp", NULL);
    SYS(SYS_ptrace, PTRACE_SEIZE, child, 0, 0);
    out("ptrace_seize_child", NULL);
    char word[8] = "abcdefg", dst[8] = {0};
    struct iovec local = {dst, 8}, remote = {word, 8};
    SYS(SYS_process_vm_readv, getpid(), &local, 1, &remote, 1, 0);
    out("process_vm_readv_self", "%s", dst);
    remote.iov_base = (void *)&basic;
    SYS(SYS_process_vm_readv, child, &local, 1, &remote, 1, 0);
    out("process_vm_readv_child", NULL);
    SYS(SYS_process_vm_readv, 99999, &local, 1, &remote, 1, 0);
    out("process_vm_readv_esrch", NULL);
    SYS(SYS_process_vm_writev, 99999, &local, 1, &remote, 1, 0);
    out("process_vm_writev_esrch", NULL);
    kill(child, SIGKILL);
    waitpid(child, &status, 0);

    /* personality, prctl, seccomp */
    SYS(SYS_personality, 0xffffffff);
    out("personality_query", NULL);
    SYS(SYS_personality, 0x0040000 /* ADDR_NO_RANDOMIZE */);
    out("personality_addr_no_randomize", NULL);
    SYS(SYS_personality, 0);
    out("personality_linux", NULL);
    SYS(SYS_prctl, PR_SET_MM, PR_SET_MM_START_CODE, 0, 0, 0);
    out("prctl_set_mm", NULL);
    SYS(SYS_prctl, PR_GET_TIMING, 0, 0, 0, 0);
    out("prctl_get_timing", NULL);
    SYS(SYS_prctl, 9999, 0, 0, 0, 0);
    out("prctl_unknown", NULL);
    SYS(SYS_prctl, PR_SET_SECCOMP, 99, 0, 0, 0);
    out("prctl_seccomp_bad_mode", NULL);
    SYS(SYS_prctl, PR_GET_SECCOMP, 0, 0, 0, 0);
    out("prctl_get_seccomp", NULL);
    unsigned action = SECCOMP_RET_ALLOW;
    SYS(SYS_seccomp, SECCOMP_GET_ACTION_AVAIL, 0, &action);
    out("seccomp_action_avail", NULL);
    SYS(SYS_seccomp, 99, 0, NULL);
    out("seccomp_bad_op", NULL);
    SYS(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 1u << 30, NULL);
    out("seccomp_bad_flags", NULL);
    struct sock_filter allow[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
    struct sock_fprog prog = {1, allow};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    SYS(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
    out("seccomp_new_listener", NULL);
    SYS(SYS_prctl, PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
    out("prctl_set_seccomp_filter", NULL);
    SYS(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog);
    out("seccomp_filter", NULL);
    /* still served after stacking our own filters */
    SYS(SYS_getrlimit, RLIMIT_NOFILE, &rl2);
    out("getrlimit_after_filters", "%lu", (unsigned long)rl2.rlim_cur);
    return 0;
}

/* Targets outside the container (host pids on the command line). */
static int outside(int argc, char **argv) {
    pid_t child = sleeper();
    SYS(SYS_kill, child, 0);
    out("kill_inside", NULL);
    SYS(SYS_prlimit64, child, RLIMIT_CORE, NULL, (uint64_t[2]){0});
    out("prlimit_inside", NULL);
    SYS(SYS_kill, -1, 0);
    out("kill_all", NULL);
    for (int i = 2; i < argc; i++) {
        pid_t pid = atoi(argv[i]);
        char name[64];
        uint64_t lim[2];
        char buf[8];
        struct iovec local = {buf, 8}, remote = {(void *)0x400000, 8};
#define OUT(what) (snprintf(name, sizeof name, "%s_%d", what, i - 2), out(name, NULL))
        SYS(SYS_kill, pid, 0); OUT("kill");
        SYS(SYS_tkill, pid, 0); OUT("tkill");
        SYS(SYS_tgkill, pid, pid, 0); OUT("tgkill");
        SYS(SYS_kill, -pid, 0); OUT("killpg");
        siginfo_t si;
        memset(&si, 0, sizeof si);
        si.si_signo = SIGCONT;
        si.si_code = SI_QUEUE;
        SYS(SYS_rt_sigqueueinfo, pid, SIGCONT, &si); OUT("rt_sigqueueinfo");
        SYS(SYS_ptrace, PTRACE_ATTACH, pid, 0, 0); OUT("ptrace_attach");
        SYS(SYS_process_vm_readv, pid, &local, 1, &remote, 1, 0); OUT("process_vm_readv");
        SYS(SYS_prlimit64, pid, RLIMIT_CORE, NULL, lim); OUT("prlimit");
        int fd = SYS(SYS_pidfd_open, pid, 0); OUT("pidfd_open");
        if (fd >= 0) close(fd);
    }
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "outside") == 0) return outside(argc, argv);
    return basic();
}
"""

# Lines whose values change from run to run: only the errno column is compared.
VARYING = {"times", "times_monotonic", "times_null", "rt_sigqueueinfo_got"}
# Deliberate differences: what the sentry answers (Linux's answer in a comment).
SANDBOX_ONLY = {
    "personality_addr_no_randomize": ["-1", "EPERM"],  # Linux: 0 (Docker's profile: EPERM)
    "personality_linux": ["0", "-"],  # Linux returns the previous persona (the flag above)
    "pidfd_send_signal_forged_self": ["-1", "EPERM"],  # Linux lets a task forge codes to itself
    "seccomp_new_listener": ["-1", "EBUSY"],  # Linux: a listener fd (no filter above ours)
    "prctl_get_seccomp": ["2", "-"],  # SECCOMP_MODE_FILTER: the sandbox's filter
}


@pytest.fixture
def probe(bundle: Bundle, tmp_path: Path) -> Bundle:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed to build the static probe")
    src = tmp_path / "probe.c"
    src.write_text(PROBE_C)
    subprocess.run(
        ["gcc", "-static", "-O1", "-w", "-o", str(bundle.rootfs / "probe"), str(src)], check=True
    )
    return bundle


def _lines(out: str) -> dict[str, list[str]]:
    got: dict[str, list[str]] = {}
    for line in out.splitlines():
        name, *rest = line.split()
        got[name] = rest
    return got


def _run(runtime: Runner, bundle: Bundle, cid: str, flags: tuple[str, ...], *argv: str) -> str:
    bundle.args(*argv)
    res = runtime(*flags, "run", "--bundle", str(bundle.path), cid, timeout=120)
    assert res.returncode == 0, (res.stdout, res.stderr)
    return res.stdout


def test_served_calls_answer_as_linux_does(runtime: Runner, probe: Bundle, cid: str) -> None:
    sandboxed = _lines(_run(runtime, probe, cid, SENTRY, "/probe"))
    plain = _lines(_run(runtime, probe, cid + "n", NONE, "/probe"))
    assert set(sandboxed) == set(plain), (sandboxed, plain)
    for name, want in SANDBOX_ONLY.items():
        assert sandboxed[name] == want, (name, sandboxed[name], plain[name])
    for name in VARYING:
        assert sandboxed[name][1:] == plain[name][1:], (name, sandboxed[name], plain[name])
    differ = {
        name: (sandboxed[name], plain[name])
        for name in plain
        if name not in VARYING and name not in SANDBOX_ONLY and sandboxed[name] != plain[name]
    }
    assert not differ, differ
    # What Linux answers, so the comparison above cannot pass vacuously.
    assert sandboxed["setrlimit_raise_hard"] == ["-1", "EPERM"]
    assert sandboxed["setrlimit_soft_above_hard"] == ["-1", "EINVAL"]
    assert sandboxed["getrlimit_efault"] == ["-1", "EFAULT"]
    assert sandboxed["prlimit_nofile_infinite"] == ["-1", "EPERM"]
    assert sandboxed["prlimit_self_get"] == ["0", "-", "4096", "8192"]
    assert sandboxed["prlimit_child"] == ["0", "-", "4096", "8192"]
    assert sandboxed["getrusage_self"] == ["0", "-", "1", "1"]
    assert sandboxed["getrusage_bad_who"] == ["-1", "EINVAL"]
    assert sandboxed["times_monotonic"][2:] == ["1", "1"]
    assert sandboxed["getcpu"] == ["0", "-", "1", "1"]
    assert sandboxed["kill_child_delivered"] == ["15", "-"]
    assert sandboxed["kill_esrch"] == ["-1", "ESRCH"]
    assert sandboxed["rt_sigqueueinfo_got"][2:] == ["1", "4242"]
    assert sandboxed["pidfd_delivered"] == ["15", "-"]
    assert sandboxed["pidfd_info_got"] == ["12", "-", "1", "77"]
    assert sandboxed["ptrace_child_exit"] == ["7", "-"]
    assert sandboxed["ptrace_seize_child"] == ["0", "-"]
    assert sandboxed["process_vm_readv_self"] == ["8", "-", "abcdefg"]
    assert sandboxed["prctl_set_mm"] == ["-1", "EPERM"]
    assert sandboxed["prctl_unknown"] == ["-1", "EINVAL"]
    assert sandboxed["seccomp_filter"] == ["0", "-"]
    assert sandboxed["getrlimit_after_filters"] == ["0", "-", "64"]


def _sentry_of(runtime: Runner, cid: str) -> int:
    state = json.loads((runtime.root / cid / "state.json").read_text())
    return int(state["sentry_pid"])


def _share_host_pidns(bundle: Bundle) -> None:
    linux = bundle.config["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "pid"]
    bundle.write()


def test_host_processes_are_out_of_reach(runtime: Runner, probe: Bundle, cid: str) -> None:
    """A container in the host's pid namespace: its own tasks are reachable,
    host processes are ESRCH (kill -1 EPERM), though Linux would let its root
    signal, trace and read them."""
    _share_host_pidns(probe)
    host = subprocess.Popen(["sleep", "300"])
    try:
        targets = (str(host.pid), str(os.getpid()))
        out = _lines(_run(runtime, probe, cid, SENTRY, "/probe", "outside", *targets))
        plain = _lines(_run(runtime, probe, cid + "n", NONE, "/probe", "outside", *targets))
    finally:
        host.kill()
        host.wait()
    assert out["kill_inside"] == ["0", "-"]
    assert out["prlimit_inside"] == ["0", "-"]
    assert out["kill_all"] == ["-1", "EPERM"]
    assert plain["kill_0"] == ["0", "-"]  # without the sentry, root in the container reaches them
    assert plain["ptrace_attach_0"] == ["0", "-"] or plain["ptrace_attach_0"][1] == "EPERM"
    for i in (0, 1):
        for call in (
            "kill",
            "tkill",
            "tgkill",
            "rt_sigqueueinfo",
            "ptrace_attach",
            "process_vm_readv",
            "prlimit",
            "pidfd_open",
        ):
            assert out[f"{call}_{i}"] == ["-1", "ESRCH"], (call, i, out)
        assert out[f"killpg_{i}"][1] in ("ESRCH", "EPERM"), out


def test_the_sentry_is_out_of_reach(runtime: Runner, probe: Bundle, cid: str) -> None:
    """The sentry sits in the container's cgroup, but is never the container's."""
    _share_host_pidns(probe)
    probe.args("sleep", "100")
    runtime(*SENTRY, "run", "-d", "--bundle", str(probe.path), cid, check=True)
    try:
        sentry = _sentry_of(runtime, cid)
        res = runtime("exec", cid, "/probe", "outside", str(sentry))
        assert res.returncode == 0, res.stderr
        out = _lines(res.stdout)
        assert out["kill_inside"] == ["0", "-"]
        for call in ("kill", "tkill", "ptrace_attach", "process_vm_readv", "prlimit", "pidfd_open"):
            assert out[f"{call}_0"] == ["-1", "ESRCH"], (call, out)
    finally:
        runtime("delete", "--force", cid, check=True)
