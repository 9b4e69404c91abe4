"""``list`` and ``ps``: output byte-compatible with runc's."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Sequence

from pysandbox.oci.lifecycle import Runtime
from pysandbox.oci.log import Logger, RuntimeFailure
from pysandbox.oci.state import STOPPED


def _owner(path: str) -> str:
    try:
        uid = os.stat(path).st_uid
    except OSError:
        return ""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"


def tabwrite(rows: Sequence[Sequence[str]], *, minwidth: int = 12, padding: int = 3) -> str:
    """Go's text/tabwriter with (minwidth 12, padding 3, pad ' '), as runc uses it:
    every column but the last is padded to max(minwidth, widest cell + padding)."""
    if not rows:
        return ""
    ncols = max(len(r) for r in rows)
    widths = [
        max(minwidth, max(len(r[c]) for r in rows if c < len(r)) + padding)
        for c in range(ncols - 1)
    ]
    out = []
    for r in rows:
        cells = [cell.ljust(widths[i]) if i < ncols - 1 else cell for i, cell in enumerate(r)]
        out.append("".join(cells))
    return "\n".join(out) + "\n"


def list_containers(root: str, log: Logger, *, fmt: str, quiet: bool) -> str:
    rt = Runtime(root, log)
    docs = []
    for cid in rt.store.ids():
        try:
            rec = rt.store.load(cid)
        except RuntimeFailure:
            continue
        doc = rt.state_document(rec, owner=_owner(rt.store.dir(cid)))
        docs.append(doc)
    if quiet:
        return "".join(d["id"] + "\n" for d in docs)
    if fmt == "json":
        # runc encodes a nil slice: "null" when there is nothing to list.
        return json.dumps(docs or None, separators=(",", ":")) + "\n"
    if fmt != "table":
        raise RuntimeFailure(f"invalid format option: {fmt}")
    rows = [["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]]
    for d in docs:
        rows.append([d["id"], str(d["pid"]), d["status"], d["bundle"], d["created"], d["owner"]])
    return tabwrite(rows)


def ps(root: str, log: Logger, cid: str, *, fmt: str, ps_args: Sequence[str]) -> str:
    rt = Runtime(root, log)
    rec = rt.store.load(cid)
    if rt.status(rec) == STOPPED and not rec.cgroup:
        return "[]\n" if fmt == "json" else ""
    pids = rt._cgroup(rec).pids() if rec.cgroup else [rec.pid]
    if fmt == "json":
        return json.dumps(pids, separators=(",", ":")) + "\n"
    if fmt != "table":
        raise RuntimeFailure(f"invalid format option: {fmt}")
    args = list(ps_args) or ["-ef"]
    try:
        out = subprocess.run(["ps", *args], capture_output=True, text=True, check=True).stdout
    except FileNotFoundError:
        raise RuntimeFailure("ps: executable file not found in $PATH") from None
    except subprocess.CalledProcessError as e:
        raise RuntimeFailure(f"ps: {e.stderr.strip() or e}") from None
    lines = out.splitlines()
    if not lines:
        return ""
    header = lines[0].split()
    try:
        col = header.index("PID")
    except ValueError:
        raise RuntimeFailure("couldn't find PID field in ps output") from None
    wanted = set(pids)
    kept = [lines[0]]
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > col and fields[col].isdigit() and int(fields[col]) in wanted:
            kept.append(line)
    return "\n".join(kept) + "\n"
