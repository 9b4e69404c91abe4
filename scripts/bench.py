"""`make bench`: pysandbox side by side with runc, crun and runsc, in one run.

Measures `run` of `true` on the same busybox bundle, start to exit, for each
runtime, interleaving the runtimes so a noisy moment hits all of them alike.
Prints medians, p90 and the ratio to runc, and (with --write) records them in
docs/benchmarks.md with the command that produced them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "build" / "pkgroot"))

from pysandbox.oci.bundle import make_busybox_rootfs  # noqa: E402
from pysandbox.oci.specgen import default_spec  # noqa: E402

WORK = REPO / "build" / "bench"
PYSANDBOX = str(REPO / ".venv" / "bin" / "pysandbox")


def make_bundle() -> Path:
    bundle = WORK / "bundle"
    make_busybox_rootfs(bundle / "rootfs")
    spec = default_spec(["true"], terminal=False)
    # crun 1.8 rejects spec versions it does not know; every runtime here reads 1.0.2.
    spec["ociVersion"] = "1.0.2"
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))
    return bundle


def ensure_crun_can_run() -> str | None:
    """crun 1.8 refuses a hybrid host with any controller on the cgroup2 side;
    on this kind of machine hugetlb is there, unused. Binding it to its own v1
    hierarchy (what systemd does on hybrid hosts) lets crun run; it changes
    nothing for the other runtimes' measurements."""
    controllers = Path("/sys/fs/cgroup/unified/cgroup.controllers")
    if not controllers.exists() or not controllers.read_text().split():
        return None
    names = controllers.read_text().split()
    notes = []
    for name in names:
        target = Path("/sys/fs/cgroup") / name
        try:
            target.mkdir(exist_ok=True)
            subprocess.run(
                ["mount", "-t", "cgroup", "-o", name, "cgroup", str(target)],
                check=True,
                capture_output=True,
            )
            notes.append(name)
        except (OSError, subprocess.CalledProcessError) as e:
            return f"could not move {name} to cgroup v1 ({e}); crun cannot run here"
    return f"moved {', '.join(notes)} from the cgroup2 mount to v1 hierarchies so crun 1.8 runs"


Runner = Callable[[str], list[str]]


def runtimes(bundle: Path) -> dict[str, Runner]:
    names = ("pysandbox", "pysandbox-none", "runc", "crun", "runsc")
    roots = {name: WORK / f"root-{name}" for name in names}
    b = str(bundle)
    out: dict[str, Runner] = {
        "pysandbox": lambda cid: [
            PYSANDBOX,
            "--root",
            str(roots["pysandbox"]),
            "run",
            "--bundle",
            b,
            cid,
        ],
        # the namespaces, cgroups and seccomp of runc without the sentry: what it costs
        "pysandbox --sandbox none": lambda cid: [
            PYSANDBOX,
            "--root",
            str(roots["pysandbox-none"]),
            "--sandbox",
            "none",
            "run",
            "--bundle",
            b,
            cid,
        ],
    }
    if shutil.which("runc"):
        out["runc"] = lambda cid: ["runc", "--root", str(roots["runc"]), "run", "--bundle", b, cid]
    if shutil.which("crun"):
        out["crun"] = lambda cid: ["crun", "--root", str(roots["crun"]), "run", "--bundle", b, cid]
    if shutil.which("runsc"):
        out["runsc"] = lambda cid: [
            "runsc",
            "--root",
            str(roots["runsc"]),
            "--network=none",
            "run",
            "--bundle",
            b,
            cid,
        ]
    return out


def measure(cmds: dict[str, Runner], n: int, warmup: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in cmds}
    failures: dict[str, str] = {}
    for i in range(warmup + n):
        for name, cmd in cmds.items():
            if name in failures:
                continue
            slug = "".join(c for c in name if c.isalnum())  # "pysandbox --sandbox none"
            argv = cmd(f"bench-{slug}-{os.getpid()}-{i}")
            t0 = time.perf_counter()
            res = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            dt = time.perf_counter() - t0
            if res.returncode != 0:
                failures[name] = (
                    res.stderr.strip().splitlines()[-1]
                    if res.stderr.strip()
                    else f"exit {res.returncode}"
                )
                continue
            if i >= warmup:
                times[name].append(dt * 1000)
    for name, why in failures.items():
        print(f"  {name}: failed: {why}", file=sys.stderr)
        times.pop(name, None)
    return times


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.9) - 1)]


def version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.strip().splitlines()[0] if out.strip() else "?"


def table(times: dict[str, list[float]]) -> list[str]:
    base = statistics.median(times["runc"]) if "runc" in times else None
    lines = [
        "| runtime | median (ms) | p90 (ms) | ratio to runc |",
        "|---|---|---|---|",
    ]
    for name, xs in times.items():
        med = statistics.median(xs)
        ratio = f"{med / base:.2f}x" if base else "n/a"
        lines.append(f"| {name} | {med:.1f} | {p90(xs):.1f} | {ratio} |")
    return lines


