"""oci/records.py: the named tuples made without typing behave as typing's do,
and what a container's start imports stays free of the heavy modules."""

from __future__ import annotations

import subprocess
import sys
import typing
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci.records import NamedTuple

PKGROOT = Path(__file__).resolve().parents[2] / "build" / "pkgroot"


def _point(base: Any) -> Any:
    class Point(base):  # type: ignore[misc]
        """A point."""

        x: int
        y: str = "a"

        def twice(self) -> int:
            return int(self.x) * 2

        @property
        def kind(self) -> str:
            return "point"

        @classmethod
        def at(cls, x: int) -> Any:
            return cls(x)

    return Point


@pytest.mark.parametrize("base", [NamedTuple, typing.NamedTuple], ids=["ours", "typing"])
def test_named_tuple_behaves_as_typing(base: Any) -> None:
    cls = _point(base)
    p: Any = cls(3)
    assert p == (3, "a") and tuple(p) == (3, "a") and issubclass(cls, tuple)
    assert hash(p) == hash((3, "a"))
    assert repr(p) == "Point(x=3, y='a')"
    assert p.twice() == 6 and p.kind == "point" and cls.at(4) == (4, "a")
    assert p._replace(y="z") == (3, "z")
    assert cls._fields == ("x", "y") and cls._field_defaults == {"y": "a"}
    assert cls.__doc__ == "A point." and cls.__module__ == __name__
    assert cls.__qualname__.endswith("Point")
    x, y = p
    assert (x, y) == (3, "a")
    with pytest.raises(AttributeError):
        p.x = 4
    with pytest.raises(TypeError):
        cls()


def test_named_tuple_refuses_what_typing_refuses() -> None:
    with pytest.raises(TypeError):

        class Bad(NamedTuple):
            x: int = 1
            y: int  # type: ignore[misc]  # what the test is about

    with pytest.raises(TypeError):

        class Super(NamedTuple):
            x: int

            def f(self) -> str:
                return super().__repr__()


def test_a_containers_start_imports_no_typing() -> None:
    """create, the sentry and the gofer import these (sentry/service.py _main,
    gofer/process.py). ``typing`` cost each process ~4-7 ms of CPU at start,
    on two CPUs shared with init; importlib ~1 ms; ``signal`` its enums."""
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(PKGROOT)!r}]\n"
        "import pysandbox.oci.cli, pysandbox.oci.lifecycle, pysandbox.oci.spawn\n"
        "import pysandbox.sentry.service, pysandbox.sentry.loop, pysandbox.sentry.confine\n"
        "import pysandbox.sentry.watchdog, pysandbox.sentry.tasks\n"
        "import pysandbox.syscalls.routes, pysandbox.syscalls.files, pysandbox.syscalls.procfs\n"
        "import pysandbox.syscalls.execve, pysandbox.syscalls.sockets, pysandbox.syscalls.sched\n"
        "import pysandbox.gofer.process, pysandbox.gofer.client\n"
        "heavy = {'typing', 'importlib', 'signal', 'dataclasses', 'inspect', 'socket'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout
