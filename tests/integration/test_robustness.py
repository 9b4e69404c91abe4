"""Bad input changes nothing, and nothing leaks — with real containers.

Every test here either kills a pysandbox process (or the container's init)
at an awkward moment, feeds create something it must refuse, or runs
commands against one container concurrently. Afterwards the runtime's own
`delete` must leave no process, cgroup, mount or state directory, and no
Python traceback may ever reach the user.

Iteration counts are bounded so the whole file stays well under 90 s on two
cores.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CGROUP_ROOT, Bundle, Runner, wait_for

# --- observation helpers ---------------------------------------------------------


def _mounts_matching(needles: tuple[str, ...]) -> set[str]:
    out: set[str] = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if any(n in fields[4] or n in fields[3] for n in needles):
                out.add(f"{fields[0]} {fields[4]}")
    return out


def _cgroups_matching(needle: str) -> set[str]:
    """Every cgroup directory (any hierarchy, up to four levels) whose path contains needle."""
    found: set[str] = set()

    def walk(d: Path, depth: int) -> None:
        if depth > 4:
            return
        with contextlib.suppress(OSError):
            for entry in d.iterdir():
                if not entry.is_dir() or entry.is_symlink():
                    continue
                if needle in entry.name:
                    found.add(str(entry))
                walk(entry, depth + 1)

    for hierarchy in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else []:
        if hierarchy.is_dir() and not hierarchy.is_symlink():
            # Only descend where our containers can be: the top level and
            # directories named after the test's cgroup needle.
            with contextlib.suppress(OSError):
                for entry in hierarchy.iterdir():
                    if entry.is_dir() and needle in entry.name:
                        found.add(str(entry))
                        walk(entry, 2)
    return found


def _processes_matching(needles: tuple[str, ...]) -> set[str]:
    """Processes whose cgroup, root or command line mentions one of the needles."""
    out: set[str] = set()
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        texts: list[str] = []
        with contextlib.suppress(OSError):
            texts.append(Path(f"/proc/{name}/cgroup").read_text())
        with contextlib.suppress(OSError):
            texts.append(os.readlink(f"/proc/{name}/root"))
        with contextlib.suppress(OSError):
            texts.append(Path(f"/proc/{name}/cmdline").read_bytes().decode(errors="replace"))
        with contextlib.suppress(OSError):
            # A zombie waiting for its parent is gone for our purposes.
            stat = Path(f"/proc/{name}/stat").read_text()
            if stat[stat.rindex(")") + 2] in "ZX":
                continue
        joined = "\n".join(texts)
        if any(n in joined for n in needles):
            out.add(f"{name} {texts[-1][:80] if texts else ''}")
    return out


def _state_entries(runtime: Runner) -> list[str]:
    if not runtime.root.is_dir():
        return []
    return sorted(n for n in os.listdir(runtime.root) if n != ".cache")


class Snapshot:
    """What a container could leave behind: mounts, cgroups, processes, state."""

    def __init__(self, runtime: Runner, tmp: Path, needle: str) -> None:
        self.runtime = runtime
        self.tmp = tmp
        self.needle = needle
        self.value = self.take()

    def take(self) -> dict[str, Any]:
        return {
            "mounts": _mounts_matching((str(self.tmp), self.needle)),
            "cgroups": _cgroups_matching(self.needle),
            "processes": _processes_matching((str(self.tmp), self.needle)),
            "state": _state_entries(self.runtime),
        }

    def assert_unchanged(self, timeout: float = 3.0) -> None:
        deadline = time.monotonic() + timeout
        now = self.take()
        while now != self.value and time.monotonic() < deadline:
            time.sleep(0.05)
            now = self.take()
        diff = {k: (self.value[k], now[k]) for k in now if now[k] != self.value[k]}
        assert not diff, f"left behind (before, after): {diff}"


def assert_clean_error(res: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A failure the user can read: exit 1, no traceback, the expected words."""
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    assert "Exception ignored" not in res.stderr, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in res.stderr, res.stderr


