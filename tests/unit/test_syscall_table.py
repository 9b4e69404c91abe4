"""syscalls/x86_64.tsv and syscalls/table.py: the table against this machine's headers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pysandbox.syscalls import table

UNISTD = Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
# Added after the Linux 6.1 headers this machine has (6.5 .. 6.17; 6.18 adds none).
NEWER = {
    451: "cachestat",
    452: "fchmodat2",
    453: "map_shadow_stack",
    454: "futex_wake",
    455: "futex_wait",
    456: "futex_requeue",
    457: "statmount",
    458: "listmount",
    459: "lsm_get_self_attr",
    460: "lsm_set_self_attr",
    461: "lsm_list_modules",
    462: "mseal",
    463: "setxattrat",
    464: "getxattrat",
    465: "listxattrat",
    466: "removexattrat",
    467: "open_tree_attr",
    468: "file_getattr",
    469: "file_setattr",
}


def header_numbers() -> dict[int, str]:
    if not UNISTD.exists():
        pytest.skip(f"{UNISTD} not installed (libc6-dev / linux-libc-dev)")
    out: dict[int, str] = {}
    for m in re.finditer(r"^#define __NR_(\w+)\s+(\d+)\s*$", UNISTD.read_text(), re.M):
        out[int(m.group(2))] = m.group(1)
    return out


def test_table_loads_and_is_ordered() -> None:
    calls = table.all_syscalls()
    assert len(calls) > 370
    assert [s.nr for s in calls] == sorted(s.nr for s in calls)
    assert table.max_nr() == calls[-1].nr == 469


def test_names_and_numbers_unique() -> None:
    calls = table.all_syscalls()
    assert len({s.name for s in calls}) == len(calls)
    assert len({s.nr for s in calls}) == len(calls)


def test_numbers_match_this_machines_headers() -> None:
    headers = header_numbers()
    for nr, name in headers.items():
        sc = table.by_nr(nr)
        assert sc is not None, f"{nr} ({name}) missing from the table"
        assert sc.name == name, f"{nr}: table says {sc.name}, header says {name}"
    # Everything the table has beyond the headers is a known newer call.
    extra = {s.nr: s.name for s in table.all_syscalls() if s.nr not in headers}
    assert extra == {nr: n for nr, n in NEWER.items() if nr not in headers}


def test_gaps_are_absent() -> None:
    for nr in (335, 387, 400, 423, 470, 1000):
        assert table.by_nr(nr) is None
    assert table.by_name("no_such_call") is None


def test_lookup() -> None:
    sc = table.by_name("openat")
    assert sc is not None and sc.nr == 257 and sc.area == "fs"
    assert sc.args == ("dirfd", "path", "flags", "mode")
    assert sc.takes_path
    assert table.by_nr(39) == table.by_name("getpid")
    getpid = table.by_name("getpid")
    assert getpid is not None and getpid.args == () and not getpid.takes_path


def test_argument_kinds_and_areas_are_from_the_vocabulary() -> None:
    for s in table.all_syscalls():
        assert set(s.args) <= table.ARG_KINDS, s.name
        assert s.area in table.AREAS, s.name
        assert len(s.args) <= 6, s.name


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0\tread\tfd\tio\n0\twrite\tfd\tio\n", "duplicate number 0"),
        ("0\tread\tfd\tio\n1\tread\tfd\tio\n", "duplicate name 'read'"),
        ("0\tread\tfd,bogus\tio\n", "unknown argument kind"),
        ("0\tread\tfd\tnowhere\n", "unknown area"),
        ("x\tread\tfd\tio\n", "bad number"),
        ("0\tread\tfd\n", "expected 4 tab-separated columns"),
    ],
)
def test_malformed_table_is_refused(text: str, message: str) -> None:
    with pytest.raises(table.TableError, match=re.escape(message)):
        table.parse_table(text, "t.tsv")


def test_names_and_argc_agree_with_the_validated_table() -> None:
    # The sentry reads names with a plain split (start-up cost); it must give
    # exactly what the validating loader gives.
    names, argc = table.names_and_argc()
    entries = table.all_syscalls()
    assert names == {e.nr: e.name for e in entries}
    assert argc == {e.nr: len(e.args) for e in entries}
