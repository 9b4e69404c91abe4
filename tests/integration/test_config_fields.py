"""Every config.json field, checked from inside a real container: the test
writes the field, runs ``sh -c`` in the busybox rootfs and parses what the
container itself sees (/proc/self/status, mountinfo, stat, id, ...)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci import kernel as k
from tests.conftest import Bundle, Runner
from tests.integration.inside import SPECS, build_probe, fields, mine_left, mountinfo, run_sh


def cap_mask(names: list[str]) -> int:
    m = 0
    for n in names:
        m |= 1 << k.cap_number(n)
    return m


def status_caps(out: str) -> dict[str, int]:
    f = fields(out)
    return {key: int(f[key], 16) for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


# --- capabilities ------------------------------------------------------------------


def test_capabilities_root_all_five_sets(runtime: Runner, bundle: Bundle, cid: str) -> None:
    caps = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]
    bundle.config["process"]["capabilities"] = {
        s: caps for s in ("bounding", "effective", "permitted", "inheritable", "ambient")
    }
    bundle.write()
    got = status_caps(run_sh(runtime, bundle, cid, "grep ^Cap /proc/self/status"))
    want = cap_mask(caps)
    assert got == {s: want for s in got}, {s: hex(v) for s, v in got.items()}


def test_capabilities_non_root_keeps_exactly_configured(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    bnd = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_SETUID"]
    inh = ["CAP_KILL", "CAP_NET_BIND_SERVICE", "CAP_NET_RAW"]
    amb = ["CAP_KILL", "CAP_NET_BIND_SERVICE"]
    proc = bundle.config["process"]
    proc["user"] = {"uid": 1000, "gid": 1000}
    proc["capabilities"] = {
        "bounding": bnd,
        "effective": inh,
        "permitted": inh,
        "inheritable": inh,
        "ambient": amb,
    }
    bundle.write()
    got = status_caps(run_sh(runtime, bundle, cid, "grep ^Cap /proc/self/status"))
    # execve as a non-root user: permitted and effective become the ambient set.
    assert got == {
        "CapBnd": cap_mask(bnd),
        "CapInh": cap_mask(inh),
        "CapPrm": cap_mask(amb),
        "CapEff": cap_mask(amb),
        "CapAmb": cap_mask(amb),
    }, {s: hex(v) for s, v in got.items()}


def test_capabilities_default_is_three(runtime: Runner, bundle: Bundle, cid: str) -> None:
    got = status_caps(run_sh(runtime, bundle, cid, "grep ^Cap /proc/self/status"))
    want = cap_mask(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"])
    assert got["CapBnd"] == want and got["CapEff"] == want and got["CapPrm"] == want
    assert got["CapInh"] == 0 and got["CapAmb"] == 0


def test_capability_really_missing(runtime: Runner, bundle: Bundle, cid: str) -> None:
    # Without CAP_CHOWN, root cannot give a file away.
    out = run_sh(runtime, bundle, cid, "touch /dev/shm/f; chown 5 /dev/shm/f; echo rc=$?")
    assert "rc=1" in out


# --- rlimits -----------------------------------------------------------------------


def test_rlimits_visible_inside(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["process"]["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": 1234, "hard": 2345},
        {"type": "RLIMIT_NPROC", "soft": 300, "hard": 400},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 4096},
        {"type": "RLIMIT_STACK", "soft": 4194304, "hard": 8388608},
    ]
    bundle.write()
    out = run_sh(runtime, bundle, cid, "cat /proc/self/limits; echo nofile=$(ulimit -n)")
    lines = {line[:26].strip(): line[26:].split() for line in out.splitlines()}
    assert lines["Max open files"][:2] == ["1234", "2345"]
    assert lines["Max processes"][:2] == ["300", "400"]
    assert lines["Max core file size"][:2] == ["0", "4096"]
    assert lines["Max stack size"][:2] == ["4194304", "8388608"]
    assert "nofile=1234" in out


def test_rlimit_hard_above_ceiling_fails_clearly(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    # root lacks CAP_SYS_RESOURCE here: nofile above the host's hard limit is refused.
    bundle.config["process"]["rlimits"] = [{"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 1 << 30}]
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode != 0
    assert "RLIMIT_NOFILE" in res.stderr and "not permitted" in res.stderr.lower(), res.stderr
    assert runtime("state", cid).returncode != 0
    assert not mine_left(tmp_path, cid)


# --- hostname, domainname, sysctl -----------------------------------------------------


def test_hostname_and_domainname(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["hostname"] = "box-one"
    bundle.config["domainname"] = "example.test"
    bundle.write()
    out = run_sh(runtime, bundle, cid, "hostname; cat /proc/sys/kernel/domainname")
    assert out.split() == ["box-one", "example.test"]
    assert os.uname().nodename != "box-one"


def test_sysctl_in_new_namespaces(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["linux"]["sysctl"] = {
        "net.ipv4.ip_forward": "1",
        "kernel.shm_rmid_forced": "1",
        "net.ipv4.ping_group_range": "0 0",
    }
    bundle.write()
    before = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    out = run_sh(
        runtime,
        bundle,
        cid,
        "cat /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/shm_rmid_forced"
        " /proc/sys/net/ipv4/ping_group_range",
    )
    assert out.split() == ["1", "1", "0", "0"]
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == before


def test_net_sysctl_without_net_namespace_refused(
    runtime: Runner, bundle: Bundle, cid: str
) -> None:
    linux = bundle.config["linux"]
    linux["namespaces"] = [n for n in linux["namespaces"] if n["type"] != "network"]
    linux["sysctl"] = {"net.ipv4.ip_forward": "1"}
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode != 0 and "net.ipv4.ip_forward" in res.stderr


# --- mounts --------------------------------------------------------------------------


def _host_dir(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "marker").write_text(name)
    (d / "sub").mkdir()
    return d


def test_bind_mount_options(runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path) -> None:
    src = _host_dir(tmp_path, "src")
    nested = src / "sub"
    # a mount inside the source: rbind carries it, bind does not
    from pysandbox.oci import kernel

    kernel.mount("tmpfs", str(nested), "tmpfs", 0, "size=1m")
    try:
        (nested / "inner").write_text("x")
        bundle.config["mounts"] += [
            {
                "destination": "/b-ro",
                "type": "bind",
                "source": str(src),
                "options": ["bind", "ro", "nosuid", "nodev", "noexec"],
            },
            {
                "destination": "/b-rbind",
                "type": "bind",
                "source": str(src),
                "options": ["rbind", "rw"],
            },
            {
                "destination": "/b-file",
                "type": "bind",
                "source": str(src / "marker"),
                "options": ["bind", "ro"],
            },
        ]
        bundle.write()
        out = run_sh(
            runtime,
            bundle,
            cid,
            "cat /proc/self/mountinfo; echo ===;"
            " touch /b-ro/x 2>/dev/null && echo ro-writable;"
            " touch /b-rbind/new && echo rw-ok;"
            " cat /b-file; echo; ls /b-ro/sub; echo ---; ls /b-rbind/sub",
        )
    finally:
        kernel.umount2(str(nested), kernel.MNT_DETACH)
    info, rest = out.split("===\n")
    mi = mountinfo(info)
    assert {"ro", "nosuid", "nodev", "noexec"} <= mi["/b-ro"][0]
    assert "rw" in mi["/b-rbind"][0] and "nosuid" not in mi["/b-rbind"][0]
    assert "/b-rbind/sub" in mi and "/b-ro/sub" not in mi
    assert "ro" in mi["/b-file"][0]
    assert "ro-writable" not in rest and "rw-ok" in rest
    ro_sub, rbind_sub = rest.split("---")
    assert "src" in ro_sub and "inner" not in ro_sub
    assert "inner" in rbind_sub
    assert (src / "new").exists()


def test_tmpfs_size_and_mode(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["mounts"].append(
        {
            "destination": "/scratch",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "nodev", "size=2m", "mode=750", "uid=1000", "gid=1000"],
        }
    )
    bundle.write()
    out = run_sh(runtime, bundle, cid, "cat /proc/self/mountinfo; stat -c '%a %u %g' /scratch")
    mi = mountinfo(out)
    opts, fstype, sopts, _ = mi["/scratch"]
    assert fstype == "tmpfs" and {"nosuid", "nodev"} <= opts
    assert {"size=2048k", "mode=750", "uid=1000", "gid=1000"} <= sopts, sopts
    assert out.splitlines()[-1] == "750 1000 1000"


def test_default_mounts(runtime: Runner, bundle: Bundle, cid: str) -> None:
    out = run_sh(runtime, bundle, cid, "cat /proc/self/mountinfo")
    mi = mountinfo(out)
    assert mi["/proc"][1] == "proc"
    assert mi["/sys"][1] == "sysfs" and {"ro", "nosuid", "nodev", "noexec"} <= mi["/sys"][0]
    assert mi["/dev"][1] == "tmpfs" and "size=65536k" in mi["/dev"][2]
    pts = mi["/dev/pts"]
    assert pts[1] == "devpts" and {"nosuid", "noexec"} <= pts[0]
    assert {"ptmxmode=666", "mode=620", "gid=5"} <= pts[2], pts[2]
    # (tmpfs leaves its default mode=1777 out of mountinfo)
    assert mi["/dev/shm"][1] == "tmpfs" and "size=65536k" in mi["/dev/shm"][2]
    assert (
        mi["/dev/mqueue"][1] == "mqueue" and {"nosuid", "nodev", "noexec"} <= mi["/dev/mqueue"][0]
    )
    # the root is the bundle's rootfs, read-only (root.readonly: true)
    assert "ro" in mi["/"][0]


def test_devpts_is_a_new_instance(runtime: Runner, bundle: Bundle, cid: str) -> None:
    out = run_sh(runtime, bundle, cid, "ls /dev/pts; stat -c '%t:%T' /dev/pts/ptmx")
    names = out.split()
    # only the ptmx node: the host's ptys are not visible
    assert names[0] == "ptmx" and names[1] == "5:2"


def test_cgroup_mount_shows_own_cgroup(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["linux"]["cgroupsPath"] = f"/{cid}"
    res = bundle.config["linux"]["resources"]
    res["memory"] = {"limit": 64 * 1024 * 1024}
    res["pids"] = {"limit": 50}
    res["cpu"] = {"quota": 50000, "period": 100000}
    bundle.write()
    out = run_sh(
        runtime,
        bundle,
        cid,
        "cat /proc/self/mountinfo; echo ===;"
        " cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max"
        " /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us;"
        " cat /sys/fs/cgroup/pids/cgroup.procs | tr '\\n' ' '; echo;"
        " mkdir /sys/fs/cgroup/memory/x 2>/dev/null && echo cgroup-writable; true",
    )
    info, rest = out.split("===\n")
    mi = mountinfo(info)
    for controller in ("memory", "pids", "cpu", "devices", "freezer"):
        opts, fstype, _, _ = mi[f"/sys/fs/cgroup/{controller}"]
        assert fstype == "cgroup" and "ro" in opts, (controller, opts)
    lines = rest.splitlines()
    assert lines[:4] == [str(64 * 1024 * 1024), "50", "50000", "100000"]
    # the cgroup's processes as the container sees them: its init is pid 1
    assert "1" in lines[4].split()
    assert "cgroup-writable" not in rest


def test_mount_propagation_options(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["mounts"] += [
        {"destination": "/p-shared", "type": "tmpfs", "source": "tmpfs", "options": ["shared"]},
        {"destination": "/p-private", "type": "tmpfs", "source": "tmpfs", "options": ["private"]},
        {
            "destination": "/p-unbindable",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["unbindable"],
        },
    ]
    bundle.write()
    mi = mountinfo(run_sh(runtime, bundle, cid, "cat /proc/self/mountinfo"))
    assert any(t.startswith("shared:") for t in mi["/p-shared"][3]), mi["/p-shared"]
    assert not mi["/p-private"][3]
    assert "unbindable" in mi["/p-unbindable"][3]


def test_symlinked_destination_stays_in_rootfs(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    src = _host_dir(tmp_path, "payload")
    (bundle.rootfs / "evil").symlink_to("/etc")
    (bundle.rootfs / "evil2").symlink_to("../../../../../../../tmp/escape")
    bundle.config["mounts"] += [
        {"destination": "/evil", "type": "bind", "source": str(src), "options": ["rbind", "ro"]},
        {"destination": "/evil2/deep", "type": "tmpfs", "source": "tmpfs", "options": []},
    ]
    bundle.write()
    out = run_sh(runtime, bundle, cid, "cat /etc/marker; echo; cat /proc/self/mountinfo")
    assert out.splitlines()[0] == "payload"
    mi = mountinfo(out)
    assert "/etc" in mi and "/tmp/escape/deep" in mi
    # the image's /etc got the mount; the host's /etc and /tmp were never touched
    assert (bundle.rootfs / "etc").is_dir()
    assert (bundle.rootfs / "tmp" / "escape" / "deep").is_dir()
    assert not Path("/etc/marker").exists()
    assert not Path("/tmp/escape").exists()


# --- devices ---------------------------------------------------------------------------


def test_default_devices(runtime: Runner, bundle: Bundle, cid: str) -> None:
    out = run_sh(
        runtime,
        bundle,
        cid,
        "for d in null zero full random urandom tty; do"
        " stat -c '%n %F %t:%T %a %u:%g' /dev/$d; done;"
        " for l in fd stdin stdout stderr ptmx; do echo /dev/$l $(readlink /dev/$l); done;"
        " echo hi > /dev/null && echo null-ok; head -c 4 /dev/zero | od -An -tx1",
    )
    lines = out.splitlines()
    want = {
        "null": "1:3",
        "zero": "1:5",
        "full": "1:7",
        "random": "1:8",
        "urandom": "1:9",
        "tty": "5:0",
    }
    for line, (name, dev) in zip(lines, want.items(), strict=False):
        assert line == f"/dev/{name} character special file {dev} 666 0:0", line
    links = dict(line.split(" ", 1) for line in lines[6:11])
    assert links == {
        "/dev/fd": "/proc/self/fd",
        "/dev/stdin": "/proc/self/fd/0",
        "/dev/stdout": "/proc/self/fd/1",
        "/dev/stderr": "/proc/self/fd/2",
        "/dev/ptmx": "pts/ptmx",
    }
    assert "null-ok" in out and "00 00 00 00" in out


def test_linux_devices_added(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["linux"]["devices"] = [
        {
            "path": "/dev/fuse",
            "type": "c",
            "major": 10,
            "minor": 229,
            "fileMode": 0o600,
            "uid": 0,
            "gid": 0,
        },
        {
            "path": "/dev/custom/thing",
            "type": "c",
            "major": 1,
            "minor": 3,
            "fileMode": 0o642,
            "uid": 1000,
            "gid": 1001,
        },
    ]
    bundle.write()
    out = run_sh(
        runtime,
        bundle,
        cid,
        "stat -c '%n %F %t:%T %a %u:%g' /dev/fuse /dev/custom/thing;"
        " echo x > /dev/custom/thing && echo write-ok",
    )
    lines = out.splitlines()
    assert lines[0] == "/dev/fuse character special file a:e5 600 0:0"
    # root without CAP_DAC_OVERRIDE writes through the "other" bit
    assert lines[1] == "/dev/custom/thing character special file 1:3 642 1000:1001"
    assert "write-ok" in out


def test_device_not_allowed_by_cgroup(runtime: Runner, bundle: Bundle, cid: str) -> None:
    # CAP_MKNOD is not in the default set, and the devices cgroup denies the rest anyway.
    bundle.config["process"]["capabilities"]["bounding"].append("CAP_MKNOD")
    bundle.config["process"]["capabilities"]["effective"].append("CAP_MKNOD")
    bundle.config["process"]["capabilities"]["permitted"].append("CAP_MKNOD")
    bundle.write()
    out = run_sh(
        runtime,
        bundle,
        cid,
        "mknod /dev/sda1 b 8 1 && echo made; head -c1 /dev/sda1 2>/dev/null && echo read-ok; true",
    )
    assert "made" in out and "read-ok" not in out


# --- masked / read-only paths, root.readonly, rootfsPropagation -------------------------


def test_masked_paths(runtime: Runner, bundle: Bundle, cid: str) -> None:
    d = bundle.rootfs / "secret"
    d.mkdir()
    (d / "key").write_text("hunter2")
    (bundle.rootfs / "secret-file").write_text("hunter2")
    bundle.config["linux"]["maskedPaths"] += ["/secret", "/secret-file", "/does/not/exist"]
    bundle.write()
    out = run_sh(
        runtime,
        bundle,
        cid,
        "echo kcore=$(head -c 16 /proc/kcore | wc -c);"
        " echo dir=$(ls -A /secret | wc -l); cat /secret-file; echo file-done;"
        " touch /secret/x 2>/dev/null && echo masked-writable;"
        " cat /proc/self/mountinfo",
    )
    assert "kcore=0" in out
    assert "dir=0" in out and "hunter2" not in out and "file-done" in out
    assert "masked-writable" not in out
    mi = mountinfo(out)
    assert mi["/secret"][1] == "tmpfs" and "ro" in mi["/secret"][0]


def test_readonly_paths(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["process"]["capabilities"] = {
        s: ["CAP_SYS_ADMIN"] for s in ("bounding", "effective", "permitted")
    }
    bundle.write()
    out = run_sh(
        runtime,
        bundle,
        cid,
        "echo x > /proc/sys/kernel/domainname; echo rc=$?; cat /proc/self/mountinfo",
    )
    assert "Read-only file system" in out or "rc=1" in out
    mi = mountinfo(out)
    assert "ro" in mi["/proc/sys"][0]
    for path in ("/proc/bus", "/proc/fs", "/proc/irq"):
        assert path not in mi or "ro" in mi[path][0]


def test_root_readonly(runtime: Runner, bundle: Bundle, cid: str) -> None:
    out = run_sh(runtime, bundle, cid, "touch /x 2>&1; echo rc=$?")
    assert "rc=1" in out and "Read-only" in out
    bundle.config["root"]["readonly"] = False
    bundle.write()
    out = run_sh(runtime, bundle, cid + "b", "touch /x; echo rc=$?")
    assert "rc=0" in out
    # The write went to the overlay's upper layer (--overlay root:memory, the
    # default), not to the bundle: tests/integration/test_overlay.py.
    assert not (bundle.rootfs / "x").exists()


@pytest.mark.parametrize(
    ("prop", "tag"), [("shared", "shared:"), ("private", None), ("rslave", None)]
)
def test_rootfs_propagation(
    runtime: Runner, bundle: Bundle, cid: str, prop: str, tag: str | None
) -> None:
    bundle.config["linux"]["rootfsPropagation"] = prop
    bundle.write()
    mi = mountinfo(run_sh(runtime, bundle, cid, "cat /proc/self/mountinfo"))
    optional = mi["/"][3]
    if tag is None:
        assert not any(t.startswith("shared:") for t in optional), optional
    else:
        assert any(t.startswith(tag) for t in optional), optional


# --- process ------------------------------------------------------------------------------


def test_user_and_groups(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1001, "additionalGids": [10, 20]}
    bundle.write()
    out = run_sh(
        runtime, bundle, cid, "id -u; id -g; id -G; grep -E '^(Uid|Gid|Groups)' /proc/self/status"
    )
    lines = out.splitlines()
    assert lines[0] == "1000" and lines[1] == "1001"
    assert set(lines[2].split()) == {"1001", "10", "20"}
    f = fields("\n".join(lines[3:]))
    assert f["Uid"].split() == ["1000"] * 4
    assert f["Gid"].split() == ["1001"] * 4
    assert f["Groups"].split() == ["10", "20"]


def test_umask(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["process"]["user"]["umask"] = 0o077
    bundle.write()
    out = run_sh(
        runtime,
        bundle,
        cid,
        "touch /dev/shm/f; mkdir /dev/shm/d; stat -c %a /dev/shm/f /dev/shm/d; umask",
    )
    assert out.split() == ["600", "700", "0077"]
    out = run_sh(runtime, bundle, cid + "b", "true")  # second run proves no state clash
    del bundle.config["process"]["user"]["umask"]
    bundle.write()
    out = run_sh(runtime, bundle, cid + "c", "touch /dev/shm/f; stat -c %a /dev/shm/f")
    assert out.split() == ["644"]


def test_cwd(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["process"]["cwd"] = "/bin"
    bundle.write()
    assert run_sh(runtime, bundle, cid, "pwd").strip() == "/bin"


def test_cwd_missing_is_created(runtime: Runner, bundle: Bundle, cid: str) -> None:
    # runc creates a missing cwd inside the rootfs
    bundle.config["process"]["cwd"] = "/work/here"
    bundle.config["root"]["readonly"] = False
    bundle.write()
    assert run_sh(runtime, bundle, cid, "pwd").strip() == "/work/here"


def test_env_exact(runtime: Runner, bundle: Bundle, cid: str) -> None:
    env = ["PATH=/bin:/usr/bin", "HOME=/root", "A=1", "B=two words", "EMPTY="]
    bundle.config["process"]["env"] = env
    bundle.config["process"]["args"] = ["env"]
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.returncode == 0, res.stderr
    assert sorted(res.stdout.splitlines()) == sorted(env)


@pytest.mark.parametrize("nnp", [True, False])
def test_no_new_privileges(runtime: Runner, bundle: Bundle, cid: str, nnp: bool) -> None:
    bundle.config["process"]["noNewPrivileges"] = nnp
    if not nnp:
        # The sentry always sets no_new_privs (its filter needs it once the
        # capabilities are gone): the field itself is runc's behaviour.
        bundle.config["annotations"] = {"io.github.pysandbox.sandbox": "none"}
    bundle.write()
    f = fields(run_sh(runtime, bundle, cid, "grep NoNewPrivs /proc/self/status"))
    assert f["NoNewPrivs"] == ("1" if nnp else "0")
    if not nnp:
        del bundle.config["annotations"]
        bundle.write()
        f = fields(run_sh(runtime, bundle, cid + "s", "grep NoNewPrivs /proc/self/status"))
        assert f["NoNewPrivs"] == "1"


def test_oom_score_adj(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["process"]["oomScoreAdj"] = 500
    bundle.write()
    assert run_sh(runtime, bundle, cid, "cat /proc/self/oom_score_adj").strip() == "500"


def test_negative_oom_score_adj_fails_clearly(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    bundle.config["process"]["oomScoreAdj"] = -500
    bundle.write()
    res = runtime("run", "--bundle", str(bundle.path), cid)
    if res.returncode == 0:
        pytest.skip("this machine lets root lower oom_score_adj")
    assert "oom_score_adj" in res.stderr and "-500" in res.stderr, res.stderr
    assert not mine_left(tmp_path, cid)


def test_personality_linux32(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["linux"]["personality"] = {"domain": "LINUX32"}
    bundle.write()
    assert run_sh(runtime, bundle, cid, "uname -m").strip() == "i686"
    bundle.config["linux"]["personality"] = {"domain": "LINUX"}
    bundle.write()
    assert run_sh(runtime, bundle, cid + "b", "uname -m").strip() == os.uname().machine


# --- seccomp -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def probe_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_probe(tmp_path_factory.mktemp("probe") / "probe")


def _install_probe(bundle: Bundle, probe: Path) -> None:
    dest = bundle.rootfs / "probe"
    dest.write_bytes(probe.read_bytes())
    dest.chmod(0o755)


def _use_profile(bundle: Bundle, spec_file: str) -> dict[str, Any]:
    ref = json.loads((SPECS / spec_file).read_text())
    bundle.config["linux"]["seccomp"] = ref["linux"]["seccomp"]
    bundle.config["process"]["capabilities"] = ref["process"]["capabilities"]
    bundle.write()
    profile: dict[str, Any] = ref["linux"]["seccomp"]
    return profile


SYS_KEYCTL = 250
SYS_ADD_KEY = 248
SYS_UNSHARE = 272
SYS_GETPID = 39
SYS_VMSPLICE = 278
SYS_KCMP = 312
CLONE_NEWUSER = 0x10000000


def test_seccomp_docker_default_profile(
    runtime: Runner, bundle: Bundle, cid: str, probe_binary: Path
) -> None:
    _use_profile(bundle, "docker-run-config.json")
    _install_probe(bundle, probe_binary)
    out = run_sh(
        runtime,
        bundle,
        cid,
        "echo shell-ok; ls / >/dev/null && echo ls-ok;"
        " unshare -U true 2>&1; echo unshare-rc=$?;"
        f" /probe {SYS_KEYCTL} 0; /probe {SYS_UNSHARE} {CLONE_NEWUSER}; /probe {SYS_GETPID}",
    )
    lines = out.splitlines()
    assert "shell-ok" in lines and "ls-ok" in lines
    assert "unshare-rc=1" in out and "Operation not permitted" in out
    assert lines[-3] == "-1 1"  # keyctl: EPERM
    assert lines[-2] == "-1 1"  # unshare(CLONE_NEWUSER): EPERM
    assert lines[-1].split()[1] == "0" and int(lines[-1].split()[0]) > 0


def test_seccomp_podman_profile(
    runtime: Runner, bundle: Bundle, cid: str, probe_binary: Path
) -> None:
    _use_profile(bundle, "podman-run-config.json")
    # The OCI profile alone: under the sentry, pysandbox's own filter is
    # stacked last and its EPERM for add_key would win over podman's ENOSYS.
    bundle.config["annotations"] = {"io.github.pysandbox.sandbox": "none"}
    bundle.write()
    _install_probe(bundle, probe_binary)
    out = run_sh(
        runtime,
        bundle,
        cid,
        f"echo shell-ok; /probe {SYS_VMSPLICE} -1; /probe {SYS_KCMP} 1 1 0 0 0;"
        f" /probe {SYS_ADD_KEY}; /probe {SYS_GETPID}",
    )
    lines = out.splitlines()
    assert lines[0] == "shell-ok"
    assert lines[1] == "-1 1"  # vmsplice: EPERM rule (the kernel would say EBADF)
    assert lines[2] == "-1 1"  # kcmp: EPERM rule (the kernel would compare)
    assert lines[3] == "-1 38"  # add_key is not listed: defaultErrnoRet ENOSYS
    assert lines[4].split()[1] == "0"


def test_pids_limit_stops_fork_loop(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.config["linux"]["resources"]["pids"] = {"limit": 8}
    bundle.write()
    out = run_sh(
        runtime,
        bundle,
        cid,
        "cat /sys/fs/cgroup/pids/pids.max;"
        " sh -c 'for i in $(seq 1 20); do sleep 5 & echo started; done' 2>/dev/null;"
        " echo rc=$?",
    )
    lines = out.splitlines()
    assert lines[0] == "8"
    # sh, the inner sh and seq's subshell count too: fewer than 8 sleeps start
    assert 0 < lines.count("started") < 8
    assert lines[-1] != "rc=0"


def test_file_mount_on_dangling_symlink_stays_in_rootfs(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    outside = tmp_path / "pwned"
    (bundle.rootfs / "evilf").symlink_to(str(outside))
    src = tmp_path / "srcfile"
    src.write_text("content")
    bundle.config["mounts"].append(
        {"destination": "/evilf", "type": "bind", "source": str(src), "options": ["bind", "ro"]}
    )
    bundle.write()
    assert run_sh(runtime, bundle, cid, "cat /evilf") == "content"
    assert not outside.exists()
    # created where the link points, as if the rootfs were /
    assert (bundle.rootfs / str(outside).lstrip("/")).is_file()


def test_image_dev_symlink_does_not_reach_host(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    host_dev = tmp_path / "hostdev"
    host_dev.mkdir()
    (host_dev / "null").write_text("host file")
    dev = bundle.rootfs / "dev"
    if dev.exists():
        import shutil

        shutil.rmtree(dev)
    dev.symlink_to(str(host_dev))
    bundle.config["mounts"] = [
        m for m in bundle.config["mounts"] if not m["destination"].startswith("/dev")
    ]
    bundle.write()
    out = run_sh(runtime, bundle, cid, "stat -c '%F %t:%T' /dev/null")
    assert out.strip() == "character special file 1:3"
    assert (host_dev / "null").read_text() == "host file"
    assert sorted(os.listdir(host_dev)) == ["null"]