def assert_no_traceback(res: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in res.stderr, res.stderr
    assert "Exception ignored" not in res.stderr, res.stderr


def _run_capture(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """subprocess.run with files instead of pipes (a container may inherit them)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.run(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, text=True, timeout=timeout
        )
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(argv, proc.returncode, out.read(), err.read())


def _popen(runtime: Runner, *args: str, err: Any = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        runtime.cmd(*args),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=err if err is not None else subprocess.DEVNULL,
    )


def _delete_all_trace(runtime: Runner, cid: str, *, force: bool) -> None:
    """delete must succeed (or find nothing) without a traceback."""
    args = ("delete", "--force", cid) if force else ("delete", cid)
    res = runtime(*args, timeout=30)
    assert_no_traceback(res)
    if res.returncode != 0:
        assert "does not exist" in res.stderr, res.stderr


def _gone(runtime: Runner, cid: str) -> bool:
    res = runtime("state", cid)
    assert_no_traceback(res)
    return res.returncode == 1 and "does not exist" in res.stderr


def _long_running(bundle: Bundle) -> None:
    bundle.args("sleep", "30")


# --- SIGKILL of pysandbox create -------------------------------------------------------


def test_sigkill_create_at_random_points(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """kill -9 the create process after 0..150 ms; delete must remove everything."""
    _long_running(bundle)
    seed = int(os.environ.get("PYSANDBOX_ROBUST_SEED", time.time_ns() % 1_000_000))
    rng = random.Random(seed)
    iterations = 24
    for i in range(iterations):
        # Most delays land inside create (~60 ms here), a few after it.
        delay = (
            rng.uniform(0, 0.15) if i % 4 == 3 else (i / iterations) * 0.07 + rng.uniform(0, 0.01)
        )
        one = f"{cid}-{i}"
        snap = Snapshot(runtime, tmp_path, one)
        proc = _popen(runtime, "create", "--bundle", str(bundle.path), one)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # State while half-created must still be readable (or absent), never a traceback.
        st = runtime("state", one)
        assert_no_traceback(st)
        if st.returncode == 0:
            assert json.loads(st.stdout)["status"] in ("creating", "created", "stopped")
        _delete_all_trace(runtime, one, force=i % 2 == 0)
        assert _gone(runtime, one), f"seed={seed} i={i} delay={delay:.3f}"
        try:
            snap.assert_unchanged()
        except AssertionError as e:
            raise AssertionError(f"seed={seed} i={i} delay={delay:.3f}: {e}") from None


def _hook(script: str) -> dict[str, Any]:
    return {"path": "/bin/sh", "args": ["sh", "-c", script]}


def test_sigkill_create_while_prestart_hook_runs(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """create is killed while a prestart hook sleeps: state says so, delete cleans up."""
    marker = tmp_path / "hook-started"
    _long_running(bundle)
    bundle.config["hooks"] = {"prestart": [_hook(f"echo $$ > {marker}; exec sleep 3")]}
    bundle.write()
    snap = Snapshot(runtime, tmp_path, cid)
    proc = _popen(runtime, "create", "--bundle", str(bundle.path), cid)
    try:
        wait_for(lambda: marker.exists() and marker.read_text().strip(), timeout=10)
        st = runtime.state(cid)
        assert st["status"] == "creating"
        assert st["pid"] > 0
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The container's init noticed its creator is gone and exited.
        wait_for(lambda: runtime.state(cid)["status"] == "stopped", timeout=5)
        res = runtime("delete", cid)
        assert res.returncode == 0, res.stderr
        assert _gone(runtime, cid)
    finally:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(marker.read_text()), signal.SIGKILL)
    snap.assert_unchanged()


def test_create_runtime_hook_kills_the_runtime(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """A createRuntime hook SIGKILLs its parent, pysandbox create, mid-create."""
    _long_running(bundle)
    bundle.config["hooks"] = {"createRuntime": [_hook("cat >/dev/null; kill -9 $PPID")]}
    bundle.write()
    snap = Snapshot(runtime, tmp_path, cid)
    res = runtime("create", "--bundle", str(bundle.path), cid)
    assert res.returncode == -signal.SIGKILL, (res.returncode, res.stderr)
    wait_for(lambda: runtime.state(cid)["status"] == "stopped", timeout=5)
    res = runtime("delete", cid)
    assert res.returncode == 0, res.stderr
    snap.assert_unchanged()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_create_interrupted_by_a_signal(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path, sig: signal.Signals
) -> None:
    """A catchable signal during create: it exits quietly; SIGINT even undoes itself."""
    marker = tmp_path / "hook-started"
    _long_running(bundle)
    bundle.config["hooks"] = {"prestart": [_hook(f"touch {marker}; exec sleep 3")]}
    bundle.write()
    snap = Snapshot(runtime, tmp_path, cid)
    with tempfile.TemporaryFile("w+") as err:
        proc = _popen(runtime, "create", "--bundle", str(bundle.path), cid, err=err)
        wait_for(marker.exists, timeout=10)
        proc.send_signal(sig)
        rc = proc.wait(timeout=10)
        err.seek(0)
        text = err.read()
    assert "Traceback" not in text, text
    assert rc != 0
    if sig == signal.SIGINT:
        assert _gone(runtime, cid)
    _delete_all_trace(runtime, cid, force=False)
    assert _gone(runtime, cid)
    snap.assert_unchanged()


def test_delete_waits_for_a_create_in_progress(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """delete during create neither breaks the create nor leaves half a container."""
    marker = tmp_path / "hook-started"
    _long_running(bundle)
    bundle.config["hooks"] = {"prestart": [_hook(f"touch {marker}; sleep 0.5")]}
    bundle.write()
    snap = Snapshot(runtime, tmp_path, cid)
    with tempfile.TemporaryFile("w+") as err:
        proc = _popen(runtime, "create", "--bundle", str(bundle.path), cid, err=err)
        wait_for(marker.exists, timeout=10)
        res = runtime("delete", cid)
        rc = proc.wait(timeout=30)
        err.seek(0)
        create_err = err.read()
    assert "Traceback" not in create_err
    assert rc == 0, create_err
    assert res.returncode == 0, res.stderr
    assert _gone(runtime, cid)
    snap.assert_unchanged()


# --- the container's init dies ------------------------------------------------------


def test_init_sigkilled_while_created(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    _long_running(bundle)
    snap = Snapshot(runtime, tmp_path, cid)
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    pid = runtime.state(cid)["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: runtime.state(cid)["status"] == "stopped")
    assert runtime.state(cid)["pid"] == 0
    res = runtime("start", cid)
    assert_clean_error(res, "stopped")
    res = runtime("delete", cid)
    assert res.returncode == 0, res.stderr
    snap.assert_unchanged()


def test_init_exits_right_after_start(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    bundle.args("true")
    snap = Snapshot(runtime, tmp_path, cid)
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    runtime("start", cid, check=True)
    wait_for(lambda: runtime.state(cid)["status"] == "stopped")
    assert runtime.state(cid)["pid"] == 0
    res = runtime("delete", cid)
    assert res.returncode == 0, res.stderr
    assert _gone(runtime, cid)
    snap.assert_unchanged()


def test_init_sigkilled_during_start(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """Race kill -9 of init against start: start succeeds or says stopped; never hangs."""
    _long_running(bundle)
    rng = random.Random(7)
    for i in range(6):
        one = f"{cid}-{i}"
        snap = Snapshot(runtime, tmp_path, one)
        runtime("create", "--bundle", str(bundle.path), one, check=True)
        pid = runtime.state(one)["pid"]
        with tempfile.TemporaryFile("w+") as err:
            proc = _popen(runtime, "start", one, err=err)
            time.sleep(rng.uniform(0, 0.03))
            os.kill(pid, signal.SIGKILL)
            rc = proc.wait(timeout=10)
            err.seek(0)
            text = err.read()
        assert "Traceback" not in text
        assert rc == 0 or "stopped" in text, text
        wait_for(lambda o=one: runtime.state(o)["status"] == "stopped")
        res = runtime("delete", one)
        assert res.returncode == 0, res.stderr
        snap.assert_unchanged()


def test_start_after_a_start_killed_mid_way(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """A start killed after it released init (but before it tidied up) leaves the
    exec fifo behind; the next start must not hang, and the state must heal."""
    _long_running(bundle)
    snap = Snapshot(runtime, tmp_path, cid)
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    # Exactly what a start killed between reading the fifo and unlinking it leaves:
    # the byte was consumed, the fifo is still there.
    fifo = runtime.root / cid / "exec.fifo"
    fd = os.open(fifo, os.O_RDONLY)
    try:
        assert os.read(fd, 1) == b"0"
    finally:
        os.close(fd)
    res = runtime("start", cid, timeout=10)
    assert_no_traceback(res)
    assert runtime.state(cid)["status"] == "running"
    runtime("delete", "--force", cid, check=True)
    snap.assert_unchanged()


def test_sigkill_start_at_random_points(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    _long_running(bundle)
    rng = random.Random(11)
    for i in range(6):
        one = f"{cid}-{i}"
        snap = Snapshot(runtime, tmp_path, one)
        runtime("create", "--bundle", str(bundle.path), one, check=True)
        proc = _popen(runtime, "start", one)
        time.sleep(rng.uniform(0, 0.04))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Whatever happened, a second start finishes: the container runs, or
        # init found its reader gone (EPIPE on the fifo, as with runc) and
        # exited, and the state says so.
        res = runtime("start", one, timeout=10)
        assert_no_traceback(res)
        status = runtime.state(one)["status"]
        if res.returncode == 0:
            assert status in ("running", "stopped")
        else:
            assert_clean_error(res)
            assert status in ("running", "stopped"), status
        res = runtime("delete", "--force", one)
        assert res.returncode == 0, res.stderr
        snap.assert_unchanged()


# --- the caller goes away in other ways ------------------------------------------------


def test_create_with_closed_stdout(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    bundle.args("sh", "-c", "echo hello")
    snap = Snapshot(runtime, tmp_path, cid)
    r, w = os.pipe()
    os.close(r)
    try:
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.run(
                runtime.cmd("create", "--bundle", str(bundle.path), cid),
                stdin=subprocess.DEVNULL,
                stdout=w,
                stderr=err,
                timeout=30,
            )
            err.seek(0)
            text = err.read()
    finally:
        os.close(w)
    assert "Traceback" not in text and "Exception ignored" not in text, text
    if proc.returncode == 0:
        runtime("start", cid, check=True)
        # echo dies of SIGPIPE or gets EPIPE; the container must not care.
        wait_for(lambda: runtime.state(cid)["status"] == "stopped", timeout=10)
    res = runtime("delete", cid)
    assert res.returncode == 0 or "does not exist" in res.stderr, res.stderr
    snap.assert_unchanged()


def test_workload_gets_default_signal_dispositions(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    """Python ignores SIGPIPE and SIGXFSZ; the workload must not inherit that."""
    bundle.args("sh", "-c", "grep SigIgn /proc/self/status")
    res = subprocess.run(
        runtime.cmd("run", "--bundle", str(bundle.path), cid),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        # Our own caller's ignores are not the runtime's to undo.
        restore_signals=True,
    )
    assert res.returncode == 0, res.stderr
    ignored = int(res.stdout.split()[1], 16)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        assert not ignored & (1 << (sig - 1)), f"{sig.name} is ignored in the container"


@contextlib.contextmanager
def _dead_socket(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "dead.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(1)
    s.close()  # the file stays; nobody listens: ECONNREFUSED
    yield path


@contextlib.contextmanager
def _closing_listener(tmp_path: Path) -> Iterator[str]:
    """A listener that accepts and hangs up at once."""
    import threading

    path = str(tmp_path / "rude.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.listen(4)
    stop = threading.Event()

    def serve() -> None:
        s.settimeout(0.1)
        while not stop.is_set():
            try:
                c, _ = s.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            c.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield path
    finally:
        stop.set()
        t.join()
        s.close()


@contextlib.contextmanager
def _regular_file(tmp_path: Path) -> Iterator[str]:
    p = tmp_path / "not-a-socket"
    p.write_text("")
    yield str(p)


@contextlib.contextmanager
def _missing(tmp_path: Path) -> Iterator[str]:
    yield str(tmp_path / "nowhere.sock")


@pytest.mark.parametrize(
    "make_socket",
    [_dead_socket, _regular_file, _missing, _closing_listener],
    ids=["refused", "regular-file", "missing", "hangs-up"],
)
def test_console_socket_gone(
    runtime: Runner,
    bundle: Bundle,
    cid: str,
    tmp_path: Path,
    make_socket: Callable[[Path], contextlib.AbstractContextManager[str]],
) -> None:
    bundle.config["process"]["terminal"] = True
    _long_running(bundle)
    snap = Snapshot(runtime, tmp_path, cid)
    with make_socket(tmp_path) as path:
        res = runtime("create", "--bundle", str(bundle.path), "--console-socket", path, cid)
    if make_socket is _closing_listener and res.returncode == 0:
        # The kernel may have queued the pty before the listener hung up; the
        # container then exists and must delete cleanly.
        runtime("delete", "--force", cid, check=True)
    else:
        assert_clean_error(res)
        assert "console" in res.stderr or "socket" in res.stderr, res.stderr
    assert _gone(runtime, cid)
    snap.assert_unchanged()


# --- concurrency -------------------------------------------------------------------------


def test_parallel_creates_with_the_same_id(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    _long_running(bundle)
    snap = Snapshot(runtime, tmp_path, cid)
    argv = runtime.cmd("create", "--bundle", str(bundle.path), cid)
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _i: _run_capture(argv), range(20)))
    ok = [r for r in results if r.returncode == 0]
    failed = [r for r in results if r.returncode != 0]
    assert len(ok) == 1, [r.stderr for r in results]
    for r in failed:
        assert_clean_error(r, f"container with id exists: {cid}")
    st = runtime.state(cid)
    assert st["status"] == "created"
    assert st["id"] == cid
    assert _processes_matching((cid,)), "the winner's init is gone"
    runtime("start", cid, check=True)
    assert runtime.state(cid)["status"] == "running"
    runtime("delete", "--force", cid, check=True)
    snap.assert_unchanged()


def test_parallel_lifecycles_with_distinct_ids(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    _long_running(bundle)
    snap = Snapshot(runtime, tmp_path, cid)
    ids = [f"{cid}-{i}" for i in range(20)]

    def up(one: str) -> subprocess.CompletedProcess[str]:
        res = _run_capture(runtime.cmd("create", "--bundle", str(bundle.path), one))
        if res.returncode != 0:
            return res
        return _run_capture(runtime.cmd("start", one))

    with ThreadPoolExecutor(20) as pool:
        started = list(pool.map(up, ids))
    for r in started:
        assert r.returncode == 0, r.stderr
    listed = json.loads(runtime("list", "--format", "json", check=True).stdout)
    assert sorted(c["id"] for c in listed) == sorted(ids)
    assert all(c["status"] == "running" for c in listed)
    with ThreadPoolExecutor(20) as pool:
        deleted = list(
            pool.map(lambda one: _run_capture(runtime.cmd("delete", "--force", one)), ids)
        )
    for r in deleted:
        assert r.returncode == 0, r.stderr
        assert_no_traceback(r)
    snap.assert_unchanged()


def test_concurrent_kill_delete_state_on_one_container(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    _long_running(bundle)
    for round_ in range(3):
        one = f"{cid}-{round_}"
        snap = Snapshot(runtime, tmp_path, one)
        runtime("create", "--bundle", str(bundle.path), one, check=True)
        if round_ != 1:  # round 1 stays created
            runtime("start", one, check=True)
        argvs = (
            [runtime.cmd("state", one)] * 8
            + [runtime.cmd("kill", one, "KILL")] * 4
            + [runtime.cmd("kill", "--all", one, "TERM")] * 2
            + [runtime.cmd("delete", "--force", one)] * 4
            + [runtime.cmd("delete", one)] * 2
        )
        random.Random(round_).shuffle(argvs)
        with ThreadPoolExecutor(len(argvs)) as pool:
            results = list(pool.map(_run_capture, argvs))
        for argv, r in zip(argvs, results, strict=True):
            assert_no_traceback(r)
            verb = argv[3]
            if r.returncode == 0:
                if verb == "state":
                    doc = json.loads(r.stdout)
                    assert doc["id"] == one
                    # "paused": kill --all freezes the cgroup (v1) while it
                    # signals, so nothing forks in between; runc does too.
                    assert doc["status"] in ("created", "running", "paused", "stopped")
                continue
            assert r.returncode == 1, (argv, r.returncode, r.stderr)
            lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
            assert len(lines) == 1, r.stderr
            assert any(
                w in r.stderr
                for w in ("does not exist", "not running", "not stopped", "no such process")
            ), (argv, r.stderr)
        # Someone deleted it (a forced delete always can); nothing is left.
        _delete_all_trace(runtime, one, force=True)
        assert _gone(runtime, one)
        snap.assert_unchanged()


def test_parallel_deletes_of_one_container(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """Exactly one delete removes the container; the rest find it gone, and the
    losers never leave a stray file (a lock file re-created in a dying directory)."""
    bundle.args("true")
    for round_ in range(4):
        one = f"{cid}-{round_}"
        snap = Snapshot(runtime, tmp_path, one)
        runtime("create", "--bundle", str(bundle.path), one, check=True)
        argv = runtime.cmd("delete", one)
        with ThreadPoolExecutor(10) as pool:
            results = list(pool.map(lambda _i, a=argv: _run_capture(a), range(10)))
        assert sum(r.returncode == 0 for r in results) >= 1
        for r in results:
            assert_no_traceback(r)
            if r.returncode != 0:
                assert_clean_error(r, "does not exist")
        assert _gone(runtime, one)
        snap.assert_unchanged()


def test_delete_of_a_create_killed_right_after_mkdir(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """What create leaves if killed between its mkdir and its lock file: the id
    is taken (like runc) until delete removes the empty directory."""
    snap = Snapshot(runtime, tmp_path, cid)
    runtime.root.mkdir(parents=True, exist_ok=True)
    (runtime.root / cid).mkdir()
    res = runtime("create", "--bundle", str(bundle.path), cid)
    assert_clean_error(res, "container with id exists")
    st = runtime("state", cid)
    assert_clean_error(st, "does not exist")
    res = runtime("delete", cid)
    assert res.returncode == 0, res.stderr
    assert _gone(runtime, cid)
    snap.assert_unchanged()


# --- every error path leaves nothing ---------------------------------------------------


def _cfg_malformed(b: Bundle, _cid: str) -> tuple[str, ...]:
    (b.path / "config.json").write_text('{"ociVersion": "1.0.2", "process": ')
    return ("config.json",)


def _cfg_missing_rootfs(b: Bundle, _cid: str) -> tuple[str, ...]:
    b.config["root"]["path"] = "no-such-rootfs"
    b.write()
    return ("no-such-rootfs",)


def _cfg_missing_executable(b: Bundle, _cid: str) -> tuple[str, ...]:
    b.args("nope")
    return ("exec:", "nope", "executable file not found in $PATH")


def _cfg_missing_mount_source(b: Bundle, _cid: str) -> tuple[str, ...]:
    b.config["mounts"].append(
        {
            "destination": "/data",
            "type": "bind",
            "source": str(b.path / "no-such-source"),
            "options": ["rbind"],
        }
    )
    b.write()
    # The message names the missing source, not just the destination.
    return ("/data", "no-such-source", "no such file or directory")


def _cfg_bad_cpu_quota(b: Bundle, _cid: str) -> tuple[str, ...]:
    b.config["linux"]["resources"]["cpu"] = {"quota": 500, "period": 100000}
    b.write()
    return ("cpu",)


def _cfg_cgroups_path_dotdot(b: Bundle, cid: str) -> tuple[str, ...]:
    b.config["linux"]["cgroupsPath"] = f"/{cid}/../../escape"
    b.write()
    return ("..",)


def _cfg_missing_ns_path(b: Bundle, _cid: str) -> tuple[str, ...]:
    for ns in b.config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = "/proc/self/ns/no-such-ns"
    b.write()
    return ("no-such-ns",)


def _cfg_not_a_namespace(b: Bundle, _cid: str) -> tuple[str, ...]:
    for ns in b.config["linux"]["namespaces"]:
        if ns["type"] == "ipc":
            ns["path"] = "/etc/hostname"
    b.write()
    return ("joining namespace /etc/hostname",)


def _cfg_failing_prestart(b: Bundle, _cid: str) -> tuple[str, ...]:
    b.config["hooks"] = {"prestart": [_hook("echo no network for you >&2; exit 3")]}
    b.write()
    return ("prestart", "no network for you")


def _cfg_failing_create_container(b: Bundle, _cid: str) -> tuple[str, ...]:
    b.config["hooks"] = {"createContainer": [_hook("exit 4")]}
    b.write()
    return ("createContainer",)


def _cfg_rejected_uid_map(b: Bundle, _cid: str) -> tuple[str, ...]:
    linux = b.config["linux"]
    linux["namespaces"].append({"type": "user"})
    # Two ranges mapping the same container ids: the kernel refuses (EINVAL).
    linux["uidMappings"] = [
        {"containerID": 0, "hostID": 100000, "size": 10},
        {"containerID": 5, "hostID": 200000, "size": 10},
    ]
    linux["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    b.write()
    return ()


def _cfg_bad_sysctl(b: Bundle, _cid: str) -> tuple[str, ...]:
    b.config["linux"]["sysctl"] = {"net.ipv4.no_such_knob": "1"}
    b.write()
    return ("no_such_knob",)


ERROR_CASES: dict[str, Callable[[Bundle, str], tuple[str, ...]]] = {
    "malformed-config": _cfg_malformed,
    "missing-rootfs": _cfg_missing_rootfs,
    "missing-executable": _cfg_missing_executable,
    "missing-mount-source": _cfg_missing_mount_source,
    "cpu-quota-below-1000": _cfg_bad_cpu_quota,
    "cgroups-path-dotdot": _cfg_cgroups_path_dotdot,
    "missing-namespace-path": _cfg_missing_ns_path,
    "not-a-namespace": _cfg_not_a_namespace,
    "failing-prestart-hook": _cfg_failing_prestart,
    "failing-createContainer-hook": _cfg_failing_create_container,
    "rejected-uid-map": _cfg_rejected_uid_map,
    "unknown-sysctl": _cfg_bad_sysctl,
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_failed_create_leaves_nothing(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path, case: str
) -> None:
    _long_running(bundle)
    needles = ERROR_CASES[case](bundle, cid)
    snap = Snapshot(runtime, tmp_path, cid)
    res = runtime("create", "--bundle", str(bundle.path), cid)
    assert_clean_error(res, *needles)
    assert _gone(runtime, cid)
    res = runtime("delete", cid)
    assert_clean_error(res, "does not exist")
    snap.assert_unchanged()
    # The id is free again: a good config under the same id works.
    bundle.config = json.loads(json.dumps(bundle.config))
    fresh = Bundle(bundle.path, _good_config())
    fresh.write()
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    runtime("delete", "--force", cid, check=True)
    snap.assert_unchanged()


def _good_config() -> dict[str, Any]:
    from pysandbox.oci.specgen import default_spec

    return default_spec(["sleep", "30"], terminal=False)


def test_failed_run_leaves_nothing(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """run goes through the same paths: a bad executable leaves nothing either."""
    bundle.args("nope")
    snap = Snapshot(runtime, tmp_path, cid)
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert_clean_error(res, "executable file not found")
    snap.assert_unchanged()
