"""`docker run --rm busybox:test true` through pysandbox, runc, crun and runsc,
side by side on one private dockerd (tests/engines/dockerd.py starts it, with
every runtime registered by `pysandbox install`), interleaved so a noisy
moment hits every runtime alike.

scripts/bench.py calls measure_docker_run(); run alone it prints a table:
    .venv/bin/python scripts/bench_docker.py -n 20
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for entry in (str(REPO / "build" / "pkgroot"), str(REPO)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from tests.engines.dockerd import IMAGE, PYSANDBOX, Dockerd, Runtime  # noqa: E402

# dockerd's own runc is built in (the "runc" runtime); the others are added.
EXTRA = {
    "crun": ("/usr/bin/crun", []),
    "runsc": ("/usr/bin/runsc", ["--network=none"]),
}


def _runtimes() -> list[Runtime]:
    out = [Runtime("pysandbox", PYSANDBOX)]
    for name, (path, args) in EXTRA.items():
        if os.access(path, os.X_OK):
            out.append(Runtime(name, path, list(args)))
    return out


def _crun_note() -> str | None:
    """bench.py's ensure_crun_can_run(), loaded by path: bench.py imports this
    module, so importing it back by name would be circular."""
    spec = importlib.util.spec_from_file_location(
        "_bench_for_docker", Path(__file__).with_name("bench.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ensure: Callable[[], str | None] = module.ensure_crun_can_run
    return ensure()


def measure_docker_run(n: int, warmup: int = 2) -> dict[str, list[float]]:
    """Milliseconds of `docker run --rm --runtime R busybox:test true`, n runs per
    runtime R; a runtime that fails is reported on stderr and left out."""
    note = _crun_note() if os.access(EXTRA["crun"][0], os.X_OK) else None
    if note:
        print(f"  note: {note}", file=sys.stderr)
    daemon = Dockerd(_runtimes())
    try:
        daemon.start()
        daemon.import_image()
        names = ["pysandbox", "runc", *(r.name for r in daemon.runtimes[1:])]
        times: dict[str, list[float]] = {name: [] for name in names}
        failures: dict[str, str] = {}
        for i in range(warmup + n):
            for name in names:
                if name in failures:
                    continue
                argv = daemon.cmd("run", "--rm", "--runtime", name, IMAGE, "true")
                t0 = time.perf_counter()
                res = subprocess.run(
                    argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120
                )
                dt = time.perf_counter() - t0
                if res.returncode != 0:
                    lines = res.stderr.strip().splitlines()
                    failures[name] = lines[-1] if lines else f"exit {res.returncode}"
                    continue
                if i >= warmup:
                    times[name].append(dt * 1000)
        for name, why in failures.items():
            print(f"  docker/{name}: failed: {why}", file=sys.stderr)
            times.pop(name, None)
        return times
    finally:
        left = daemon.stop()
        if left:
            print(f"  dockerd left things behind (cleaned): {left}", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-n", type=int, default=20, help="measured runs per runtime")
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    if not shutil.which("dockerd"):
        print("dockerd is not installed (make setup installs docker.io)", file=sys.stderr)
        return 1
    times = measure_docker_run(args.n, args.warmup)
    base = statistics.median(times["runc"]) if "runc" in times else None
    print("| runtime | median (ms) | p90 (ms) | ratio to runc |")
    print("|---|---|---|---|")
    for name, xs in times.items():
        med = statistics.median(xs)
        p90 = sorted(xs)[max(0, int(len(xs) * 0.9) - 1)]
        ratio = f"{med / base:.2f}x" if base else "n/a"
        print(f"| {name} | {med:.1f} | {p90:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
