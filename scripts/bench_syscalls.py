"""Syscall cost inside the container, for `make bench`.

A tiny static C probe times N calls each of uname (served by the sentry under
the default sentry), getppid (a host call, allowed by the filter) and keyctl (denied
with EPERM by our default profile) with clock_gettime(CLOCK_MONOTONIC), and prints
ns per call. It is compiled with gcc at bench time into build/ (no binary is kept
in the tree), copied into a busybox bundle and run with `run` under each runtime,
interleaved, for a few rounds; the medians are reported.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "build" / "pkgroot"))

from pysandbox.oci.bundle import make_busybox_rootfs  # noqa: E402
from pysandbox.oci.specgen import default_spec  # noqa: E402

WORK = REPO / "build" / "bench"
PYSANDBOX = str(REPO / ".venv" / "bin" / "pysandbox")
CALLS = ("uname", "getppid", "keyctl")
ROUNDS = 5

PROBE_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

static long long now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long do_uname(void) {
    struct utsname u;
    return syscall(SYS_uname, &u);
}
static long do_getppid(void) { return syscall(SYS_getppid); }
/* KEYCTL_GET_KEYRING_ID (0) of the session keyring (-3), no create. */
static long do_keyctl(void) { return syscall(SYS_keyctl, 0, -3, 0, 0, 0); }

static void bench(const char *name, long (*fn)(void), long n) {
    long warm = n / 10 + 1, i;
    int err = 0;
    for (i = 0; i < warm; i++) fn();
    errno = 0;
    long long t0 = now();
    for (i = 0; i < n; i++) {
        if (fn() < 0) err = errno;
    }
    long long t1 = now();
    printf("%s %.1f %d\n", name, (double)(t1 - t0) / (double)n, err);
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10000;
    if (n < 1) n = 1;
    bench("uname", do_uname, n);
    bench("getppid", do_getppid, n);
    bench("keyctl", do_keyctl, n);
    return 0;
}
"""

# The floor of the seccomp-notify platform: the same uname round trip served by
# a minimal C server (RECV, process_vm_writev of the answer, SEND, with
# SYNC_WAKE_UP as the sentry sets it), no container, no Python. What the sentry
# adds to a served call is its figure minus this one.
FLOOR_C = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#ifndef SECCOMP_IOCTL_NOTIF_SET_FLAGS
#define SECCOMP_IOCTL_NOTIF_SET_FLAGS SECCOMP_IOW(4, __u64)
#endif
#ifndef SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP
#define SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP 1
#endif

static long long now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void send_fd(int sock, int fd) {
    char ctl[CMSG_SPACE(sizeof(int))];
    struct iovec io = {"f", 1};
    struct msghdr m = {0};
    m.msg_iov = &io; m.msg_iovlen = 1; m.msg_control = ctl; m.msg_controllen = sizeof ctl;
    struct cmsghdr *h = CMSG_FIRSTHDR(&m);
    h->cmsg_level = SOL_SOCKET; h->cmsg_type = SCM_RIGHTS; h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof fd);
    if (sendmsg(sock, &m, 0) < 0) _exit(2);
}

