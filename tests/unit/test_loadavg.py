"""The container's load average (syscalls/loadavg.py): the kernel's arithmetic,
its /proc/loadavg format, and the census of a cgroup's tasks over a /proc
and a cgroup tree laid out as the kernel's."""

from __future__ import annotations

import math
from pathlib import Path

from pysandbox.syscalls.loadavg import (
    FIXED_1,
    LOAD_FREQ,
    ContainerLoad,
    LoadAverage,
    calc_load,
)


def test_calc_load_is_the_kernels() -> None:
    # Values worked by hand from kernel/sched/loadavg.c's calc_load().
    assert calc_load(0, 1884, 1 * FIXED_1) == 164  # (0 + 2048 * 164 + 2047) // 2048
    assert calc_load(2048, 1884, 0) == 1884  # decays without rounding up
    assert calc_load(2048, 1884, 2048) == 2048  # a steady load stays


def test_averages_follow_the_exponential() -> None:
    avg = LoadAverage()
    for _ in range(int(60 / LOAD_FREQ)):  # one minute of 2 busy tasks
        avg.tick(2)
    one, five, fifteen = (load / FIXED_1 for load in avg.avenrun)
    assert math.isclose(one, 2 * (1 - math.exp(-1)), abs_tol=0.01)
    assert math.isclose(five, 2 * (1 - math.exp(-1 / 5)), abs_tol=0.01)
    assert math.isclose(fifteen, 2 * (1 - math.exp(-1 / 15)), abs_tol=0.01)
    for _ in range(int(600 / LOAD_FREQ)):  # ten idle minutes
        avg.tick(0)
    one, five, fifteen = avg.avenrun
    assert one < five < fifteen  # the shorter the window, the faster it forgets
    assert one / FIXED_1 < 0.01


def test_text_and_sysinfo_formats() -> None:
    avg = LoadAverage()
    assert avg.text(1, 3, 7) == "0.00 0.00 0.00 1/3 7\n"
    avg.avenrun = [FIXED_1 + FIXED_1 // 2, 2 * FIXED_1 + 20, 0]
    # rounded to 1/100 as fs/proc/loadavg.c does (it adds FIXED_1/200 first)
    assert avg.text(2, 10, 42) == "1.50 2.01 0.00 2/10 42\n"
    assert avg.sysinfo_loads() == ((FIXED_1 + FIXED_1 // 2) << 5, (2 * FIXED_1 + 20) << 5, 0)


def _task(proc: Path, pid: int, tid: int, state: str, comm: str = "sh") -> None:
    d = proc / str(pid) / "task" / str(tid)
    d.mkdir(parents=True, exist_ok=True)
    (d / "stat").write_text(f"{tid} ({comm}) {state} 1 1 1 0 -1 4194560 0 0\n")


def test_census_counts_the_containers_tasks(tmp_path: Path) -> None:
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    (cg / "child").mkdir(parents=True)
    (cg / "cgroup.procs").write_text("10\n900\n950\n")
    (cg / "child" / "cgroup.procs").write_text("20\n30\n")
    _task(proc, 10, 10, "S")
    _task(proc, 10, 11, "R", comm="a) R (b")  # a comm that looks like fields
    _task(proc, 20, 20, "D")
    _task(proc, 30, 30, "R")
    _task(proc, 950, 950, "R")  # the watchdog: not the container's
    _task(proc, 900, 900, "R")  # the sentry, with its threads
    _task(proc, 900, 901, "R")
    (proc / "30" / "status").write_text("Name:\tx\nNSpid:\t30\t4\n")
    load = ContainerLoad(str(cg), lambda: {900, 950}, proc=str(proc))
    now = load.census()
    assert (now.total, now.running, now.active, now.newest) == (4, 2, 3, 30)
    # the reader, stopped in its open, counts as running
    assert load.census(reader=10).running == 3
    load.sample()
    assert load.average.avenrun[0] == calc_load(0, 1884, 3 * FIXED_1)
    assert load.loadavg(reader=10) == f"{load.average.text(3, 4, 4)}"
    # sysinfo's count: the cgroups' thread lists (v1 tasks, v2 cgroup.threads),
    # less the excluded processes' threads
    (cg / "tasks").write_text("10\n11\n900\n901\n950\n")
    (cg / "child" / "cgroup.threads").write_text("20\n30\n")
    assert load.task_count() == 4
    # a task that is gone between the listing and its stat is skipped
    (cg / "cgroup.procs").write_text("10\n40\n")
    assert load.census().total == 4


def test_no_cgroup_no_tasks() -> None:
    load = ContainerLoad(None, lambda: ())
    assert load.loadavg(reader=1) == "0.00 0.00 0.00 0/0 0\n"
    assert load.sysinfo_loads() == (0, 0, 0)