def render(
    times: dict[str, list[float]],
    n: int,
    note: str | None,
    docker: dict[str, list[float]] | None = None,
    docker_n: int = 0,
    syscalls: list[str] | None = None,
) -> str:
    lines = table(times)
    versions = {
        "pysandbox": version([PYSANDBOX, "--version"]),
        "runc": version(["runc", "--version"]),
        "crun": version(["crun", "--version"]),
        "runsc": version(["runsc", "--version"]),
    }
    head = [
        f"`run` of `true` on a busybox-static bundle, start to exit, {n} runs each, interleaved.",
        "",
        f"Machine: {platform.node()}, kernel {platform.release()}, {os.cpu_count()} CPUs.",
        "Versions: " + "; ".join(f"{k}: {v}" for k, v in versions.items()) + ".",
    ]
    if note:
        head.append(f"Note: {note}.")
    out = [*head, "", *lines, ""]
    if docker:
        out += [
            "### `docker run --rm busybox true`",
            "",
            f"Through one private dockerd 20.10 with every runtime registered, {docker_n} runs",
            'each, interleaved (runsc with `runtimeArgs: ["--network=none"]`).',
            "",
            *table(docker),
            "",
        ]
    if syscalls:
        out += syscalls
    return "\n".join(out)


START = "<!-- bench:start -->"
END = "<!-- bench:end -->"


def write_doc(path: Path, section: str) -> None:
    """Replace the generated part of the document, keeping the prose around it."""
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    generated = f"{START}\nLast run: {stamp}, by `make bench`.\n\n{section}{END}"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    path.write_text(before + generated + after)


def _load_docker_bench() -> Callable[[int], dict[str, list[float]]]:
    """scripts/ is not a package: load bench_docker.py by its path."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "bench_docker", Path(__file__).with_name("bench_docker.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    measure: Callable[[int], dict[str, list[float]]] = module.measure_docker_run
    return measure


def _load_module(name: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def syscalls_section(n_calls: int) -> list[str]:
    """The syscall micro-benchmark (scripts/bench_syscalls.py), as markdown lines."""
    mod = _load_module("bench_syscalls")
    errnos: dict[str, dict[str, int]] = {}
    results: dict[str, dict[str, float]] = mod.measure_syscalls(n_calls, errnos=errnos)
    lines: list[str] = mod.table(results, errnos)
    floor: float | None = mod.measure_floor(n_calls)
    served = results.get("pysandbox", {}).get("uname")
    if floor is not None:
        share = (
            f" The sentry's own share of a served uname is {served - floor:,.0f} ns."
            if served
            else ""
        )
        lines += [
            "",
            "The floor of the platform: the same uname served by a minimal C server (RECV,",
            "process_vm_writev of the answer, SEND, SYNC_WAKE_UP; scripts/bench_syscalls.py",
            f"FLOOR_C), no container, no Python: **{floor:,.0f} ns** per call.{share}",
        ]
    return [
        "### Syscall cost inside the container",
        "",
        f"A static C probe (scripts/bench_syscalls.py, gcc-built at bench time) times {n_calls}",
        "calls each of uname (served by the sentry, on by default), getppid (a host",
        "call) and keyctl (denied with EPERM by the default profile), with",
        f"clock_gettime(CLOCK_MONOTONIC): ns per call, median of {mod.ROUNDS} `run`s per runtime,",
        "interleaved. The bundle's config.json has no seccomp profile, so without the sentry",
        'keyctl reaches the kernel ("ok"); runsc answers it itself.',
        "",
        *lines,
        "",
    ]


def files_section(n_ops: int) -> list[str]:
    """The file-operation and build benchmark (scripts/bench_files.py), as markdown lines."""
    mod = _load_module("bench_files")
    results: dict[str, dict[str, float]] = mod.measure(n_ops)
    lines: list[str] = mod.table(results)
    return [
        "### File operations and a build inside the container",
        "",
        "A static C probe (scripts/bench_files.py) times stat and open+close of /etc/passwd,",
        f"{n_ops} each, and {n_ops // 10 + 1} rounds of create+write(64 B)+unlink of a file in",
        "the root file system (pysandbox: the overlay's upper layer), in ns per operation;",
        "then `make -j2` of a 9-file C program in the Debian rootfs of the compatibility",
        f"tests, in ms measured inside the container. Medians of {mod.ROUNDS} interleaved rounds.",
        "",
        *lines,
        "",
        "The same three operations in a volume (a bind mount of a host directory at /vol,",
        "which pysandbox's gofer serves like the root):",
        "",
        *mod.table(results, mod.VOLUME_OPS),
        "",
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=30, help="measured runs per runtime")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--write", type=Path, help="write the results into this markdown file")
    ap.add_argument("--docker-n", type=int, default=20, help="docker runs per runtime (0: skip)")
    ap.add_argument(
        "--syscalls-n",
        type=int,
        default=20000,
        help="calls of each syscall per probe run (0: skip the syscall benchmark)",
    )
    ap.add_argument(
        "--files-n",
        type=int,
        default=20000,
        help="file operations per probe run (0: skip the file benchmark)",
    )
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    bundle = make_bundle()
    note = ensure_crun_can_run()
    cmds = runtimes(bundle)
    print(f"measuring {', '.join(cmds)}: {args.n} runs each", file=sys.stderr)
    times = measure(cmds, args.n, args.warmup)
    docker = None
    if args.docker_n > 0:
        measure_docker_run = _load_docker_bench()
        print(f"measuring docker run --rm: {args.docker_n} runs each", file=sys.stderr)
        docker = measure_docker_run(args.docker_n)
    syscalls = None
    if args.syscalls_n > 0:
        print(f"measuring syscall cost: {args.syscalls_n} calls each", file=sys.stderr)
        syscalls = syscalls_section(args.syscalls_n)
    if args.files_n > 0:
        print(f"measuring file operations: {args.files_n} each", file=sys.stderr)
        syscalls = [*(syscalls or []), *files_section(args.files_n)]
    section = render(times, args.n, note, docker, args.docker_n, syscalls)
    print(section)
    if args.write:
        write_doc(args.write, section)
        print(f"wrote {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
