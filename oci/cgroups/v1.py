"""cgroup v1: one directory per mounted hierarchy."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping

from . import (
    CgroupError,
    CgroupManager,
    log,
    mkdir_p,
    read_file,
    read_int,
    read_keyed,
    read_optional,
    remove_created,
    tree_pids,
    v1_mounts,
    write_file,
)
from .stats import empty_stats, memory_entry, parse_blkio_v1

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal


_FREEZE_TIMEOUT = 5.0
_UNLIMITED = -1


def _device_number(value: Any) -> str:
    if value is None or value == -1:
        return "*"
    return str(int(value))


def device_rule_line(rule: Mapping[str, Any]) -> str:
    """One OCI linux.resources.devices entry as a devices.allow/deny line."""
    dtype = rule.get("type") or "a"
    if dtype not in ("a", "b", "c"):
        raise CgroupError(f"cgroup devices: invalid device type {dtype!r}")
    access = rule.get("access") or "rwm"
    if not access or any(ch not in "rwm" for ch in access):
        raise CgroupError(f"cgroup devices: invalid access {access!r}")
    if dtype == "a":
        # "a" covers every device; the kernel ignores numbers and access for it.
        return "a"
    return (
        f"{dtype} {_device_number(rule.get('major'))}:{_device_number(rule.get('minor'))} {access}"
    )


class V1Manager(CgroupManager):
    mode: Literal["v1", "v2"] = "v1"

    def __init__(
        self,
        path: str,
        mounts: Mapping[str, str] | None = None,
        created: list[str] | None = None,
    ) -> None:
        self.path = path
        self.mounts: dict[str, str] = dict(mounts) if mounts is not None else v1_mounts()
        if not self.mounts:
            raise CgroupError("cgroup: no cgroup v1 hierarchy is mounted")
        self.created: list[str] = list(created or [])

    # --- state ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> V1Manager:
        return cls(str(d["path"]), mounts=d.get("mounts"), created=list(d.get("created", [])))

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": "v1",
            "path": self.path,
            "mounts": dict(self.mounts),
            "created": list(self.created),
        }

    # --- directories -------------------------------------------------------------

    def _mountpoints(self) -> list[str]:
        seen: list[str] = []
        for mp in self.mounts.values():
            if mp not in seen:
                seen.append(mp)
        return seen

    def _dir_of(self, mountpoint: str) -> str:
        return os.path.join(mountpoint, self.path.lstrip("/")) if self.path != "/" else mountpoint

    def dirs(self) -> list[str]:
        """The container's directory in every mounted hierarchy."""
        return [self._dir_of(mp) for mp in self._mountpoints()]

    def mount_dirs(self) -> dict[str, str]:
        """Hierarchy mountpoint -> the container's directory in it (for the
        container's /sys/fs/cgroup: one bind per hierarchy, named after it)."""
        return {mp: self._dir_of(mp) for mp in self._mountpoints()}

    def has(self, subsystem: str) -> bool:
        return subsystem in self.mounts

    def dir(self, subsystem: str) -> str:
        """The container's directory in one hierarchy (CgroupError if not mounted)."""
        mp = self.mounts.get(subsystem)
        if mp is None:
            raise CgroupError(f"cgroup: the {subsystem} cgroup hierarchy is not mounted")
        return self._dir_of(mp)

    def _require(self, subsystem: str, what: str) -> str:
        mp = self.mounts.get(subsystem)
        if mp is None:
            raise CgroupError(
                f"cgroup: cannot set {what}: the {subsystem} cgroup v1 hierarchy is not mounted"
            )
        return self._dir_of(mp)

    def main_dir(self) -> str:
        for sub in ("pids", "freezer", "memory", "cpu", "devices", "name=systemd"):
            if sub in self.mounts:
                return self.dir(sub)
        return self.dirs()[0]

    def create(self) -> None:
        for mp in self._mountpoints():
            made = mkdir_p(mp, self.path)
            self.created.extend(d for d in made if d not in self.created)
        if "cpuset" in self.mounts:
            self._init_cpuset()

    def _init_cpuset(self) -> None:
        # A new cpuset cgroup starts with empty cpus/mems and refuses tasks until
        # they are set: copy them down from the nearest ancestor, top first.
        mp = self.mounts["cpuset"]
        current = mp
        for part in [p for p in self.path.split("/") if p]:
            parent, current = current, os.path.join(current, part)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not read_file(current, name).strip():
                    value = read_file(parent, name).strip()
                    if value:
                        write_file(current, name, value)

    def add_process(self, pid: int) -> None:
        for d in self.dirs():
            write_file(d, "cgroup.procs", pid)

    # --- resources ---------------------------------------------------------------

    def apply(self, resources: Mapping[str, Any] | None) -> None:
        if not resources:
            return
        unified = resources.get("unified")
        if unified:
            raise CgroupError(
                "cgroup: linux.resources.unified needs cgroup v2, but this host uses cgroup v1"
            )
        if resources.get("memory"):
            self._apply_memory(resources["memory"])
        if resources.get("cpu"):
            self._apply_cpu(resources["cpu"])
        if resources.get("pids") is not None:
            self._apply_pids(resources["pids"])
        if resources.get("blockIO"):
            self._apply_blkio(resources["blockIO"])
        if resources.get("hugepageLimits"):
            self._apply_hugetlb(resources["hugepageLimits"])
        if resources.get("network"):
            self._apply_network(resources["network"])
        if resources.get("devices"):
            self._apply_devices(resources["devices"])
        if resources.get("rdma"):
            d = self._require("rdma", "rdma limits")
            for dev, limits in resources["rdma"].items():
                parts = [dev]
                if limits.get("hcaHandles") is not None:
                    parts.append(f"hca_handle={limits['hcaHandles']}")
                if limits.get("hcaObjects") is not None:
                    parts.append(f"hca_object={limits['hcaObjects']}")
                write_file(d, "rdma.max", " ".join(parts))

    def _apply_memory(self, mem: Mapping[str, Any]) -> None:
        keys = ("limit", "reservation", "swap", "kernel", "kernelTCP", "swappiness")
        wanted = [k for k in keys if mem.get(k) is not None]
        if not wanted and not mem.get("disableOOMKiller"):
            return
        d = self._require("memory", "memory limits")
        limit = mem.get("limit")
        swap = mem.get("swap")
        has_memsw = os.path.exists(os.path.join(d, "memory.memsw.limit_in_bytes"))
        if swap is not None and swap != 0 and not has_memsw and swap != _UNLIMITED:
            log.warning("cgroup: swap accounting is off (no memory.memsw.*); ignoring memory.swap")
        writes: list[tuple[str, int]] = []
        if limit is not None and limit != 0:
            writes.append(("memory.limit_in_bytes", int(limit)))
        if has_memsw:
            if swap is not None and swap != 0:
                writes.append(("memory.memsw.limit_in_bytes", int(swap)))
            elif limit == _UNLIMITED:
                # Unlimited memory with unset swap: lift memsw too, or the old
                # memsw limit would still cap the cgroup.
                writes.insert(0, ("memory.memsw.limit_in_bytes", _UNLIMITED))
        self._write_ordered(d, writes)
        if mem.get("reservation") is not None and mem["reservation"] != 0:
            write_file(d, "memory.soft_limit_in_bytes", int(mem["reservation"]))
        if mem.get("kernel") is not None and mem["kernel"] != 0:
            log.warning("cgroup: kernel memory limits are not supported by Linux >= 6.1; ignored")
        if mem.get("kernelTCP") is not None and mem["kernelTCP"] != 0:
            if os.path.exists(os.path.join(d, "memory.kmem.tcp.limit_in_bytes")):
                write_file(d, "memory.kmem.tcp.limit_in_bytes", int(mem["kernelTCP"]))
            else:
                log.warning("cgroup: memory.kmem.tcp.limit_in_bytes missing; kernelTCP ignored")
        swappiness = mem.get("swappiness")
        if swappiness is not None and int(swappiness) != -1:
            if not 0 <= int(swappiness) <= 100:
                raise CgroupError(f"cgroup memory.swappiness: invalid value {swappiness} (0-100)")
            write_file(d, "memory.swappiness", int(swappiness))
        if mem.get("disableOOMKiller"):
            write_file(d, "memory.oom_control", 1)

    @staticmethod
    def _write_ordered(d: str, writes: list[tuple[str, int]]) -> None:
        """Write the limits in order; if one fails, retry the whole set in reverse order.

        memory.limit_in_bytes must stay <= memory.memsw.limit_in_bytes at all
        times, so growing needs swap first and shrinking needs memory first.
        """
        if not writes:
            return
        try:
            for name, value in writes:
                write_file(d, name, value)
        except CgroupError as first:
            if len(writes) < 2:
                raise
            try:
                for name, value in reversed(writes):
                    write_file(d, name, value)
            except CgroupError:
                raise first from None

    def _apply_cpu(self, cpu: Mapping[str, Any]) -> None:
        def want(key: str) -> bool:
            return cpu.get(key) is not None and cpu[key] != 0

        if (
            any(
                want(k)
                for k in ("shares", "quota", "period", "burst", "realtimeRuntime", "realtimePeriod")
            )
            or cpu.get("idle") is not None
        ):
            d = self._require("cpu", "cpu limits")
            if want("shares"):
                write_file(d, "cpu.shares", int(cpu["shares"]))
            if want("period"):
                write_file(d, "cpu.cfs_period_us", int(cpu["period"]))
            if want("quota"):
                write_file(d, "cpu.cfs_quota_us", int(cpu["quota"]))
            if cpu.get("burst") is not None:
                write_file(d, "cpu.cfs_burst_us", int(cpu["burst"]))
            if want("realtimePeriod"):
                write_file(d, "cpu.rt_period_us", int(cpu["realtimePeriod"]))
            if want("realtimeRuntime"):
                write_file(d, "cpu.rt_runtime_us", int(cpu["realtimeRuntime"]))
            if cpu.get("idle") is not None:
                write_file(d, "cpu.idle", int(cpu["idle"]))
        if cpu.get("cpus") or cpu.get("mems"):
            d = self._require("cpuset", "cpu.cpus/cpu.mems")
            if cpu.get("cpus"):
                write_file(d, "cpuset.cpus", str(cpu["cpus"]))
            if cpu.get("mems"):
                write_file(d, "cpuset.mems", str(cpu["mems"]))

    def _apply_pids(self, pids: Mapping[str, Any]) -> None:
        limit = pids.get("limit")
        if limit is None:
            return
        d = self._require("pids", "pids.limit")
        write_file(d, "pids.max", "max" if int(limit) <= 0 else int(limit))

    def _apply_blkio(self, bio: Mapping[str, Any]) -> None:
        def has(key: str) -> bool:
            v = bio.get(key)
            return bool(v) and v != 0

        if not any(
            has(k)
            for k in (
                "weight",
                "leafWeight",
                "weightDevice",
                "throttleReadBpsDevice",
                "throttleWriteBpsDevice",
                "throttleReadIOPSDevice",
                "throttleWriteIOPSDevice",
            )
        ):
            return
        d = self._require("blkio", "blockIO limits")

        def pick(*names: str) -> str:
            for n in names:
                if os.path.exists(os.path.join(d, n)):
                    return n
            raise CgroupError(
                f"cgroup {names[0]}: not supported by this kernel's I/O scheduler ({d})"
            )

        if has("weight"):
            write_file(d, pick("blkio.weight", "blkio.bfq.weight"), int(bio["weight"]))
        if has("leafWeight"):
            write_file(d, pick("blkio.leaf_weight"), int(bio["leafWeight"]))
        for wd in bio.get("weightDevice") or []:
            dev = f"{int(wd['major'])}:{int(wd['minor'])}"
            if wd.get("weight"):
                write_file(
                    d,
                    pick("blkio.weight_device", "blkio.bfq.weight_device"),
                    f"{dev} {int(wd['weight'])}",
                )
            if wd.get("leafWeight"):
                write_file(d, pick("blkio.leaf_weight_device"), f"{dev} {int(wd['leafWeight'])}")
        for key, fname in (
            ("throttleReadBpsDevice", "blkio.throttle.read_bps_device"),
            ("throttleWriteBpsDevice", "blkio.throttle.write_bps_device"),
            ("throttleReadIOPSDevice", "blkio.throttle.read_iops_device"),
            ("throttleWriteIOPSDevice", "blkio.throttle.write_iops_device"),
        ):
            for td in bio.get(key) or []:
                write_file(d, fname, f"{int(td['major'])}:{int(td['minor'])} {int(td['rate'])}")

    def _apply_hugetlb(self, limits: list[Mapping[str, Any]]) -> None:
        d = self._require("hugetlb", "hugepageLimits")
        for entry in limits:
            size = str(entry["pageSize"])
            write_file(d, f"hugetlb.{size}.limit_in_bytes", int(entry["limit"]))

    def _apply_network(self, net: Mapping[str, Any]) -> None:
        if net.get("classID") is not None:
            d = self._require("net_cls", "network.classID")
            write_file(d, "net_cls.classid", int(net["classID"]))
        for prio in net.get("priorities") or []:
            d = self._require("net_prio", "network.priorities")
            write_file(d, "net_prio.ifpriomap", f"{prio['name']} {int(prio['priority'])}")

    def _apply_devices(self, rules: list[Mapping[str, Any]]) -> None:
        d = self._require("devices", "devices")
        for rule in rules:
            line = device_rule_line(rule)
            write_file(d, "devices.allow" if rule.get("allow") else "devices.deny", line)

    # --- freezer ------------------------------------------------------------------

    def _freezer_state(self) -> str:
        return read_file(self._require("freezer", "freezer state"), "freezer.state").strip()

    def freeze(self) -> None:
        d = self._require("freezer", "freezer state")
        deadline = time.monotonic() + _FREEZE_TIMEOUT
        delay = 0.001
        while True:
            # Writing FROZEN again makes the kernel retry tasks that were busy.
            write_file(d, "freezer.state", "FROZEN")
            state = read_file(d, "freezer.state").strip()
            if state == "FROZEN":
                return
            if time.monotonic() > deadline:
                write_file(d, "freezer.state", "THAWED")
                raise CgroupError(
                    f"cgroup freezer.state: still {state} after {_FREEZE_TIMEOUT}s ({d})"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def thaw(self) -> None:
        d = self._require("freezer", "freezer state")
        write_file(d, "freezer.state", "THAWED")
        deadline = time.monotonic() + _FREEZE_TIMEOUT
        while read_file(d, "freezer.state").strip() != "THAWED":
            if time.monotonic() > deadline:
                raise CgroupError(
                    f"cgroup freezer.state: not THAWED after {_FREEZE_TIMEOUT}s ({d})"
                )
            time.sleep(0.005)

    def is_frozen(self) -> bool:
        if not self.has("freezer"):
            return False
        text = read_optional(self.dir("freezer"), "freezer.state")
        return text is not None and text.strip() == "FROZEN"

    # --- processes ------------------------------------------------------------------

    def pids(self) -> list[int]:
        return tree_pids(self.main_dir())

    def kill_all(self, sig: int) -> None:
        self.signal_frozen(sig, self.has("freezer") and os.path.isdir(self.dir("freezer")))

    # --- stats ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        st = empty_stats()
        if self.has("cpuacct"):
            d = self.dir("cpuacct")
            usage = st["cpu"]["usage"]
            usage["total"] = read_int(d, "cpuacct.usage")
            usage["percpu"] = _int_list(read_optional(d, "cpuacct.usage_percpu"))
            usage["percpu_kernel"] = _int_list(read_optional(d, "cpuacct.usage_percpu_sys"))
            usage["percpu_user"] = _int_list(read_optional(d, "cpuacct.usage_percpu_user"))
            ticks = read_keyed(d, "cpuacct.stat")
            hz = os.sysconf("SC_CLK_TCK") or 100
            usage["user"] = ticks.get("user", 0) * 1_000_000_000 // hz
            usage["kernel"] = ticks.get("system", 0) * 1_000_000_000 // hz
        if self.has("cpu"):
            cs = read_keyed(self.dir("cpu"), "cpu.stat")
            st["cpu"]["throttling"] = {
                "periods": cs.get("nr_periods", 0),
                "throttledPeriods": cs.get("nr_throttled", 0),
                "throttledTime": cs.get("throttled_time", 0),
            }
        if self.has("cpuset"):
            d = self.dir("cpuset")
            st["cpuset"] = {
                "cpus": _cpu_list(
                    read_optional(d, "cpuset.effective_cpus") or read_optional(d, "cpuset.cpus")
                ),
                "mems": _cpu_list(
                    read_optional(d, "cpuset.effective_mems") or read_optional(d, "cpuset.mems")
                ),
                "cpu_exclusive": read_int(d, "cpuset.cpu_exclusive"),
                "mem_hardwall": read_int(d, "cpuset.mem_hardwall"),
                "mem_exclusive": read_int(d, "cpuset.mem_exclusive"),
                "memory_migrate": read_int(d, "cpuset.memory_migrate"),
                "memory_spread_page": read_int(d, "cpuset.memory_spread_page"),
                "memory_spread_slab": read_int(d, "cpuset.memory_spread_slab"),
                "memory_pressure": read_int(d, "cpuset.memory_pressure"),
                "sched_load_balance": read_int(d, "cpuset.sched_load_balance"),
                "sched_relax_domain_level": read_int(d, "cpuset.sched_relax_domain_level"),
            }
        if self.has("memory"):
            d = self.dir("memory")
            mem = st["memory"]
            for key, prefix in (
                ("usage", "memory."),
                ("swap", "memory.memsw."),
                ("kernel", "memory.kmem."),
                ("kernelTCP", "memory.kmem.tcp."),
            ):
                mem[key] = memory_entry(
                    limit=read_int(d, prefix + "limit_in_bytes"),
                    usage=read_int(d, prefix + "usage_in_bytes"),
                    max_usage=read_int(d, prefix + "max_usage_in_bytes"),
                    failcnt=read_int(d, prefix + "failcnt"),
                )
            raw = read_keyed(d, "memory.stat")
            mem["raw"] = raw
            mem["cache"] = raw.get("cache", 0)
        if self.has("pids"):
            d = self.dir("pids")
            limit = read_int(d, "pids.max")
            st["pids"] = {
                "current": read_int(d, "pids.current"),
                "limit": 0 if limit == 2**64 - 1 else limit,
            }
        if self.has("blkio"):
            d = self.dir("blkio")
            bio = st["blkio"]

            def first(*names: str) -> str | None:
                for n in names:
                    text = read_optional(d, n)
                    if text is not None and text.strip() not in ("", "Total 0"):
                        return text
                return None

            bio["ioServiceBytesRecursive"] = parse_blkio_v1(
                first(
                    "blkio.io_service_bytes_recursive",
                    "blkio.bfq.io_service_bytes_recursive",
                    "blkio.throttle.io_service_bytes_recursive",
                )
            )
            bio["ioServicedRecursive"] = parse_blkio_v1(
                first(
                    "blkio.io_serviced_recursive",
                    "blkio.bfq.io_serviced_recursive",
                    "blkio.throttle.io_serviced_recursive",
                )
            )
            for key, name in (
                ("ioQueueRecursive", "blkio.io_queued_recursive"),
                ("ioServiceTimeRecursive", "blkio.io_service_time_recursive"),
                ("ioWaitTimeRecursive", "blkio.io_wait_time_recursive"),
                ("ioMergedRecursive", "blkio.io_merged_recursive"),
                ("ioTimeRecursive", "blkio.time_recursive"),
                ("sectorsRecursive", "blkio.sectors_recursive"),
            ):
                bio[key] = parse_blkio_v1(read_optional(d, name))
        if self.has("hugetlb"):
            d = self.dir("hugetlb")
            try:
                names = os.listdir(d)
            except OSError:
                names = []
            for n in sorted(names):
                if n.startswith("hugetlb.") and n.endswith(".usage_in_bytes"):
                    size = n[len("hugetlb.") : -len(".usage_in_bytes")]
                    st["hugetlb"][size] = {
                        "usage": read_int(d, n),
                        "max": read_int(d, f"hugetlb.{size}.max_usage_in_bytes"),
                        "failcnt": read_int(d, f"hugetlb.{size}.failcnt"),
                    }
        return st

    # --- OOM --------------------------------------------------------------------------

    def oom_kill_count(self) -> int:
        if not self.has("memory"):
            return 0
        return read_keyed(self.dir("memory"), "memory.oom_control").get("oom_kill", 0)

    def oom_event_fd(self) -> int | None:
        """An eventfd registered for OOM notifications on memory.oom_control.

        The kernel also signals it once when the cgroup is removed, so a reader
        should check :meth:`exists` (or oom_kill_count) before reporting an OOM.
        """
        if not self.has("memory"):
            return None
        d = self.dir("memory")
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ofd = os.open(os.path.join(d, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            os.close(efd)
            raise CgroupError(f"cgroup memory.oom_control: open: {e.strerror} ({d})") from e
        try:
            write_file(d, "cgroup.event_control", f"{efd} {ofd}")
        except CgroupError:
            os.close(efd)
            raise
        finally:
            os.close(ofd)
        return efd

    # --- teardown ---------------------------------------------------------------------

    def destroy(self) -> None:
        if self.path != "/" and any(os.path.isdir(d) for d in self.dirs()):
            self._kill_everything()
        # Sub-cgroups made inside ours (nested containers) go with it; parents
        # only while nobody else's cgroup is in them.
        remove_created(self.created, self.dirs())

    def _kill_everything(self) -> None:
        self.thaw_quietly()
        self.kill_until_empty(lambda: time.sleep(0.01))


def _int_list(text: str | None) -> list[int]:
    if not text:
        return []
    out: list[int] = []
    for x in text.split():
        try:
            out.append(int(x))
        except ValueError:
            continue
    return out


def _cpu_list(text: str | None) -> list[int]:
    """``0-3,5`` -> [0, 1, 2, 3, 5]."""
    out: list[int] = []
    if not text:
        return out
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            out.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            continue
    return out
