"""The x86_64 system call table, loaded from ``x86_64.tsv`` (data, not code).

The table lists every number Linux defines for the 64-bit x86 ABI; numbers it
does not list (the unused range 335..423, anything above :func:`max_nr`) are
not system calls, and every policy answers them ENOSYS. Loading is lazy and
cached: nothing is read until the first lookup, so importing this module
costs nothing on the paths that do not need the table.
"""

from __future__ import annotations

import os

from pysandbox.oci.records import record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final

__all__ = [
    "AREAS",
    "ARG_KINDS",
    "PATH_KINDS",
    "Syscall",
    "TableError",
    "all_syscalls",
    "by_name",
    "by_nr",
    "max_nr",
    "names_and_argc",
    "parse_table",
]

_DATA: Final = os.path.join(os.path.dirname(os.path.abspath(__file__)), "x86_64.tsv")

AREAS: Final[tuple[str, ...]] = (
    "fs",
    "io",
    "process",
    "signal",
    "time",
    "net",
    "info",
    "mm",
    "ipc",
    "security",
    "misc",
)

ARG_KINDS: Final[frozenset[str]] = frozenset(
    {
        "fd",
        "dirfd",
        "path",
        "str",
        "ptr_in",
        "ptr_out",
        "ptr_inout",
        "buf_in",
        "buf_out",
        "iov_in",
        "iov_out",
        "size",
        "int",
        "uint",
        "flags",
        "mode",
        "cmd",
        "pid",
        "uid",
        "gid",
        "signal",
        "off",
        "addr",
        "id",
        "sockaddr_in",
        "sockaddr_out",
    }
)

# Argument kinds that name a file system object: a syscall with one of these
# is resolved by the sentry (or refused), never let through to the host.
PATH_KINDS: Final[frozenset[str]] = frozenset({"path"})


class TableError(Exception):
    """The data file is malformed; the message names the line."""


@record
class Syscall:
    nr: int
    name: str
    args: tuple[str, ...]
    area: str

    @property
    def takes_path(self) -> bool:
        return any(a in PATH_KINDS for a in self.args)


@record
class _Table:
    ordered: tuple[Syscall, ...]
    names: dict[str, Syscall]
    nrs: dict[int, Syscall]


_table: _Table | None = None


def _parse(text: str, source: str) -> _Table:
    ordered: list[Syscall] = []
    names: dict[str, Syscall] = {}
    nrs: dict[int, Syscall] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{source}:{lineno}"
        cols = line.split("\t")
        if len(cols) != 4:
            raise TableError(f"{where}: expected 4 tab-separated columns, got {len(cols)}")
        nr_s, name, args_s, area = cols
        try:
            nr = int(nr_s)
        except ValueError:
            raise TableError(f"{where}: bad number {nr_s!r}") from None
        if nr < 0 or nr >= 0x40000000:
            raise TableError(f"{where}: number {nr} outside the x86_64 range")
        args = () if args_s == "-" else tuple(args_s.split(","))
        bad = [a for a in args if a not in ARG_KINDS]
        if bad:
            raise TableError(f"{where}: {name}: unknown argument kind(s) {bad}")
        if len(args) > 6:
            raise TableError(f"{where}: {name}: more than 6 arguments")
        if area not in AREAS:
            raise TableError(f"{where}: {name}: unknown area {area!r}")
        if name in names:
            raise TableError(f"{where}: duplicate name {name!r}")
        if nr in nrs:
            raise TableError(f"{where}: duplicate number {nr} ({nrs[nr].name}, {name})")
        sc = Syscall(nr, name, args, area)
        ordered.append(sc)
        names[name] = sc
        nrs[nr] = sc
    ordered.sort(key=lambda s: s.nr)
    return _Table(tuple(ordered), names, nrs)


def _load() -> _Table:
    global _table
    if _table is None:
        with open(_DATA, encoding="utf-8") as f:
            _table = _parse(f.read(), os.path.basename(_DATA))
    return _table


def all_syscalls() -> tuple[Syscall, ...]:
    """Every syscall of the table, by number."""
    return _load().ordered


def by_name(name: str) -> Syscall | None:
    return _load().names.get(name)


def by_nr(nr: int) -> Syscall | None:
    return _load().nrs.get(nr)


def max_nr() -> int:
    """The highest number the table defines."""
    return _load().ordered[-1].nr


def names_and_argc() -> tuple[dict[int, str], dict[int, int]]:
    """{number: name} and {number: argument count}, read straight from the data.

    For the sentry's logs and stats, which need nothing else: a plain split
    of the lines costs ~0.1 ms, the validating load ~1.5 ms, and the sentry
    reads this while the container's init is starting, on the same CPUs.
    The table's own tests validate the same file.
    """
    names: dict[int, str] = {}
    argc: dict[int, int] = {}
    with open(_DATA, encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            nr, name, args = line.split("\t", 3)[:3]
            names[int(nr)] = name
            argc[int(nr)] = len(args.split(",")) if args and args != "-" else 0
    return names, argc


def parse_table(text: str, source: str = "<text>") -> tuple[Syscall, ...]:
    """Parse table text (for tests and tools); raises :class:`TableError`."""
    return _parse(text, source).ordered
