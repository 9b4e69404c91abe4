"""Cost of a syscall under the sentry: served (uname), host (getppid), denied (getsid).

A forked child installs a filter (uname -> listener, getsid -> ERRNO(EPERM),
the rest allowed) and times N calls of each from Python; the parent serves
the listener with the real :class:`~pysandbox.sentry.loop.Sentry` and
:class:`~pysandbox.syscalls.info.InfoHandlers`. Each figure is the
median over R rounds of (round time / N), printed next to the same Python
call without any filter, with the sentry and the child pinned to one CPU and
unpinned. ``--json`` prints the numbers as one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

from pysandbox.oci import kernel
from pysandbox.sentry import bpf, harness, loop
from pysandbox.syscalls import info as handlers_info

NR_GETSID = 124


def _denied() -> None:
    try:
        os.getsid(0)
    except OSError:
        pass


CALLS: dict[str, Callable[[], object]] = {
    "uname (sentry)": os.uname,
    "getppid (host)": os.getppid,
    "getsid (denied EPERM)": _denied,
}


def _time_calls(rounds: int, n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, fn in CALLS.items():
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            for _ in range(n):
                fn()
            samples.append((time.perf_counter_ns() - t0) / n)
        out[name] = statistics.median(samples)
    return out


def _measure(rounds: int, n: int, cpus: set[int] | None) -> dict[str, float]:
    saved = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, cpus)
    try:
        r, w = os.pipe()

        def body() -> int:
            os.close(r)
            result = _time_calls(rounds, n)
            os.write(w, json.dumps(result).encode())
            return 0

        info = handlers_info.InfoHandlers()
        prog = bpf.routing_filter(notify=[kernel.SYS_UNAME], errno={NR_GETSID: 1})  # 1: EPERM
        pid, fd = harness.spawn_under_filter(prog, body)
        os.close(w)
        sentry = loop.Sentry(info.routes(), names=handlers_info.NAMES)
        sentry.add_listener(fd)
        sentry.run()
        sentry.close()
        data = b""
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise SystemExit(f"benchmark child failed: status {status}")
        result: dict[str, float] = json.loads(data)
        return result
    finally:
        os.sched_setaffinity(0, saved)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("-n", type=int, default=2000, help="calls per round")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    cpu = min(os.sched_getaffinity(0))
    native_saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    native = _time_calls(args.rounds, args.n)
    os.sched_setaffinity(0, native_saved)
    pinned = _measure(args.rounds, args.n, {cpu})
    unpinned = _measure(args.rounds, args.n, None)
    if args.json:
        json.dump({"native": native, "pinned": pinned, "unpinned": unpinned}, sys.stdout)
        print()
        return
    print(f"{'call':<24}{'no filter':>12}{'pinned':>12}{'unpinned':>12}   (ns/call, medians)")
    for name in CALLS:
        print(f"{name:<24}{native[name]:>12.0f}{pinned[name]:>12.0f}{unpinned[name]:>12.0f}")


if __name__ == "__main__":
    main()
