"""The workload's path calls go through the sentry and the gofer (syscalls/files.py),
in real containers: the answers are the kernel's (compared with runc, line by
line), the gofer runs confined beside the sentry and goes with it, and the
kernel's own view of the root is read-only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runner, wait_for
from tests.integration.helpers import run_runc
from tests.integration.inside import mountinfo

PROBES = Path(__file__).parent / "probes"


def _bundle(tmp: Path, busybox_rootfs: Path, name: str, *argv: str) -> Bundle:
    from pysandbox.oci.specgen import default_spec

    path = tmp / name
    path.mkdir()
    shutil.copytree(busybox_rootfs, path / "rootfs", symlinks=True)
    config = default_spec(list(argv), terminal=False)
    config["root"]["readonly"] = False
    return Bundle(path, config).write()


@pytest.fixture(scope="module")
def files_probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exe = tmp_path_factory.mktemp("probe") / "files-probe"
    res = subprocess.run(
        ["gcc", "-static", "-O1", "-Wall", "-o", str(exe), str(PROBES / "files.c")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    return exe


def test_path_calls_answer_as_the_kernel_does(
    runtime: Runner, busybox_rootfs: Path, tmp_path: Path, files_probe: Path
) -> None:
    ours = _bundle(tmp_path, busybox_rootfs, "ours", "/files-probe")
    shutil.copy(files_probe, ours.rootfs / "files-probe")
    res = runtime("--strace", "run", "--bundle", str(ours.path), "files-probe")
    assert res.returncode == 0, res.stderr
    theirs = _bundle(tmp_path, busybox_rootfs, "theirs", "/files-probe")
    shutil.copy(files_probe, theirs.rootfs / "files-probe")
    ref = run_runc(tmp_path, theirs, "files-probe-runc")
    assert ref.returncode == 0, ref.stderr
    mismatches = [
        (a, b)
        for a, b in zip(res.stdout.splitlines(), ref.stdout.splitlines(), strict=False)
        if a != b
    ]
    assert not mismatches and res.stdout == ref.stdout, mismatches
    assert "readdir" in res.stdout
    # and the bundle was not written (the overlay took it), while runc's was
    assert not (ours.rootfs / "w").exists() and (theirs.rootfs / "w").is_dir()


def test_served_calls_are_answered_by_the_gofer_not_the_kernel(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    bundle.config["root"]["readonly"] = False
    bundle.args("sh", "-c", "mkdir /d && echo hi > /d/f && cat /d/f && sleep 30")
    bundle.write()
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    try:
        stats = wait_for(
            lambda: (s := _stats(runtime, cid)) and s.get("fd", {}).get("openat") and s
        )
        # the open of /d/f for writing and reading: fds installed by the sentry
        assert stats["fd"]["openat"] >= 2, stats
        assert stats["value"].get("mkdir", 0) + stats["value"].get("mkdirat", 0) >= 1, stats
    finally:
        runtime("delete", "--force", cid)


def _stats(runtime: Runner, cid: str) -> dict[str, dict[str, int]] | None:
    res = runtime("events", "--stats", cid)
    if res.returncode != 0:
        return None
    doc = json.loads(res.stdout)
    counters = doc["data"].get("pysandbox", {}).get("syscalls")
    return counters if isinstance(counters, dict) else None


def test_the_kernels_view_of_the_root_is_read_only(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    bundle.config["root"]["readonly"] = False
    # /proc/self/mountinfo is served (it says "rw", as the workload can write:
    # tests/integration/test_mountinfo.py); this spelling is the kernel's table
    bundle.args("sh", "-c", "cat /proc/./self/mountinfo; touch /written && echo wrote")
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode == 0, res.stderr
    mounts = mountinfo(res.stdout)
    # the workload's own mount of / is read-only, yet its write succeeded (the gofer's)
    assert "ro" in mounts["/"][0], mounts["/"]
    assert res.stdout.rstrip().endswith("wrote")


def test_the_gofer_is_confined_and_goes_with_the_container(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    bundle.args("sleep", "30")
    runtime("run", "-d", "--bundle", str(bundle.path), cid, check=True)
    state = json.loads((runtime.root / cid / "state.json").read_text())
    gofer = int(state["gofer_pid"])
    status = Path(f"/proc/{gofer}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Name"].strip() == "gofer"
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"
    assert int(fields["CapEff"], 16) & (1 << 21) == 0  # no CAP_SYS_ADMIN
    # its own mount namespace, not the container's nor the host's
    container_init = int(runtime.state(cid)["pid"])
    ns = {os.readlink(f"/proc/{p}/ns/mnt") for p in (gofer, container_init, os.getpid())}
    assert len(ns) == 3
    runtime("delete", "--force", cid, check=True)
    wait_for(lambda: not os.path.exists(f"/proc/{gofer}") or _zombie(gofer), timeout=5)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_non_root_user_is_judged_as_itself(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["root"]["readonly"] = False
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    bundle.args(
        "sh",
        "-c",
        "cat /etc/shadow-probe 2>&1; echo x > /etc/new 2>&1; mkdir /tmp/mine && echo ok > "
        "/tmp/mine/f && stat -c '%u %g %a' /tmp/mine/f",
    )
    bundle.write()
    secret = bundle.rootfs / "etc" / "shadow-probe"
    secret.write_text("secret\n")
    secret.chmod(0o600)
    (bundle.rootfs / "tmp").chmod(0o1777)
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode == 0, res.stderr
    assert "Permission denied" in res.stdout and "secret" not in res.stdout
    assert res.stdout.splitlines()[-1] == "1000 1000 644"


def test_binds_and_proc_stay_the_kernels(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in").write_text("from the host\n")
    bundle.config["root"]["readonly"] = False
    bundle.config["mounts"].append(
        {"destination": "/data", "type": "bind", "source": str(shared), "options": ["rbind"]}
    )
    bundle.args(
        "sh",
        "-c",
        "cat /data/in && echo back > /data/out && ln -s /proc/self/status /st && "
        "grep -c '^Pid:' /st && readlink /proc/self/exe",
    )
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split("\n")[:2] == ["from the host", "1"]
    assert (shared / "out").read_text() == "back\n"


@pytest.mark.usefixtures("traversable")
def test_user_namespace_ids_are_mapped(runtime: Runner, bundle: Bundle, cid: str) -> None:
    from tests.conftest import give_to_mapped_root

    bundle.config["root"]["readonly"] = False
    bundle.config["linux"]["namespaces"].append({"type": "user"})
    bundle.config["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    bundle.config["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    bundle.args(
        "sh",
        "-c",
        "echo x > /f && stat -c '%u %g' /f && mkdir /d && stat -c '%u %g %a' /d "
        "&& stat -c '%u' /etc/passwd && chown 5:6 /f && stat -c '%u %g' /f",
    )
    caps = bundle.config["process"]["capabilities"]
    for key in ("bounding", "effective", "permitted"):
        caps[key] = [*caps.get(key, []), "CAP_CHOWN"]  # runc's default set lacks it
    bundle.write()
    give_to_mapped_root(bundle.rootfs)
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode == 0, res.stderr
    # the gofer works with host ids (100000 + n); the workload sees its own
    # chown's ids are mapped to the host's on the way in, and back for stat
    assert res.stdout.split() == ["0", "0", "0", "0", "755", "0", "5", "6"]


def test_a_relative_path_follows_the_working_directory(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    bundle.config["root"]["readonly"] = False
    bundle.config["process"]["cwd"] = "/tmp"
    bundle.args(
        "sh", "-c", "mkdir -p a/b && cd a/b && echo hi > f && cd .. && cat b/f && ls /tmp/a/b"
    )
    bundle.write()
    start = time.monotonic()
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["hi", "f"], time.monotonic() - start


def _same_asrun_runc(
    runtime: Runner,
    busybox_rootfs: Path,
    tmp_path: Path,
    probe: str,
    caps: Callable[[list[str]], list[str]],
) -> str:
    """Build PROBES/``probe``.c, run it as the process of a busybox container
    under pysandbox and under runc, with the capabilities ``caps`` makes of the
    default ones, and assert both print the same; returns the output."""
    exe = tmp_path / f"{probe}-probe"
    res = subprocess.run(
        ["gcc", "-static", "-O1", "-Wall", "-pthread", "-o", str(exe), str(PROBES / f"{probe}.c")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    outputs = []
    for name in ("ours", "theirs"):
        b = _bundle(tmp_path, busybox_rootfs, name, f"/{exe.name}")
        for kind in ("bounding", "effective", "permitted"):
            b.config["process"]["capabilities"][kind] = caps(
                b.config["process"]["capabilities"][kind]
            )
        b.write()
        shutil.copy(exe, b.rootfs / exe.name)
        if name == "ours":
            got = runtime("run", "--bundle", str(b.path), exe.name)
        else:
            got = run_runc(tmp_path, b, f"{exe.name}-runc")
        assert got.returncode == 0, got.stderr
        outputs.append(got.stdout)
    ours, theirs = outputs
    pairs = zip(ours.splitlines(), theirs.splitlines(), strict=False)
    assert ours == theirs, "\n".join(f"{a!r} != {b!r}" for a, b in pairs if a != b)
    return ours


def test_changed_credentials_are_judged_as_changed(
    runtime: Runner, busybox_rootfs: Path, tmp_path: Path
) -> None:
    # The sentry caches a task's credentials (syscalls/creds.py): after capset,
    # a thread's own raw setresuid, setgroups, setresgid and setresuid, every
    # lookup it serves itself and every gofer request must use the new ones.
    # It keeps directory modes too (syscalls/lookup.py): a mode changed through
    # an fd by another process must count at the next lookup.
    caps = ["CAP_SETUID", "CAP_SETGID", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_CHOWN"]
    ours = _same_asrun_runc(runtime, busybox_rootfs, tmp_path, "creds", lambda _default: caps)
    # the probe proves something only if the identities were really judged apart
    assert "thread as 1000 stat /locked/f = -1 EACCES" in ours
    assert "main after the thread stat /locked/f = 0" in ours
    assert "1000 in group 2000 stat /group/f = 0 " in ours.splitlines()
    # a mode changed through an fd (unseen by the sentry) between two lookups
    assert "child 1000 in group 2000, after fchmod 0700 stat /group/f = -1 EACCES" in ours
    assert "child 1000 in group 2000, after fchmod 0750 stat /group/f = 0 " in ours.splitlines()


def test_a_chrooted_caller_gets_its_roots_paths(
    runtime: Runner, busybox_rootfs: Path, tmp_path: Path
) -> None:
    # After chroot(2), absolute paths, absolute and relative symlinks and ".."
    # are the new root's (the gofer serves it as a root of its own: ROOT), and
    # relative paths follow the working directory inside it. Before, an
    # absolute symlink in the new root led back to the container's root.
    ours = _same_asrun_runc(
        runtime, busybox_rootfs, tmp_path, "chroot", lambda default: [*default, "CAP_SYS_CHROOT"]
    )
    assert "read /abs inside" in ours and "read /abs-out ENOENT" in ours


def test_many_directories_under_a_low_fd_limit(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    # The sentry keeps an fd per cached directory and per task; started with
    # a soft RLIMIT_NOFILE of 200 it raises its own to the hard limit and keeps
    # its cache within a quarter of it: no workload call may get the sentry's
    # EMFILE. 300 directories, each looked up twice ([ -d ] is a builtin).
    bundle.config["root"]["readonly"] = False
    bundle.args(
        "sh",
        "-c",
        "mkdir /many && cd /many && mkdir $(seq 300) && for r in 1 2; do "
        "for i in $(seq 300); do [ -d /many/$i/. ] || echo lost $i; done; done && echo done",
    )
    bundle.write()
    res = subprocess.run(
        ["prlimit", "--nofile=200:20000", *runtime.cmd("run", "--bundle", str(bundle.path), cid)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["done"], res.stdout[-500:]


def test_an_installed_fd_leaves_the_callers_cpus_as_they_were(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    # The sentry allows a caller only its own CPU for the moment of NOTIF_ADDFD
    # (sentry/loop.py _addfd_here) and must give the mask back: after many
    # opens, by a process and by a thread, nproc (sched_getaffinity) still
    # counts every CPU the container may use.
    if os.cpu_count() == 1:
        pytest.skip("one CPU: a pinned and an unpinned caller look the same")
    bundle.config["root"]["readonly"] = False
    bundle.args(
        "sh",
        "-c",
        "for i in 1 2 3 4 5 6 7 8; do cat /etc/passwd /etc/group >/dev/null; done; nproc; "
        "for i in 1 2 3; do read x < /etc/passwd; done; nproc",
    )
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(os.cpu_count())] * 2, res.stdout


FIFO_SCRIPT = (
    "mkfifo /tmp/w /tmp/r /tmp/c"
    # the writer first: its open waits for the reader (it got ENXIO)
    "; (sleep 0.3; cat /tmp/w) & echo to-a-late-reader > /tmp/w; wait"
    # the reader first: its open waits for the writer
    "; (sleep 0.3; echo to-an-early-reader > /tmp/r) & cat /tmp/r; wait"
    # a writer's open that does not create (>>), and a reader's with O_NONBLOCK
    "; (sleep 0.3; cat /tmp/c) & echo appended >> /tmp/c; wait; echo done"
)


def test_fifos_wait_for_their_other_end(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    """open(2) of a FIFO waits for the other end. The gofer's opens never
    block, so the sentry leaves a FIFO's open to the kernel, and before it
    asks the gofer: a writer with no reader got ENXIO, and the gofer's own
    passing open was the other end a waiting peer took, then lost (EOF)."""
    bundle.config["root"]["readonly"] = False
    bundle.args("sh", "-c", FIFO_SCRIPT).write()
    theirs = tmp_path / "runc-bundle"
    shutil.copytree(bundle.path, theirs, symlinks=True)
    got = runtime("run", "--bundle", str(bundle.path), cid, timeout=30)
    want = run_runc(tmp_path, Bundle(theirs, bundle.config), cid + "-runc")
    assert (
        got.stdout.splitlines()
        == want.stdout.splitlines()
        == [
            "to-a-late-reader",
            "to-an-early-reader",
            "appended",
            "done",
        ]
    ), got.stderr
