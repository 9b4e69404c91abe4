"""The shape of runc's ``events --stats`` data object (runc's types.Stats field names).

Every key is always present (zeros where a value is unknown): JSON decoders
that know runc's struct read the same values either way, and Python callers
can index without guards.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


MAX_U64 = 2**64 - 1


def memory_entry(
    limit: int = 0, usage: int = 0, max_usage: int = 0, failcnt: int = 0
) -> dict[str, int]:
    return {"limit": limit, "usage": usage, "max": max_usage, "failcnt": failcnt}


def empty_stats() -> dict[str, Any]:
    return {
        "cpu": {
            "usage": {
                "total": 0,
                "percpu": [],
                "percpu_kernel": [],
                "percpu_user": [],
                "kernel": 0,
                "user": 0,
            },
            "throttling": {"periods": 0, "throttledPeriods": 0, "throttledTime": 0},
        },
        "cpuset": {},
        "memory": {
            "cache": 0,
            "usage": memory_entry(),
            "swap": memory_entry(),
            "kernel": memory_entry(),
            "kernelTCP": memory_entry(),
            "raw": {},
        },
        "pids": {"current": 0, "limit": 0},
        "blkio": {
            "ioServiceBytesRecursive": [],
            "ioServicedRecursive": [],
            "ioQueueRecursive": [],
            "ioServiceTimeRecursive": [],
            "ioWaitTimeRecursive": [],
            "ioMergedRecursive": [],
            "ioTimeRecursive": [],
            "sectorsRecursive": [],
        },
        "hugetlb": {},
        "intel_rdt": {},
        "network_interfaces": None,
    }


def blkio_entry(major: int, minor: int, op: str, value: int) -> dict[str, Any]:
    return {"major": major, "minor": minor, "op": op, "value": value}


def parse_blkio_v1(text: str | None) -> list[dict[str, Any]]:
    """``8:0 Read 4096`` lines of a v1 blkio stat file (the Total lines are dropped)."""
    entries: list[dict[str, Any]] = []
    if not text:
        return entries
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3 or ":" not in fields[0]:
            continue
        major, _, minor = fields[0].partition(":")
        try:
            entries.append(blkio_entry(int(major), int(minor), fields[1], int(fields[2])))
        except ValueError:
            continue
    return entries


def parse_io_stat_v2(text: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(bytes, ios) entries from v2 io.stat ``8:0 rbytes=.. wbytes=.. rios=.. wios=..``."""
    service_bytes: list[dict[str, Any]] = []
    serviced: list[dict[str, Any]] = []
    if not text:
        return service_bytes, serviced
    names = {
        "rbytes": (service_bytes, "Read"),
        "wbytes": (service_bytes, "Write"),
        "dbytes": (service_bytes, "Discard"),
        "rios": (serviced, "Read"),
        "wios": (serviced, "Write"),
        "dios": (serviced, "Discard"),
    }
    for line in text.splitlines():
        fields = line.split()
        if not fields or ":" not in fields[0]:
            continue
        major_s, _, minor_s = fields[0].partition(":")
        try:
            major, minor = int(major_s), int(minor_s)
        except ValueError:
            continue
        for kv in fields[1:]:
            key, _, value = kv.partition("=")
            if key in names and value.isdigit():
                target, op = names[key]
                target.append(blkio_entry(major, minor, op, int(value)))
    return service_bytes, serviced
