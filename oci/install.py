"""`pysandbox install` / `uninstall`: register the runtime in docker's daemon.json
(like `runsc install`), keeping everything else in the file."""

from __future__ import annotations

from pysandbox.oci.log import RuntimeFailure


def install(*, runtime: str, config: str, path: str | None, runtime_args: list[str]) -> str:
    raise RuntimeFailure("install: not built yet (issue 3)")


def uninstall(*, runtime: str, config: str) -> str:
    raise RuntimeFailure("uninstall: not built yet (issue 3)")
