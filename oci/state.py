"""The state store: one directory per container under ``--root``.

Layout of ``<root>/<id>/``:

- ``state.json``  what we know of the container (written atomically);
- ``exec.fifo``   present while the container is *created*: init blocks
  opening it for writing until ``start`` opens it for reading;
- ``lock``        locked (fcntl record lock) by create while it builds the
  container and by every command that changes it, so concurrent calls from
  a shim never interleave.

A directory without ``state.json`` is a create that died half way; ``delete``
cleans it up from what ``state.json.partial`` recorded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator

from pysandbox.oci import jsonio
from pysandbox.oci.log import RuntimeFailure
from pysandbox.oci.records import as_dict, field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DEFAULT_ROOT = "/run/pysandbox"
STATE_FILE = "state.json"
EXEC_FIFO = "exec.fifo"
LOCK_FILE = "lock"


CREATING = "creating"
CREATED = "created"
RUNNING = "running"
PAUSED = "paused"
STOPPED = "stopped"


_ID_PUNCTUATION = frozenset("_+-.")


def _valid_id_chars(container_id: str) -> bool:
    """runc's ^[\\w+\\-.]+$ without importing re: letters, digits, _ + - ."""
    return all(c.isalnum() or c in _ID_PUNCTUATION for c in container_id)


def validate_id(container_id: str) -> None:
    if not container_id or container_id in (".", "..") or not _valid_id_chars(container_id):
        raise RuntimeFailure("invalid container ID format")


@record
class ContainerRecord:
    """What ``state.json`` holds. ``status`` is only what create recorded;
    the live status is derived from the process (see ``lifecycle.status``)."""

    id: str
    bundle: str
    rootfs: str
    created_ns: int
    status: str = CREATING
    pid: int = 0
    pid_start: int = 0  # /proc/PID/stat starttime, guards against pid reuse
    owner: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup: dict[str, Any] = field(default_factory=dict)
    # Hooks that run after create returns (poststart, poststop), kept so
    # start/delete need not re-read a bundle that may be gone by then.
    hooks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)  # OCI type -> path or "" (new)
    console_used: bool = False
    # --sandbox sentry (the default): the profile exec must install too, and the
    # sentry process (pid + start time) delete must not leave behind.
    sandbox: str = "none"
    profile: str = ""
    sentry_pid: int = 0
    sentry_start: int = 0
    # The container's gofer (gofer/process.py), which the sentry's file calls
    # go through; delete kills it with the sentry.
    gofer_pid: int = 0
    gofer_start: int = 0
    # --overlay as chosen at create (oci/overlay.py); root:dir's per-container
    # upper layer, which delete removes.
    overlay: str = ""
    overlay_dir: str = ""

    def to_json(self) -> str:
        return jsonio.dumps(as_dict(self))

    @classmethod
    def from_json(cls, text: str) -> ContainerRecord:
        data = jsonio.loads(text)
        known = {k: v for k, v in data.items() if k in {n for n, _ in cls.__record_fields__}}  # type: ignore[attr-defined]
        return cls(**known)


