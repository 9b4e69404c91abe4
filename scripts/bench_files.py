"""File-operation cost inside the container, for `make bench` (issue 5's benchmark).

A static C probe times, in ns per operation: stat of a file of the image, open
+close of it, and a loop that creates, writes (64 bytes) and unlinks a small
file in the root file system (under pysandbox: the overlay's upper layer). The
bundle's root is writable for every runtime. Then a build job: `make -j2` of a
C program of several files in the Debian rootfs of the compatibility tests
(tests/compat/debian.py), as wall time measured inside the container. Each is
run under pysandbox, runc and runsc, interleaved; medians are reported.
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
sys.path.insert(0, str(REPO))

from pysandbox.oci.bundle import make_busybox_rootfs  # noqa: E402
from pysandbox.oci.specgen import default_spec  # noqa: E402

WORK = REPO / "build" / "bench"
PYSANDBOX = str(REPO / ".venv" / "bin" / "pysandbox")
OPS = ("stat", "open_close", "create_write_unlink")
VOLUME_OPS = tuple(f"vol_{op}" for op in OPS)  # the same in a bind mount (/vol)
ROUNDS = 3

PROBE_C = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static long long now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* argv[2], if given: a directory holding "passwd" (a volume); the names
   printed then start with "vol_". */
int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 10000, i;
    const char *dir = argc > 2 ? argv[2] : NULL, *tag = dir ? "vol_" : "";
    char path[256], file[256];
    snprintf(path, sizeof path, "%s/passwd", dir ? dir : "/etc");
    snprintf(file, sizeof file, "%s/bench-file", dir ? dir : "");
    struct stat st;
    char buf[64] = {0};
    long long t0 = now();
    for (i = 0; i < n; i++) stat(path, &st);
    printf("%sstat %.1f\n", tag, (double)(now() - t0) / n);
    t0 = now();
    for (i = 0; i < n; i++) close(open(path, O_RDONLY | O_CLOEXEC));
    printf("%sopen_close %.1f\n", tag, (double)(now() - t0) / n);
    long m = n / 10 + 1;
    t0 = now();
    for (i = 0; i < m; i++) {
        int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, buf, sizeof buf) != sizeof buf) return 1;
        close(fd);
        unlink(file);
    }
    printf("%screate_write_unlink %.1f\n", tag, (double)(now() - t0) / m);
    return 0;
}
"""

BUILD_SCRIPT = r"""set -e
mkdir -p /work/src && cd /work/src
for i in 1 2 3 4 5 6 7 8; do
  cat > part$i.c <<C
double part$i(int n) { double s = 0; for (int k = 1; k <= n; k++) s += 1.0 / (k + $i); return s; }
C
done
cat > main.c <<'C'
#include <stdio.h>
double part1(int), part2(int), part3(int), part4(int);
double part5(int), part6(int), part7(int), part8(int);
int main(void) { printf("%f\n", part1(9) + part2(9) + part3(9) + part4(9)
                 + part5(9) + part6(9) + part7(9) + part8(9)); return 0; }
C
printf 'prog: main.o part1.o part2.o part3.o part4.o part5.o part6.o part7.o part8.o\n' > Makefile
printf '\t$(CC) -o $@ $^\n%%.o: %%.c\n\t$(CC) -O2 -c $<\n' >> Makefile
t0=$(date +%s%N)
make -s -j2
t1=$(date +%s%N)
./prog >/dev/null
echo "build_ms $(( (t1 - t0) / 1000000 ))"
"""

Runner = Callable[[Path, str], list[str]]


def _runtimes() -> dict[str, Runner]:
    def root(name: str) -> str:
        return str(WORK / f"root-files-{name}")

    out: dict[str, Runner] = {
        "pysandbox": lambda b, cid: [PYSANDBOX, "--root", root("py"), "run", "-b", str(b), cid],
    }
    if shutil.which("runc"):
        out["runc"] = lambda b, cid: ["runc", "--root", root("runc"), "run", "-b", str(b), cid]
    if shutil.which("runsc"):
        out["runsc"] = lambda b, cid: [
            "runsc",
            "--root",
            root("runsc"),
            "--network=none",
            "run",
            "--bundle",
            str(b),
            cid,
        ]
    return out


