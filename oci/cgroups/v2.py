"""cgroup v2: one directory in the unified hierarchy."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Mapping

from .. import kernel
from . import (
    CgroupError,
    CgroupManager,
    log,
    mkdir_p,
    read_int,
    read_keyed,
    read_optional,
    remove_created,
    tree_pids,
    v2_mountpoint,
    write_file,
)
from .stats import MAX_U64, empty_stats, memory_entry, parse_io_stat_v2

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Literal


_FREEZE_TIMEOUT = 5.0
# Files whose prefix is not a controller: always present in every cgroup.
_CORE_PREFIXES = frozenset({"cgroup"})


def shares_to_weight(shares: int) -> int:
    """cpu.shares (2..262144) -> cpu.weight (1..10000), the conversion runc/crun use."""
    if shares == 0:
        return 0
    return 1 + ((int(shares) - 2) * 9999) // 262142


def blkio_weight_to_io_weight(weight: int) -> int:
    """blkio.weight (10..1000) -> io.weight (1..10000)."""
    if weight == 0:
        return 0
    return 1 + ((int(weight) - 10) * 9999) // 990


def swap_to_v2(swap: int | None, limit: int | None) -> int | None:
    """OCI memory.swap is memory+swap; v2 memory.swap.max is swap alone.

    None: leave unset; -1: unlimited ("max").
    """
    if swap is None or swap == 0:
        return -1 if limit == -1 and swap == 0 else None
    if swap == -1:
        return -1
    if limit is None or limit == 0:
        raise CgroupError("cgroup memory.swap.max: cannot set a swap limit without a memory limit")
    if limit == -1:
        raise CgroupError("cgroup memory.swap.max: swap limit with an unlimited memory limit")
    if swap < limit:
        raise CgroupError(
            f"cgroup memory.swap.max: memory+swap limit {swap} is below the memory limit {limit}"
        )
    return int(swap) - int(limit)


def _max(value: int) -> str:
    return "max" if value < 0 else str(value)


class V2Manager(CgroupManager):
    mode: Literal["v1", "v2"] = "v2"

    def __init__(
        self,
        path: str,
        mountpoint: str | None = None,
        created: list[str] | None = None,
    ) -> None:
        self.path = path
        self.mountpoint = mountpoint or v2_mountpoint()
        self.created: list[str] = list(created or [])
        self.dir = (
            os.path.join(self.mountpoint, path.lstrip("/")) if path != "/" else self.mountpoint
        )

    # --- state ------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> V2Manager:
        return cls(
            str(d["path"]), mountpoint=d.get("mountpoint"), created=list(d.get("created", []))
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": "v2",
            "path": self.path,
            "mountpoint": self.mountpoint,
            "created": list(self.created),
        }

    def main_dir(self) -> str:
        return self.dir

    # --- directories and controllers -------------------------------------------------

    def _ancestors(self) -> list[str]:
        """The mountpoint and every directory between it and our cgroup (exclusive)."""
        chain = [self.mountpoint]
        current = self.mountpoint
        parts = [p for p in self.path.split("/") if p]
        for part in parts[:-1]:
            current = os.path.join(current, part)
            chain.append(current)
        return chain if parts else []

    def controllers(self) -> set[str]:
        """Controllers available in our cgroup (its cgroup.controllers)."""
        return set((read_optional(self.dir, "cgroup.controllers") or "").split())

    def _enable(self, wanted: set[str] | None) -> None:
        """Enable controllers in each ancestor's subtree_control, top-down (best effort)."""
        for d in self._ancestors():
            available = set((read_optional(d, "cgroup.controllers") or "").split())
            enabled = set((read_optional(d, "cgroup.subtree_control") or "").split())
            todo = (available if wanted is None else available & wanted) - enabled
            for ctrl in sorted(todo):
                try:
                    write_file(d, "cgroup.subtree_control", f"+{ctrl}")
                except CgroupError as e:
                    log.debug("cgroup: cannot enable %s in %s: %s", ctrl, d, e)

    def create(self) -> None:
        self.created.extend(d for d in mkdir_p(self.mountpoint, self.path) if d not in self.created)
        self._enable(None)

    def _need(self, name: str) -> None:
        ctrl = name.split(".", 1)[0]
        if ctrl in _CORE_PREFIXES:
            return
        if ctrl in self.controllers():
            return
        self._enable({ctrl})
        have = self.controllers()
        if ctrl not in have:
            raise CgroupError(
                f"cgroup {name}: the {ctrl} controller is not available in {self.dir} "
                f"(cgroup.controllers: {' '.join(sorted(have)) or 'none'})"
            )

    def _write(self, name: str, value: str | int) -> None:
        self._need(name)
        write_file(self.dir, name, value)

    def add_process(self, pid: int) -> None:
        write_file(self.dir, "cgroup.procs", pid)

    # --- resources -------------------------------------------------------------------

    def apply(self, resources: Mapping[str, Any] | None) -> None:
        if not resources:
            return
        if resources.get("memory"):
            self._apply_memory(resources["memory"])
        if resources.get("cpu"):
            self._apply_cpu(resources["cpu"])
        pids = resources.get("pids")
        if pids and pids.get("limit") is not None:
            limit = int(pids["limit"])
            self._write("pids.max", "max" if limit <= 0 else limit)
        if resources.get("blockIO"):
            self._apply_io(resources["blockIO"])
        for entry in resources.get("hugepageLimits") or []:
            self._write(f"hugetlb.{entry['pageSize']}.max", int(entry["limit"]))
        net = resources.get("network")
        if net and (net.get("classID") is not None or net.get("priorities")):
            log.warning("cgroup: linux.resources.network is not supported on cgroup v2; ignored")
        if resources.get("rdma"):
            for dev, limits in resources["rdma"].items():
                parts = [dev]
                if limits.get("hcaHandles") is not None:
                    parts.append(f"hca_handle={limits['hcaHandles']}")
                if limits.get("hcaObjects") is not None:
                    parts.append(f"hca_object={limits['hcaObjects']}")
                self._write("rdma.max", " ".join(parts))
        if resources.get("devices"):
            self._apply_devices(resources["devices"])
        for key, value in (resources.get("unified") or {}).items():
            if "/" in key or key in ("", ".", "..") or key.startswith("."):
                raise CgroupError(f"cgroup {key}: invalid unified key")
            self._need(key)
            if not os.path.exists(os.path.join(self.dir, key)):
                raise CgroupError(f"cgroup {key}: no such cgroup file in {self.dir}")
            write_file(self.dir, key, str(value))

    def _apply_devices(self, rules: list[Mapping[str, Any]]) -> None:
        """The device rules as an eBPF program on the cgroup (see :mod:`.devices_bpf`);
        a later apply (``update``) replaces the program. The cgroup keeps it
        attached until it is removed: nothing to pin, nothing to clean up."""
        from . import devices_bpf

        devices_bpf.install(self.dir, devices_bpf.compile_rules(rules))

    def _apply_memory(self, mem: Mapping[str, Any]) -> None:
        limit = mem.get("limit")
        swap = swap_to_v2(mem.get("swap"), limit)
        if swap is not None:
            self._need("memory.swap.max")
            if os.path.exists(os.path.join(self.dir, "memory.swap.max")):
                write_file(self.dir, "memory.swap.max", _max(swap))
            elif swap != -1:
                log.warning("cgroup: swap accounting is off (no memory.swap.max); swap ignored")
        if limit is not None and limit != 0:
            self._write("memory.max", _max(int(limit)))
        if mem.get("reservation") is not None and mem["reservation"] != 0:
            self._write("memory.low", _max(int(mem["reservation"])))
        if mem.get("disableOOMKiller"):
            log.warning("cgroup: memory.disableOOMKiller is not supported on cgroup v2; ignored")
        sw = mem.get("swappiness")
        if sw is not None and int(sw) != -1 and int(sw) < 2**63:
            log.warning("cgroup: memory.swappiness is not supported on cgroup v2; ignored")
        if mem.get("kernel") or mem.get("kernelTCP"):
            log.warning("cgroup: kernel memory limits do not exist on cgroup v2; ignored")

    def _apply_cpu(self, cpu: Mapping[str, Any]) -> None:
        if cpu.get("shares"):
            self._write("cpu.weight", shares_to_weight(int(cpu["shares"])))
        quota, period = cpu.get("quota"), cpu.get("period")
        if (quota is not None and quota != 0) or (period is not None and period != 0):
            self._need("cpu.max")
            cur = (read_optional(self.dir, "cpu.max") or "").split()
            cur_quota = cur[0] if cur else "max"
            cur_period = cur[1] if len(cur) > 1 else "100000"
            q = cur_quota
            if quota is not None and quota != 0:
                q = "max" if int(quota) < 0 else str(int(quota))
            p = str(int(period)) if period else cur_period
            write_file(self.dir, "cpu.max", f"{q} {p}")
        if cpu.get("burst") is not None:
            self._write("cpu.max.burst", int(cpu["burst"]))
        if cpu.get("idle") is not None:
            self._write("cpu.idle", int(cpu["idle"]))
        if cpu.get("realtimeRuntime") or cpu.get("realtimePeriod"):
            raise CgroupError("cgroup cpu.rt_runtime_us: realtime scheduling is not in cgroup v2")
        if cpu.get("cpus"):
            self._write("cpuset.cpus", str(cpu["cpus"]))
        if cpu.get("mems"):
            self._write("cpuset.mems", str(cpu["mems"]))

    def _apply_io(self, bio: Mapping[str, Any]) -> None:
        bfq = os.path.exists(os.path.join(self.dir, "io.bfq.weight"))
        if bio.get("weight"):
            if bfq:
                self._write("io.bfq.weight", int(bio["weight"]))
            else:
                self._write("io.weight", f"default {blkio_weight_to_io_weight(int(bio['weight']))}")
        for wd in bio.get("weightDevice") or []:
            if wd.get("weight"):
                dev = f"{int(wd['major'])}:{int(wd['minor'])}"
                if bfq:
                    self._write("io.bfq.weight", f"{dev} {int(wd['weight'])}")
                else:
                    self._write(
                        "io.weight", f"{dev} {blkio_weight_to_io_weight(int(wd['weight']))}"
                    )
        if bio.get("leafWeight"):
            log.warning("cgroup: blockIO.leafWeight does not exist on cgroup v2; ignored")
        for key, field in (
            ("throttleReadBpsDevice", "rbps"),
            ("throttleWriteBpsDevice", "wbps"),
            ("throttleReadIOPSDevice", "riops"),
            ("throttleWriteIOPSDevice", "wiops"),
        ):
            for td in bio.get(key) or []:
                rate = int(td["rate"])
                self._write(
                    "io.max",
                    f"{int(td['major'])}:{int(td['minor'])} {field}={rate if rate > 0 else 'max'}",
                )

    # --- freezer ------------------------------------------------------------------------

    def _events(self) -> dict[str, int]:
        return read_keyed(self.dir, "cgroup.events")

    def _set_frozen(self, frozen: bool) -> None:
        write_file(self.dir, "cgroup.freeze", 1 if frozen else 0)
        deadline = time.monotonic() + _FREEZE_TIMEOUT
        want = 1 if frozen else 0
        delay = 0.001
        while self._events().get("frozen", 0) != want:
            if time.monotonic() > deadline:
                if frozen:
                    write_file(self.dir, "cgroup.freeze", 0)
                raise CgroupError(
                    f"cgroup cgroup.freeze: 'frozen {want}' not reached in "
                    f"{_FREEZE_TIMEOUT}s ({self.dir})"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def freeze(self) -> None:
        self._set_frozen(True)

    def thaw(self) -> None:
        self._set_frozen(False)

    def is_frozen(self) -> bool:
        return self._events().get("frozen", 0) == 1

    # --- processes -------------------------------------------------------------------------

    def pids(self) -> list[int]:
        return tree_pids(self.dir)

    def kill_all(self, sig: int) -> None:
        if sig == kernel.SIGKILL and os.path.exists(os.path.join(self.dir, "cgroup.kill")):
            write_file(self.dir, "cgroup.kill", 1)
            return
        self.signal_frozen(sig, os.path.isdir(self.dir))

    # --- stats ------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        st = empty_stats()
        d = self.dir
        cs = read_keyed(d, "cpu.stat")
        st["cpu"]["usage"].update(
            total=cs.get("usage_usec", 0) * 1000,
            user=cs.get("user_usec", 0) * 1000,
            kernel=cs.get("system_usec", 0) * 1000,
        )
        st["cpu"]["throttling"] = {
            "periods": cs.get("nr_periods", 0),
            "throttledPeriods": cs.get("nr_throttled", 0),
            "throttledTime": cs.get("throttled_usec", 0) * 1000,
        }
        if os.path.exists(os.path.join(d, "memory.current")):
            raw = read_keyed(d, "memory.stat")
            events = read_keyed(d, "memory.events")
            usage = read_int(d, "memory.current")
            limit = read_int(d, "memory.max")
            swap_usage = read_int(d, "memory.swap.current")
            swap_limit = read_int(d, "memory.swap.max")
            mem = st["memory"]
            mem["raw"] = raw
            mem["cache"] = raw.get("file", 0)
            mem["usage"] = memory_entry(
                limit=limit,
                usage=usage,
                max_usage=read_int(d, "memory.peak"),
                failcnt=events.get("max", 0),
            )
            # Like runc: v2 swap figures are reported as memory+swap, the v1 meaning.
            mem["swap"] = memory_entry(
                limit=MAX_U64
                if MAX_U64 in (limit, swap_limit)
                else min(MAX_U64, limit + swap_limit),
                usage=usage + swap_usage,
                max_usage=0,
                failcnt=read_keyed(d, "memory.swap.events").get("max", 0),
            )
        if os.path.exists(os.path.join(d, "pids.current")):
            limit = read_int(d, "pids.max")
            st["pids"] = {
                "current": read_int(d, "pids.current"),
                "limit": 0 if limit == MAX_U64 else limit,
            }
        else:
            st["pids"]["current"] = len(self.pids())
        service_bytes, serviced = parse_io_stat_v2(read_optional(d, "io.stat"))
        st["blkio"]["ioServiceBytesRecursive"] = service_bytes
        st["blkio"]["ioServicedRecursive"] = serviced
        try:
            names = sorted(os.listdir(d))
        except OSError:
            names = []
        for n in names:
            if n.startswith("hugetlb.") and n.endswith(".current") and n.count(".") == 2:
                size = n[len("hugetlb.") : -len(".current")]
                st["hugetlb"][size] = {
                    "usage": read_int(d, n),
                    "max": read_int(d, f"hugetlb.{size}.max"),
                    "failcnt": read_keyed(d, f"hugetlb.{size}.events").get("max", 0),
                }
        if os.path.exists(os.path.join(d, "cpuset.cpus.effective")):
            from .v1 import _cpu_list

            st["cpuset"] = {
                "cpus": _cpu_list(read_optional(d, "cpuset.cpus.effective")),
                "mems": _cpu_list(read_optional(d, "cpuset.mems.effective")),
            }
        return st

    # --- OOM --------------------------------------------------------------------------------

    def oom_kill_count(self) -> int:
        return read_keyed(self.dir, "memory.events").get("oom_kill", 0)

    def oom_event_fd(self) -> int | None:
        """An inotify fd watching memory.events (None without the memory controller).

        It becomes readable whenever memory.events changes (an OOM, or hitting
        memory.high/max); compare :meth:`oom_kill_count` to tell what happened,
        and drain it with os.read.
        """
        return self._watch("memory.events")

    def events_fd(self) -> int | None:
        """An inotify fd that becomes readable when cgroup.events changes (populated/frozen)."""
        return self._watch("cgroup.events")

    def _watch(self, name: str) -> int | None:
        path = os.path.join(self.dir, name)
        if not os.path.exists(path):
            return None
        fd = kernel.inotify_init1(kernel.IN_CLOEXEC | kernel.IN_NONBLOCK)
        try:
            kernel.inotify_add_watch(fd, path, kernel.IN_MODIFY)
        except OSError as e:
            os.close(fd)
            raise CgroupError(f"cgroup {name}: inotify: {e.strerror} ({self.dir})") from e
        return fd

    def _wait_for_events(self) -> None:
        """Until cgroup.events changes (the cgroup empties), at most 50 ms."""
        fd = self.events_fd()
        if fd is None:
            time.sleep(0.01)
            return
        try:
            if self._events().get("populated", 0):
                select.select([fd], [], [], 0.05)
        finally:
            os.close(fd)

    # --- teardown ---------------------------------------------------------------------------

    def destroy(self) -> None:
        if self.path != "/" and os.path.isdir(self.dir):
            self._kill_everything()
        remove_created(self.created, [self.dir])

    def _kill_everything(self) -> None:
        if os.path.exists(os.path.join(self.dir, "cgroup.kill")):
            write_file(self.dir, "cgroup.kill", 1)
        else:
            self.thaw_quietly()
        self.kill_until_empty(self._wait_for_events)
        if self.is_frozen():
            try:
                self.thaw()
            except CgroupError:
                pass
