"""execve in a real container: the sentry's checks (syscalls/execve.py) give
the errnos Linux gives, compared line by line with runc for the same files,
and refuse on purpose what the sandbox cannot run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Runner
from tests.integration.helpers import run_runc
from tests.integration.test_files import PROBES, _bundle
from tests.unit.test_execcheck import (
    AARCH64_EXIT_42,
    EM_AARCH64,
    EM_X86_64,
    TINY_C,
    X86_64_EXIT_42,
    elf32,
    elf64,
    elf_cases,
    set_field,
)

I386_EXIT_42 = b"\xb8\x01\x00\x00\x00\xbb\x2a\x00\x00\x00\xcd\x80"  # exit(42) via int 0x80


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    d = tmp_path_factory.mktemp("exec")
    (d / "tiny.c").write_text(TINY_C)
    for cmd in (
        ["gcc", "-O2", "-static", "-nostdlib", "-o", str(d / "tiny"), str(d / "tiny.c")],
        ["gcc", "-O1", "-static", "-Wall", "-o", str(d / "exec"), str(PROBES / "exec.c")],
    ):
        res = subprocess.run(cmd, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    return d / "exec", (d / "tiny").read_bytes()


def _populate(rootfs: Path, probe: Path, tiny: bytes) -> list[str]:
    """The files to exec, in /x; returns the probe's arguments."""
    x = rootfs / "x"
    x.mkdir()
    shutil.copy(probe, rootfs / "exec-probe")
    files = {f"elf-{name}": data for name, data in elf_cases(tiny).items()}
    files.update(
        {
            "static": elf64(EM_X86_64, X86_64_EXIT_42),
            "aarch64": elf64(EM_AARCH64, AARCH64_EXIT_42),
            "script-ok": b"#!/bin/sh\nexit 3\n",
            "script-arg": b"#!/bin/sh -e\nexit 4\n",
            "script-missing": b"#!/nonexistent/sh\n",
            "script-blank": b"#!   \n",
            "script-to-script": b"#!/x/script-ok\n",
            "script-to-dir": b"#!/x\n",
            "script-to-text": b"#!/x/text-x\n",
            "text-x": b"just text\n",
        }
    )
    for name, data in files.items():
        (x / name).write_bytes(data)
        (x / name).chmod(0o755)
    for i in range(7):  # a chain of scripts longer than the kernel follows
        (x / f"chain{i}").write_bytes(f"#!/x/chain{i + 1}\n".encode())
        (x / f"chain{i}").chmod(0o755)
    (x / "chain7").write_bytes(b"#!/bin/sh\nexit 5\n")
    (x / "chain7").chmod(0o755)
    (x / "no-x").write_bytes(tiny)
    (x / "no-x").chmod(0o644)
    (x / "dir").mkdir()
    (x / "link").symlink_to("static")
    (x / "loop").symlink_to("loop")
    (x / "locked").mkdir(mode=0o700)
    (x / "locked" / "tiny").write_bytes(tiny)
    (x / "locked" / "tiny").chmod(0o755)
    names = sorted(files) + [f"chain{i}" for i in range(8)]
    names += ["no-x", "dir", "link", "loop", "locked/tiny", "missing", "text-x/sub"]
    args = [f"/x/{n}" for n in names] + ["/x", "/", "/bin/true", "/proc/self/exe"]
    args += ["nofollow:/x/link", "nofollow:/x/static", "x/static", "../x/static"]
    return args


def _run_both(
    runtime: Runner, busybox_rootfs: Path, tmp_path: Path, built: tuple[Path, bytes], user: int
) -> tuple[str, str, str]:
    probe, tiny = built
    outputs = []
    log = tmp_path / "sentry.log"
    for name in ("ours", "theirs"):
        b = _bundle(tmp_path, busybox_rootfs, name, "/exec-probe")
        args = _populate(b.rootfs, probe, tiny)
        b.config["process"]["args"] = ["/exec-probe", *args]
        b.config["process"]["cwd"] = "/"
        if user:
            b.config["process"]["user"] = {"uid": user, "gid": user}
        b.write()
        if name == "ours":
            res = runtime(
                "--debug-log", str(log), "--strace", "run", "--bundle", str(b.path), "exec-probe"
            )
        else:
            res = run_runc(tmp_path, b, "exec-probe-runc")
        assert res.returncode == 0, res.stderr
        outputs.append(res.stdout)
    return outputs[0], outputs[1], log.read_text(errors="replace")


@pytest.mark.parametrize("user", [0, 1000], ids=["root", "user"])
def test_execve_answers_as_the_kernel_does(
    runtime: Runner,
    busybox_rootfs: Path,
    tmp_path: Path,
    built: tuple[Path, bytes],
    user: int,
) -> None:
    ours, theirs, log = _run_both(runtime, busybox_rootfs, tmp_path, built, user)
    pairs = list(zip(ours.splitlines(), theirs.splitlines(), strict=True))
    assert len(pairs) > 60
    wrong = [(a, b) for a, b in pairs if a != b]
    assert not wrong, "\n".join(f"ours {a!r}, runc {b!r}" for a, b in wrong)
    # and the sentry, not the kernel, gave the refusals it could judge
    assert _answered(log, "/x/text-x", "ENOEXEC"), log[-2000:]
    assert _answered(log, "/x/script-missing", "ENOENT")
    assert _answered(log, "/x/elf-interp-missing", "ENOENT")
    assert _answered(log, "/x/elf-machine-aarch64", "ENOEXEC")
    if user:
        assert _answered(log, "/x/locked/tiny", "EACCES")


def _answered(log: str, path: str, err: str) -> bool:
    """Whether the sentry's strace log shows it answered execve(path) with err."""
    return any(f"execve('{path}'" in line and f"= -1 {err} " in line for line in log.splitlines())


def test_what_the_sandbox_cannot_run_is_refused_on_purpose(
    runtime: Runner, busybox_rootfs: Path, tmp_path: Path, built: tuple[Path, bytes]
) -> None:
    probe, tiny = built
    b = _bundle(tmp_path, busybox_rootfs, "deliberate", "/exec-probe")
    x = b.rootfs / "x"
    x.mkdir()
    shutil.copy(probe, b.rootfs / "exec-probe")
    odd = {
        "i386": elf32(3, I386_EXIT_42),  # the filter kills the i386 ABI
        "x32": elf32(EM_X86_64, X86_64_EXIT_42),  # and x32's
        "class-0": set_field(tiny, "B", 4, 0),  # Linux ignores e_ident's class
    }
    for name, data in odd.items():
        (x / name).write_bytes(data)
        (x / name).chmod(0o755)
    b.config["process"]["args"] = ["/exec-probe", *(f"/x/{n}" for n in odd)]
    b.write()
    res = runtime("run", "--bundle", str(b.path), "deliberate")
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [f"execve /x/{n} = ENOEXEC" for n in odd]
    # under runc the kernel would run class-0 (exit 7) and the i386 one (42)
    assert os.path.exists(b.rootfs / "x" / "class-0")