class StateStore:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)

    def dir(self, container_id: str) -> str:
        return os.path.join(self.root, container_id)

    def exists(self, container_id: str) -> bool:
        return os.path.isdir(self.dir(container_id))

    def create_dir(self, container_id: str) -> str:
        validate_id(container_id)
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        path = self.dir(container_id)
        try:
            os.mkdir(path, 0o711)
        except FileExistsError:
            raise RuntimeFailure(f"container with id exists: {container_id}") from None
        return path

    @contextlib.contextmanager
    def creating(self, container_id: str) -> Iterator[str]:
        """Make the container's directory and hold its lock while create fills it.

        mkdir decides which of several concurrent creates of one id wins; the
        winner then holds the lock until create is done (or undone), so a
        concurrent ``delete`` waits instead of tearing down half a container.
        """
        path = self.create_dir(container_id)
        fd = os.open(
            os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        try:
            _lock(fd)
            yield path
        finally:
            os.close(fd)

    def ids(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if os.path.isdir(os.path.join(self.root, n)))

    def load(self, container_id: str) -> ContainerRecord:
        validate_id(container_id)
        path = os.path.join(self.dir(container_id), STATE_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                return ContainerRecord.from_json(f.read())
        except FileNotFoundError:
            partial = path + ".partial"
            if os.path.exists(partial):
                with open(partial, encoding="utf-8") as f:
                    return ContainerRecord.from_json(f.read())
            raise RuntimeFailure("container does not exist") from None
        except (ValueError, TypeError) as e:
            raise RuntimeFailure(f"container state is corrupt: {e}") from None

    def save(self, record: ContainerRecord, *, partial: bool = False) -> None:
        """Atomically replace the record (write a temp file, then rename)."""
        name = STATE_FILE + (".partial" if partial else "")
        final = os.path.join(self.dir(record.id), name)
        tmp = final + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, record.to_json().encode())
        finally:
            os.close(fd)
        os.rename(tmp, final)
        if not partial:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(final + ".partial")

    @contextlib.contextmanager
    def locked(self, container_id: str) -> Iterator[None]:
        """Hold the container's lock; fails with runc's wording if it is gone.

        The lock is a POSIX record lock (fcntl F_SETLKW), not flock: it belongs
        to this process alone, so the container's init, forked while create
        holds it, never inherits it, and it dies with a killed command.
        Raises :class:`Fragment` for a directory without a lock file (what a
        create killed right after its mkdir leaves).
        """
        validate_id(container_id)
        path = self.dir(container_id)
        fd = self._open_lock(path)
        try:
            _lock(fd)
            # Deleted while we waited (the directory may even be a new one by now).
            if os.fstat(fd).st_nlink == 0 or not os.path.isdir(path):
                raise RuntimeFailure("container does not exist")
            yield
        finally:
            os.close(fd)

    @staticmethod
    def _open_lock(path: str) -> int:
        # Never O_CREAT: a lock file created in a directory that delete is
        # emptying would make its rmdir fail and leave the directory behind.
        lock = os.path.join(path, LOCK_FILE)
        deadline = time.monotonic() + 0.25
        while True:
            try:
                return os.open(lock, os.O_RDWR | os.O_CLOEXEC)
            except FileNotFoundError:
                if not os.path.isdir(path):
                    raise RuntimeFailure("container does not exist") from None
            # A create between its mkdir and its lock file, or one killed there.
            if time.monotonic() > deadline:
                raise Fragment("container does not exist")
            time.sleep(0.005)

    def remove(self, container_id: str) -> None:
        path = self.dir(container_id)
        for _attempt in range(10):
            for name in os.listdir(path) if os.path.isdir(path) else []:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(path, name))
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                # Someone wrote a file meanwhile (a temp file of a racing save).
                if e.errno != errno.ENOTEMPTY:
                    raise
        os.rmdir(path)


class Fragment(RuntimeFailure):
    """A state directory without a lock file: a create killed right after mkdir."""


def _lock(fd: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_EX)


def write_file_atomic(path: str, data: str) -> None:
    """Write a file the way runc writes --pid-file: temp file then rename."""
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError as e:
        # name the file the caller asked for, not our temporary one
        raise OSError(e.errno, e.strerror, path) from None
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def process_start_time(pid: int) -> int:
    """Field 22 of /proc/PID/stat (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return 0
    rest = raw[raw.rindex(b")") + 2 :].split()
    return int(rest[19])


def process_state(pid: int) -> str:
    """The one-letter state of /proc/PID/stat ('' if gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    return raw[raw.rindex(b")") + 2 :].split()[0].decode()


CACHE_ENV = "PYSANDBOX_CACHE_DIR"
SYSTEM_CACHE = "/var/cache/pysandbox"


def cache_dir(root: str) -> str:
    """Where compiled seccomp programs and policies are cached.

    Not under the state root: callers (containerd, docker) own that
    directory and expect to find only containers in it. Root uses one
    system-wide cache (entries are keyed by content or file identity, so
    roots can share it); others keep it beside their state.
    """
    env = os.environ.get(CACHE_ENV)
    if env:
        return env
    return SYSTEM_CACHE if os.geteuid() == 0 else os.path.join(root, ".cache")
