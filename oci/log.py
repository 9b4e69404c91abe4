"""Error and debug logging in the shapes runc's callers parse.

With ``--log FILE`` every record goes to FILE (json: one object per line with
keys level, msg, time; text: logrus' key=value line) and an error's bare
message also goes to stderr, which is what containerd and podman show. Without
``--log`` the formatted record goes to stderr.
"""

from __future__ import annotations

import os
import sys
import time

from pysandbox.oci import jsonio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO


class RuntimeFailure(Exception):
    """An error the CLI reports to the caller and exits 1 on."""


def rfc3339(ts: float | None = None) -> str:
    """Seconds-precision UTC time as logrus writes it."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if ts is None else ts))


def rfc3339_nano(ns: int) -> str:
    """Go's time.RFC3339Nano in UTC: trailing zeros of the fraction dropped."""
    secs, frac = divmod(ns, 1_000_000_000)
    base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if frac:
        base += "." + f"{frac:09d}".rstrip("0")
    return base + "Z"


class Logger:
    def __init__(self, path: str | None = None, fmt: str = "text", debug: bool = False) -> None:
        self.path = path
        self.fmt = fmt
        self.debug_enabled = debug
        self._file: TextIO | None = None

    def _sink(self) -> TextIO:
        if self.path is None:
            return sys.stderr
        if self._file is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
            self._file = os.fdopen(fd, "a", buffering=1)
        return self._file

    def _format(self, level: str, msg: str) -> str:
        if self.fmt == "json":
            # logrus' JSONFormatter writes compact objects
            record = {"level": level, "msg": msg, "time": rfc3339()}
            return jsonio.dumps(record) + "\n"
        return f'time="{rfc3339()}" level={level} msg={jsonio.dumps(msg)}\n'

    def log(self, level: str, msg: str) -> None:
        try:
            self._sink().write(self._format(level, msg))
        except OSError:
            pass

    def error(self, msg: str) -> None:
        self.log("error", msg)
        if self.path is not None:
            sys.stderr.write(msg + "\n")

    def warning(self, msg: str) -> None:
        self.log("warning", msg)

    def debug(self, msg: str) -> None:
        if self.debug_enabled:
            self.log("debug", msg)