def _probe_bundle(n_ops: int) -> Path:
    WORK.mkdir(parents=True, exist_ok=True)
    src = WORK / "files_probe.c"
    exe = WORK / "files_probe"
    src.write_text(PROBE_C)
    subprocess.run(["gcc", "-O2", "-static", "-o", str(exe), str(src)], check=True)
    bundle = WORK / "files-bundle"
    make_busybox_rootfs(bundle / "rootfs")
    shutil.copy2(exe, bundle / "rootfs" / "probe")
    # the same operations in a volume: a bind of a host directory at /vol
    volume = WORK / "files-volume"
    volume.mkdir(exist_ok=True)
    shutil.copy2(bundle / "rootfs" / "etc" / "passwd", volume / "passwd")
    spec = default_spec(["sh", "-c", f"/probe {n_ops} && /probe {n_ops} /vol"], terminal=False)
    spec["ociVersion"] = "1.0.2"
    spec["root"]["readonly"] = False
    spec["mounts"].append(
        {"destination": "/vol", "type": "bind", "source": str(volume), "options": ["rbind"]}
    )
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))
    return bundle


def _build_bundle(name: str, rootfs: Path, readonly: bool) -> Path:
    bundle = WORK / f"build-bundle-{name}"
    bundle.mkdir(parents=True, exist_ok=True)
    spec = default_spec(["sh", "-c", BUILD_SCRIPT], terminal=False)
    spec["ociVersion"] = "1.0.2"
    spec["root"] = {"path": str(rootfs), "readonly": readonly}
    spec["process"]["env"] = ["PATH=/usr/bin:/bin", "HOME=/work"]
    spec["mounts"].append(
        {"destination": "/work", "type": "tmpfs", "source": "tmpfs", "options": ["mode=1777"]}
    )
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))
    return bundle


def _values(stdout: str) -> dict[str, float]:
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = float(parts[1])
            except ValueError:
                pass
    return out


def measure(n_ops: int, rounds: int = ROUNDS) -> dict[str, dict[str, float]]:
    """{runtime: {op or "build_ms": median}}."""
    import os

    from tests.compat.debian import debian_rootfs

    probe = _probe_bundle(n_ops)
    debian = debian_rootfs()
    samples: dict[str, dict[str, list[float]]] = {}
    for i in range(rounds):
        for name, cmd in _runtimes().items():
            got = samples.setdefault(name, {})
            tag = f"{name}-{os.getpid()}-{i}"
            res = subprocess.run(cmd(probe, f"files-{tag}"), capture_output=True, text=True)
            for op, v in _values(res.stdout).items():
                got.setdefault(op, []).append(v)
            # runc and runsc would write the cached tree: their root is read-only
            # (the build writes only /work); pysandbox's overlay takes its writes.
            bundle = _build_bundle(name, debian, readonly=name != "pysandbox")
            res = subprocess.run(cmd(bundle, f"build-{tag}"), capture_output=True, text=True)
            for op, v in _values(res.stdout).items():
                got.setdefault(op, []).append(v)
            if res.returncode != 0:
                print(f"  {name}: build failed: {res.stderr.strip()[-300:]}", file=sys.stderr)
    return {
        name: {op: statistics.median(v) for op, v in ops.items()} for name, ops in samples.items()
    }


def table(
    results: dict[str, dict[str, float]], cols: tuple[str, ...] = (*OPS, "build_ms")
) -> list[str]:
    base = results.get("runc", {})
    head = "| runtime | " + " | ".join(f"{c} | vs runc" for c in cols) + " |"
    lines = [head, "|---|" + "---|---|" * len(cols)]
    for name, ops in results.items():
        cells = []
        for c in cols:
            v = ops.get(c)
            if v is None:
                cells.append("n/a | n/a")
                continue
            ratio = f"{v / base[c]:.2f}x" if base.get(c) else "n/a"
            cells.append(f"{v:,.0f} | {ratio}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    results = measure(n)
    print("\n".join([*table(results), "", *table(results, VOLUME_OPS)]))
