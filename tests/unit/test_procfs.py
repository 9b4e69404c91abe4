"""The virtual /proc renderers and the cgroup limit reader (syscalls/procfs.py)."""

from __future__ import annotations

from pathlib import Path

from pysandbox.syscalls import procfs

MEMINFO = """MemTotal:       24684084 kB
MemFree:        24125016 kB
MemAvailable:   24258496 kB
Buffers:          100000 kB
Cached:           300000 kB
SwapCached:            0 kB
Active:           400000 kB
SwapTotal:       1000000 kB
SwapFree:         900000 kB
Shmem:              8956 kB
SReclaimable:      20000 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

CPUINFO = "".join(f"processor\t: {i}\nmodel name\t: test cpu\n\n" for i in range(4))
STAT = "cpu  1 2 3 4\ncpu0 1 0 0 0\ncpu1 0 2 0 0\ncpu2 0 0 3 0\ncpu3 0 0 0 4\nintr 5\nctxt 6\n"


def _fields(text: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (ln.partition(":") for ln in text.splitlines())}


def test_meminfo_under_a_limit() -> None:
    out = _fields(procfs.render_meminfo(MEMINFO, 64 << 20, 16 << 20, swap_limit=32 << 20))
    assert out["MemTotal"] == "65536 kB"
    assert out["MemFree"] == out["MemAvailable"] == "49152 kB"
    assert out["Buffers"] == out["Cached"] == out["Shmem"] == out["SReclaimable"] == "0 kB"
    assert out["Active"] == "65536 kB"  # capped at MemTotal
    assert out["SwapTotal"] == "32768 kB" and out["SwapFree"] == "32768 kB"
    assert out["HugePages_Total"] == "0"  # counts keep their form
    assert out["Hugepagesize"] == "2048 kB"


def test_meminfo_unlimited_is_the_hosts() -> None:
    out = _fields(procfs.render_meminfo(MEMINFO, None, 0))
    assert out == _fields(MEMINFO)


def test_meminfo_limit_above_the_host_keeps_the_host_total() -> None:
    out = _fields(procfs.render_meminfo(MEMINFO, 1 << 50, 0))
    assert out["MemTotal"] == "24684084 kB"


def test_cpuinfo_and_stat_keep_n_cpus() -> None:
    text = procfs.render_cpuinfo(CPUINFO, 2)
    assert [ln for ln in text.splitlines() if ln.startswith("processor")] == [
        "processor\t: 0",
        "processor\t: 1",
    ]
    stat = procfs.render_stat(STAT, 2).splitlines()
    assert stat == ["cpu  1 2 3 4", "cpu0 1 0 0 0", "cpu1 0 2 0 0", "intr 5", "ctxt 6"]


def test_stat_counts_the_containers_running_and_blocked_tasks() -> None:
    host = STAT + "procs_running 57\nprocs_blocked 9\n"
    assert procfs.render_stat(host, 2).splitlines()[-2:] == [
        "procs_running 57",
        "procs_blocked 9",
    ]
    assert procfs.render_stat(host, 2, (3, 1)).splitlines()[-2:] == [
        "procs_running 3",
        "procs_blocked 1",
    ]


def test_uptime_counts_from_the_container_start() -> None:
    up, idle = procfs.render_uptime("1000.00 1600.00\n", 990.0, 1000.0, 1, 2).split()
    assert up == "10.00"
    assert 0.0 <= float(idle) <= 10.0


def test_cpuset_size() -> None:
    assert procfs.cpuset_size("0-3,6") == 5
    assert procfs.cpuset_size("1") == 1


def _view(tmp_path: Path, **files: str) -> procfs.ContainerView:
    paths = {}
    for key, text in files.items():
        p = tmp_path / key
        p.write_text(text + "\n")
        paths[key.replace("_", ".")] = str(p)
    return procfs.ContainerView(paths, started=0.0)


def test_view_reads_v1_files(tmp_path: Path) -> None:
    v = _view(
        tmp_path,
        memory_limit=str(64 << 20),
        memory_usage=str(1 << 20),
        memsw_limit=str(96 << 20),
        cpu_quota="150000",
        cpu_period="100000",
        cpuset="0-3",
    )
    assert v.memory_limit() == 64 << 20
    assert v.memory_usage() == 1 << 20
    assert v.swap_limit() == 32 << 20
    assert v.cpus(8) == 2  # 1.5 CPUs of quota round up; the cpuset allows 4


def test_view_reads_v2_files_and_no_limits(tmp_path: Path) -> None:
    v = _view(tmp_path, memory_limit="max", swap_limit="max", cpu_max="max 100000", cpuset="0")
    assert v.memory_limit() is None and v.swap_limit() is None
    assert v.cpus(2) == 1
    unlimited_v1 = _view(tmp_path, memory_limit=str(0x7FFFFFFFFFFFF000), cpu_quota="-1")
    assert unlimited_v1.memory_limit() is None
    assert unlimited_v1.cpus(2) == 2


def test_limit_files_name_the_controllers_files() -> None:
    from pysandbox.oci.cgroups import limit_files

    v1 = limit_files("v1", {"memory": "/m/c", "cpu": "/c/c", "cpuset": "/s/c"})
    assert v1["memory.limit"] == "/m/c/memory.limit_in_bytes"
    assert v1["cpu.quota"] == "/c/c/cpu.cfs_quota_us"
    assert v1["cpuset"] == "/s/c/cpuset.cpus"
    v2 = limit_files("v2", {"unified": "/u/c"})
    assert v2["memory.limit"] == "/u/c/memory.max" and v2["cpu.max"] == "/u/c/cpu.max"


def test_cpu_lists() -> None:
    assert procfs.cpu_list("0-2,5") == [0, 1, 2, 5]
    assert procfs.format_cpu_list([5, 0, 1, 2]) == "0-2,5"
    assert procfs.format_cpu_list([3]) == "3"
    assert procfs.format_cpu_list([0, 2, 4]) == "0,2,4"


def test_cpu_ids_follow_the_cpuset_then_the_quota(tmp_path: Path) -> None:
    v = _view(tmp_path, cpuset="2-3", cpu_quota="50000", cpu_period="100000")
    assert v.cpu_ids([0, 1, 2, 3]) == [2]
    unlimited = procfs.ContainerView({}, started=0.0)
    assert unlimited.cpu_ids([0, 1]) == [0, 1]


def test_affinity_masks() -> None:
    from pysandbox.syscalls import sched

    assert sched.nr_cpu_ids("0-3,6") == 7
    assert sched.nr_cpu_ids("0") == 1
    assert sched.mask_bytes([0, 1], 8) == b"\x03" + bytes(7)
    assert sched.mask_bytes([9], 8) == b"\x00\x02" + bytes(6)
