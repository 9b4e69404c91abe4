"""`pysandbox install` / `uninstall`: register the runtime in docker's daemon.json
(like `runsc install`), keeping everything else in the file.

The file is only ever replaced whole (a temporary file in the same directory,
fsync, rename), so dockerd never reads half of it; before an existing file is
changed a copy of it is kept next to it (``daemon.json.bak``, or
``daemon.json.bak.<time>`` when an older backup is already there). A file that
is not valid JSON is left alone: guessing what it meant could lose settings.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pysandbox.oci.log import RuntimeFailure

# Names dockerd keeps for its built-in runtime; configuring them is an error there.
RESERVED = frozenset({"runc", "io.containerd.runc.v2", "io.containerd.runtime.v1.linux"})

APPLY_HINT = "restart dockerd (or send it SIGHUP, which reloads runtimes) to apply"


def default_binary(argv0: str | None = None) -> str:
    """The launcher that is running, as an absolute path.

    Symlinks are kept, not followed: a link such as /usr/local/bin/pysandbox is the
    stable name an administrator chose, and its target (a virtualenv inside a work
    tree) may move. When pysandbox was not started through an executable (``python
    -m ...``), the ``pysandbox`` found on PATH is used.
    """
    arg = sys.argv[0] if argv0 is None else argv0
    candidate: str | None = None
    if arg and not arg.endswith(".py") and arg not in ("-c", "-m"):
        candidate = arg if os.sep in arg else shutil.which(arg)
    if candidate is None or not _is_executable(candidate):
        candidate = shutil.which("pysandbox")
    if candidate is None or not _is_executable(candidate):
        raise RuntimeFailure(
            "install: cannot tell which binary docker should run; pass --path /path/to/pysandbox"
        )
    return os.path.abspath(candidate)


def _is_executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _load(config: Path) -> dict[str, Any] | None:
    """The parsed daemon.json, None when there is no file. Empty is ``{}``."""
    try:
        text = config.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RuntimeFailure(f"cannot read {config}: {e.strerror}") from None
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise RuntimeFailure(
            f"{config} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            "nothing changed: fix the file first"
        ) from None
    if not isinstance(doc, dict):
        raise RuntimeFailure(f"{config}: the top level is not a JSON object; nothing changed")
    runtimes = doc.get("runtimes")
    if runtimes is not None and not isinstance(runtimes, dict):
        raise RuntimeFailure(f'{config}: "runtimes" is not a JSON object; nothing changed')
    return doc


def _backup(config: Path) -> Path:
    """Copy the current file aside; never overwrite an earlier backup."""
    target = config.with_name(config.name + ".bak")
    if target.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = config.with_name(f"{config.name}.bak.{stamp}")
        n = 1
        while target.exists():
            target = config.with_name(f"{config.name}.bak.{stamp}.{n}")
            n += 1
    shutil.copy2(config, target)
    return target


def _write(config: Path, doc: dict[str, Any]) -> None:
    """Replace the file atomically, keeping its mode and owner."""
    config.parent.mkdir(parents=True, exist_ok=True)
    try:
        st: os.stat_result | None = config.stat()
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(prefix=f".{config.name}.", dir=config.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(doc, indent=4) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if st is not None:
            os.chmod(tmp, st.st_mode & 0o7777)
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except PermissionError:
                pass
        else:
            os.chmod(tmp, 0o644)
        os.replace(tmp, config)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dirfd = os.open(config.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def _check_name(runtime: str) -> None:
    if not runtime:
        raise RuntimeFailure("install: the runtime name must not be empty")
    if runtime in RESERVED:
        raise RuntimeFailure(
            f"install: {runtime!r} is dockerd's built-in runtime; pick another name"
        )


def install(*, runtime: str, config: str, path: str | None, runtime_args: list[str]) -> str:
    """Add (or update) ``runtimes[runtime]`` in daemon.json; returns what was done."""
    _check_name(runtime)
    binary = os.path.abspath(path) if path else default_binary()
    if not _is_executable(binary):
        raise RuntimeFailure(f"install: {binary} is not an executable file")
    cfg = Path(config)
    doc = _load(cfg)
    existed = doc is not None
    doc = {} if doc is None else doc
    entry: dict[str, Any] = {"path": binary}
    if runtime_args:
        entry["runtimeArgs"] = list(runtime_args)
    runtimes: dict[str, Any] = doc.setdefault("runtimes", {})
    old = runtimes.get(runtime)
    if old == entry:
        return f'runtime "{runtime}" is already in {cfg} as {json.dumps(entry)}; nothing changed'
    runtimes[runtime] = entry
    backup = _backup(cfg) if existed else None
    _write(cfg, doc)
    verb = "updated" if old is not None else "added"
    note = f" (previous file saved as {backup})" if backup else ""
    return f'{verb} runtime "{runtime}" in {cfg}: {json.dumps(entry)}{note}; {APPLY_HINT}'


def uninstall(*, runtime: str, config: str) -> str:
    """Remove ``runtimes[runtime]`` from daemon.json; returns what was done."""
    _check_name(runtime)
    cfg = Path(config)
    doc = _load(cfg)
    if doc is None:
        return f"{cfg} does not exist; nothing changed"
    runtimes = doc.get("runtimes")
    if not runtimes or runtime not in runtimes:
        return f'runtime "{runtime}" is not in {cfg}; nothing changed'
    if doc.get("default-runtime") == runtime:
        raise RuntimeFailure(
            f'{cfg}: "default-runtime" is "{runtime}"; dockerd would not start without it. '
            "Set another default-runtime first; nothing changed"
        )
    del runtimes[runtime]
    if not runtimes:
        del doc["runtimes"]
    backup = _backup(cfg)
    _write(cfg, doc)
    return f'removed runtime "{runtime}" from {cfg} (previous file saved as {backup}); {APPLY_HINT}'