static int recv_fd(int sock) {
    char ctl[CMSG_SPACE(sizeof(int))], b;
    struct iovec io = {&b, 1};
    struct msghdr m = {0};
    m.msg_iov = &io; m.msg_iovlen = 1; m.msg_control = ctl; m.msg_controllen = sizeof ctl;
    if (recvmsg(sock, &m, 0) <= 0) exit(2);
    int fd;
    memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof fd);
    return fd;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10000;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) return 1;
    pid_t child = fork();
    if (child == 0) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_uname, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = {4, f};
        prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
        int fd = syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER,
                         SECCOMP_FILTER_FLAG_NEW_LISTENER, &prog);
        if (fd < 0) _exit(3);
        send_fd(sv[0], fd);
        close(fd);
        char go;
        if (read(sv[0], &go, 1) != 1) _exit(4);
        struct utsname u;
        for (long i = 0; i < n / 10 + 1; i++) uname(&u);
        long long t0 = now();
        for (long i = 0; i < n; i++) uname(&u);
        printf("floor_uname %.1f\n", (double)(now() - t0) / (double)n);
        fflush(stdout);
        _exit(0);
    }
    int fd = recv_fd(sv[1]);
    ioctl(fd, SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP);
    if (write(sv[1], "g", 1) != 1) return 1;
    struct utsname answer;
    memset(&answer, 0, sizeof answer);
    strcpy(answer.sysname, "Linux");
    for (;;) {
        struct seccomp_notif req;
        memset(&req, 0, sizeof req);
        if (ioctl(fd, SECCOMP_IOCTL_NOTIF_RECV, &req) < 0) {
            if (errno == EINTR) continue;
            break; /* ENOENT: the child is gone */
        }
        struct iovec local = {&answer, sizeof answer};
        struct iovec remote = {(void *)req.data.args[0], sizeof answer};
        struct seccomp_notif_resp resp = {.id = req.id};
        if (process_vm_writev(req.pid, &local, 1, &remote, 1, 0) != (ssize_t)sizeof answer)
            resp.error = -EFAULT;
        ioctl(fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
    }
    int status;
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
"""

Runner = Callable[[str], list[str]]


def build_probe() -> Path:
    """Compile the probe into build/bench/ (gcc -O2 -static)."""
    WORK.mkdir(parents=True, exist_ok=True)
    src = WORK / "syscall_probe.c"
    out = WORK / "syscall_probe"
    if not src.exists() or src.read_text() != PROBE_C:
        src.write_text(PROBE_C)
    if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["gcc", "-O2", "-static", "-o", str(out), str(src)], check=True)
    return out


def make_bundle(probe: Path, n_calls: int) -> Path:
    bundle = WORK / "syscalls-bundle"
    rootfs = bundle / "rootfs"
    make_busybox_rootfs(rootfs)
    shutil.copy2(probe, rootfs / "probe")
    spec = default_spec(["/probe", str(n_calls)], terminal=False)
    spec["ociVersion"] = "1.0.2"  # crun 1.8 rejects versions it does not know
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))
    return bundle


DOCKER_SPEC = REPO.parent / "shared" / "reference" / "specs" / "docker-run-config.json"
RUNC_SECCOMP = "runc + docker's seccomp"


def make_seccomp_bundle(bundle: Path) -> Path | None:
    """The probe bundle with docker's default seccomp profile (from the config.json
    docker really generates, ../shared/reference): runc as docker users run it,
    with the filter whose entry cost every seccomp sandbox also pays."""
    if not DOCKER_SPEC.exists():
        return None
    profile = json.loads(DOCKER_SPEC.read_text())["linux"]["seccomp"]
    out = WORK / "syscalls-bundle-seccomp"
    out.mkdir(parents=True, exist_ok=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"]["path"] = str(bundle / "rootfs")
    spec["linux"]["seccomp"] = profile
    (out / "config.json").write_text(json.dumps(spec, indent=2))
    return out


def runtimes(bundle: Path) -> dict[str, Runner]:
    b = str(bundle)

    def root(name: str) -> str:
        return str(WORK / f"root-sys-{name}")

    out: dict[str, Runner] = {
        "pysandbox": lambda cid: [PYSANDBOX, "--root", root("pysandbox"), "run", "-b", b, cid],
        "pysandbox --sandbox none": lambda cid: [
            PYSANDBOX,
            "--root",
            root("pysandbox-none"),
            "--sandbox",
            "none",
            "run",
            "-b",
            b,
            cid,
        ],
    }
    if shutil.which("runc"):
        out["runc"] = lambda cid: ["runc", "--root", root("runc"), "run", "--bundle", b, cid]
        seccomp_bundle = make_seccomp_bundle(bundle)
        if seccomp_bundle is not None:
            sb = str(seccomp_bundle)
            out[RUNC_SECCOMP] = lambda cid: [
                "runc",
                "--root",
                root("runc"),
                "run",
                "--bundle",
                sb,
                cid,
            ]
    if shutil.which("runsc"):
        out["runsc"] = lambda cid: [
            "runsc",
            "--root",
            root("runsc"),
            "--network=none",
            "run",
            "--bundle",
            b,
            cid,
        ]
    return out


def parse(stdout: str) -> tuple[dict[str, float], dict[str, int]]:
    ns: dict[str, float] = {}
    errs: dict[str, int] = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] in CALLS:
            ns[parts[0]] = float(parts[1])
            errs[parts[0]] = int(parts[2])
    return ns, errs


def measure_syscalls(
    n_calls: int,
    rounds: int = ROUNDS,
    errnos: dict[str, dict[str, int]] | None = None,
) -> dict[str, dict[str, float]]:
    """Median ns per call, per runtime and call. `errnos`, if given, receives the
    errno each call last failed with (0: it succeeded) per runtime."""
    import os

    bundle = make_bundle(build_probe(), n_calls)
    cmds = runtimes(bundle)
    samples: dict[str, dict[str, list[float]]] = {r: {c: [] for c in CALLS} for r in cmds}
    failures: dict[str, str] = {}
    for i in range(rounds):
        for name, cmd in cmds.items():
            if name in failures:
                continue
            tag = "".join(c for c in name if c.isalnum())
            argv = cmd(f"benchsys-{tag}-{os.getpid()}-{i}")
            res = subprocess.run(argv, capture_output=True, text=True)
            ns, errs = parse(res.stdout)
            if res.returncode != 0 or set(ns) != set(CALLS):
                err = res.stderr.strip()
                failures[name] = err.splitlines()[-1] if err else f"exit {res.returncode}"
                continue
            for call, v in ns.items():
                samples[name][call].append(v)
            if errnos is not None:
                errnos[name] = errs
    for name, why in failures.items():
        print(f"  {name}: failed: {why}", file=sys.stderr)
        samples.pop(name, None)
        if errnos is not None:
            errnos.pop(name, None)
    return {
        r: {c: statistics.median(xs) for c, xs in calls.items()} for r, calls in samples.items()
    }


def measure_floor(n_calls: int, rounds: int = ROUNDS) -> float | None:
    """Median ns per uname served by FLOOR_C's C server (None if it cannot run)."""
    WORK.mkdir(parents=True, exist_ok=True)
    src = WORK / "notify_floor.c"
    exe = WORK / "notify_floor"
    src.write_text(FLOOR_C)
    if shutil.which("gcc") is None:
        return None
    subprocess.run(["gcc", "-O2", "-o", str(exe), str(src)], check=True)
    samples = []
    for _ in range(rounds):
        res = subprocess.run([str(exe), str(n_calls)], capture_output=True, text=True)
        for line in res.stdout.splitlines():
            parts = line.split()
            if res.returncode == 0 and len(parts) == 2 and parts[0] == "floor_uname":
                samples.append(float(parts[1]))
    return statistics.median(samples) if samples else None


ERRNO_NAMES = {0: "ok", 1: "EPERM", 13: "EACCES", 22: "EINVAL", 38: "ENOSYS", 126: "ENOKEY"}


def table(results: dict[str, dict[str, float]], errnos: dict[str, dict[str, int]]) -> list[str]:
    base = results.get("runc")
    head = (
        "| runtime | " + " | ".join(f"{c} (ns) | {c} vs runc" for c in CALLS) + " | keyctl result |"
    )
    lines = [head, "|---|" + "---|---|" * len(CALLS) + "---|"]
    for name, calls in results.items():
        cells = []
        for c in CALLS:
            v = calls[c]
            ratio = f"{v / base[c]:.2f}x" if base and base[c] > 0 else "n/a"
            cells.append(f"{v:,.0f} | {ratio}")
        e = errnos.get(name, {}).get("keyctl")
        res = "?" if e is None else ERRNO_NAMES.get(e, f"errno {e}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {res} |")
    return lines


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    errs: dict[str, dict[str, int]] = {}
    results = measure_syscalls(n, errnos=errs)
    print("\n".join(table(results, errs)))
