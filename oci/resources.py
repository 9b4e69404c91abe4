"""``update`` and ``events``: the container's cgroup, changed and watched."""

from __future__ import annotations

import json
import os
import re
import select
import sys
import time

from pysandbox.oci.lifecycle import Runtime
from pysandbox.oci.log import Logger, RuntimeFailure
from pysandbox.oci.state import STOPPED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pysandbox.oci.cgroups import CgroupManager
    from pysandbox.oci.cli import Parsed

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}


def parse_bytes(text: str) -> int:
    """docker's RAMInBytes: 64m, 1g, 512k, plain bytes; -1 is unlimited."""
    t = text.strip().lower()
    if t == "-1":
        return -1
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?", t)
    if not m:
        raise RuntimeFailure(f"invalid size: {text!r}")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise RuntimeFailure(f"invalid value for --{flag}: {text!r}") from None


# flag -> (section, key, parser)
_FLAGS: dict[str, tuple[str, str, str]] = {
    "blkio-weight": ("blockIO", "weight", "int"),
    "cpu-period": ("cpu", "period", "int"),
    "cpu-quota": ("cpu", "quota", "int"),
    "cpu-share": ("cpu", "shares", "int"),
    "cpu-rt-period": ("cpu", "realtimePeriod", "int"),
    "cpu-rt-runtime": ("cpu", "realtimeRuntime", "int"),
    "cpuset-cpus": ("cpu", "cpus", "str"),
    "cpuset-mems": ("cpu", "mems", "str"),
    "kernel-memory": ("memory", "kernel", "bytes"),
    "kernel-memory-tcp": ("memory", "kernelTCP", "bytes"),
    "memory": ("memory", "limit", "bytes"),
    "memory-reservation": ("memory", "reservation", "bytes"),
    "memory-swap": ("memory", "swap", "bytes"),
    "pids-limit": ("pids", "limit", "int"),
}


def resources_from(p: Parsed) -> dict[str, Any]:
    from pysandbox.oci.config import ConfigError, parse_resources

    res: dict[str, Any] = {}
    source = p.opt("resources")
    if source:
        try:
            if source == "-":
                raw = sys.stdin.read()
            else:
                with open(source, encoding="utf-8") as f:
                    raw = f.read()
            data = json.loads(raw)
        except OSError as e:
            raise RuntimeFailure(f"resources file {source}: {e.strerror}") from None
        except ValueError as e:
            raise RuntimeFailure(f"invalid resources JSON: {e}") from None
        try:
            res = parse_resources(data, "resources")
        except ConfigError as e:
            raise RuntimeFailure(str(e)) from None
    for flag, (section, key, kind) in _FLAGS.items():
        v = p.opt(flag)
        if v is None:
            continue
        value: Any = v if kind == "str" else parse_bytes(v) if kind == "bytes" else _int(v, flag)
        res.setdefault(section, {})[key] = value
    if p.opt("l3-cache-schema") or p.opt("mem-bw-schema"):
        raise RuntimeFailure("Intel RDT is not supported by pysandbox")
    return _drop_zero(res)


def _drop_zero(res: dict[str, Any]) -> dict[str, Any]:
    """docker sends 0 for "leave as is" (see the reference logs); 0 is never a
    limit anyone means for these fields, so it must not reach the cgroup."""
    out: dict[str, Any] = {}
    for section, body in res.items():
        if isinstance(body, dict):
            kept = {
                k: v
                for k, v in body.items()
                if not (isinstance(v, int) and not isinstance(v, bool) and v == 0)
            }
            if kept:
                out[section] = kept
        elif body not in (None, [], {}):
            out[section] = body
    return out


def update(root: str, log: Logger, cid: str, p: Parsed) -> None:
    from pysandbox.oci.cgroups import CgroupError

    rt = Runtime(root, log)
    with rt.store.locked(cid):
        rec = rt.store.load(cid)
        if rt.status(rec) == STOPPED:
            raise RuntimeFailure("container not running")
        res = resources_from(p)
        try:
            rt._cgroup(rec).apply(res)
        except CgroupError as e:
            raise RuntimeFailure(str(e)) from None


def _interval(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if not m:
        raise RuntimeFailure(f"invalid interval {text!r}")
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2) or "s"]
    value = float(m.group(1)) * scale
    if value <= 0:
        raise RuntimeFailure("duration interval must be greater than 0")
    return value


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _stats(cg: CgroupManager, state_dir: str, sandboxed: bool) -> dict[str, Any]:
    """runc's stats object; a sandboxed container's also carries the sentry's
    counters under "pysandbox" (callers that parse runc's types ignore keys
    they do not know): {"syscalls": {disposition: {name: count}}}."""
    data = cg.stats()
    if sandboxed:
        from pysandbox.sentry.service import request_stats

        counts = request_stats(state_dir)
        if counts is not None:
            data["pysandbox"] = {"syscalls": counts}
    return data


def events(root: str, log: Logger, cid: str, *, stats_only: bool, interval: str) -> int:
    rt = Runtime(root, log)
    rec = rt.store.load(cid)
    if rt.status(rec) == STOPPED:
        raise RuntimeFailure("container not running")
    cg = rt._cgroup(rec)
    state_dir = rt.store.dir(cid)
    sandboxed = bool(rec.sentry_pid)
    if stats_only:
        _emit({"type": "stats", "id": cid, "data": _stats(cg, state_dir, sandboxed)})
        return 0
    period = _interval(interval)
    oom_fd = cg.oom_event_fd()
    seen_ooms = cg.oom_kill_count()
    next_stats = time.monotonic()
    try:
        while rt.status(rec) != STOPPED:
            now = time.monotonic()
            if now >= next_stats:
                _emit({"type": "stats", "id": cid, "data": _stats(cg, state_dir, sandboxed)})
                next_stats = now + period
            wait = max(0.0, min(next_stats - time.monotonic(), 0.5))
            if oom_fd is not None:
                ready, _, _ = select.select([oom_fd], [], [], wait)
                if ready:
                    try:
                        os.read(oom_fd, 4096)
                    except BlockingIOError:
                        pass
            else:
                time.sleep(wait)
            count = cg.oom_kill_count()
            if count > seen_ooms:
                seen_ooms = count
                _emit({"type": "oom", "id": cid})
    finally:
        if oom_fd is not None:
            os.close(oom_fd)
    return 0
