"""Lifecycle hooks: real processes, no mocks."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pysandbox.oci.hooks import HookError, run_hook, run_hooks

STATE = json.dumps(
    {"ociVersion": "1.2.0", "id": "c1", "status": "creating", "pid": 42, "bundle": "/b"}
).encode()


@dataclass(slots=True)
class Hook:
    path: str
    args: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    timeout: int | None = None


def sh(script: str, *, env: list[str] | None = None, timeout: int | None = None) -> Hook:
    return Hook("/bin/sh", ["sh", "-c", script], env or [], timeout)


def test_hooks_run_in_order(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hooks = [sh(f"echo {i} >> {log}") for i in range(5)]
    run_hooks(hooks, STATE, kind="prestart")
    assert log.read_text().split() == ["0", "1", "2", "3", "4"]


def test_env_is_exactly_the_hook_env(tmp_path: Path) -> None:
    out = tmp_path / "environ"
    env = ["A=1", "B=two words", "C=x=y"]
    os.environ["PYSANDBOX_LEAK_CHECK"] = "leaked"
    try:
        # The hook's own initial environment, as the kernel got it at exec.
        run_hook(sh(f"cat /proc/$$/environ > {out}", env=env), STATE, kind="prestart", index=0)
    finally:
        del os.environ["PYSANDBOX_LEAK_CHECK"]
    assert out.read_bytes().split(b"\0")[:-1] == [e.encode() for e in env]


def test_env_empty_means_empty(tmp_path: Path) -> None:
    out = tmp_path / "environ"
    # cat /proc/self/environ of the hook itself: no shell in between.
    run_hook(
        Hook("/bin/sh", ["sh", "-c", f"cat /proc/$$/environ > {out}"], []),
        STATE,
        kind="prestart",
        index=0,
    )
    assert out.read_bytes() == b""


def test_stdin_receives_state(tmp_path: Path) -> None:
    out = tmp_path / "state"
    run_hook(sh(f"cat > {out}"), STATE, kind="createRuntime", index=0)
    assert json.loads(out.read_bytes()) == json.loads(STATE)


def test_argv0_comes_from_args(tmp_path: Path) -> None:
    out = tmp_path / "argv"
    script = tmp_path / "hook.sh"
    script.write_text(f'#!/bin/sh\necho "$0|$1|$2" > {out}\n')
    script.chmod(0o755)
    run_hook(Hook(str(script), ["not-used-as-path", "x", "y"]), STATE, kind="prestart", index=0)
    # A #! script sees its path as $0; check argv[0] with a real binary instead.
    assert out.read_text().strip().endswith("|x|y")
    out2 = tmp_path / "argv0"
    run_hook(
        Hook("/bin/sh", ["custom-argv0", "-c", f'echo "$0" > {out2}']),
        STATE,
        kind="prestart",
        index=0,
    )
    assert out2.read_text().strip() == "custom-argv0"


def test_empty_args_means_path_as_argv0(tmp_path: Path) -> None:
    out = tmp_path / "cmdline"
    script = tmp_path / "hook.sh"
    script.write_text(f"#!/bin/sh\ncat /proc/$$/cmdline > {out}\n")
    script.chmod(0o755)
    run_hook(Hook(str(script)), STATE, kind="prestart", index=0)
    assert out.read_bytes().split(b"\0")[1] == str(script).encode()


def test_nonzero_exit_reports_status_and_stderr_tail() -> None:
    hook = sh("echo one >&2; echo two >&2; echo three >&2; exit 3")
    with pytest.raises(HookError) as info:
        run_hook(hook, STATE, kind="prestart", index=1)
    msg = str(info.value)
    assert msg.startswith("prestart hook #1 (/bin/sh): exit status 3")
    assert "two" in msg and "three" in msg and "one" not in msg


def test_stdout_is_used_when_stderr_is_empty() -> None:
    with pytest.raises(HookError, match="exit status 1: from stdout"):
        run_hook(sh("echo from stdout; exit 1"), STATE, kind="poststart", index=0)


def test_killed_by_signal() -> None:
    with pytest.raises(HookError, match=r"killed by signal 9 \(SIGKILL\)"):
        run_hook(sh("kill -9 $$"), STATE, kind="prestart", index=0)


def test_timeout_kills_the_hook() -> None:
    start = time.monotonic()
    with pytest.raises(HookError, match="timed out after 1s"):
        run_hook(Hook("/bin/sleep", ["sleep", "10"], [], 1), STATE, kind="prestart", index=0)
    assert 0.9 < time.monotonic() - start < 2.5


def test_background_child_holding_pipes_does_not_hang() -> None:
    start = time.monotonic()
    run_hook(sh("sleep 5 & exit 0"), STATE, kind="prestart", index=0)
    assert time.monotonic() - start < 2


def test_missing_binary() -> None:
    with pytest.raises(HookError) as info:
        run_hook(Hook("/nonexistent/hook"), STATE, kind="createContainer", index=2)
    assert str(info.value) == (
        "createContainer hook #2 (/nonexistent/hook): exec failed: No such file or directory"
    )


def test_nul_byte_is_a_hook_error() -> None:
    with pytest.raises(HookError, match=r"exec failed: .*null"):
        run_hook(Hook("/bin/true", ["true"], ["A=b\0c"]), STATE, kind="prestart", index=0)


def test_not_executable(tmp_path: Path) -> None:
    script = tmp_path / "noexec"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o644)
    with pytest.raises(HookError, match="exec failed: Permission denied"):
        run_hook(Hook(str(script)), STATE, kind="prestart", index=0)


def test_first_failure_stops_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "log"
    hooks = [sh(f"echo a >> {log}"), sh("exit 7"), sh(f"echo c >> {log}")]
    with pytest.raises(HookError, match=r"prestart hook #1 .*exit status 7"):
        run_hooks(hooks, STATE, kind="prestart")
    assert log.read_text().split() == ["a"]


def test_warn_only_continues(tmp_path: Path) -> None:
    log = tmp_path / "log"
    warnings: list[str] = []
    hooks = [sh("exit 2"), Hook("/nonexistent"), sh(f"echo c >> {log}")]
    run_hooks(hooks, STATE, kind="poststop", warn_only=True, warn=warnings.append)
    assert log.read_text().split() == ["c"]
    assert len(warnings) == 2
    assert warnings[0].startswith("poststop hook #0 (/bin/sh): exit status 2")
    assert warnings[1].startswith("poststop hook #1 (/nonexistent): exec failed")


def test_warn_only_without_callback_is_silent() -> None:
    run_hooks([sh("exit 1")], STATE, kind="poststop", warn_only=True)


def test_hook_ignoring_large_state_is_not_an_error() -> None:
    big = json.dumps({"annotations": {"k": "x" * (4 << 20)}}).encode()
    run_hook(Hook("/bin/true"), big, kind="prestart", index=0)
    # ... and one that reads a little, then exits 0 while we are still writing.
    run_hook(sh("head -c 10 > /dev/null"), big, kind="prestart", index=0)


def test_large_state_is_delivered_whole(tmp_path: Path) -> None:
    big = json.dumps({"annotations": {"k": "y" * (2 << 20)}}).encode()
    out = tmp_path / "big"
    run_hook(sh(f"cat > {out}"), big, kind="prestart", index=0)
    assert out.read_bytes() == big


def test_large_output_does_not_block() -> None:
    # More than a pipe buffer on both streams, then a failure: the tail is kept.
    hook = sh("head -c 1000000 /dev/zero; head -c 1000000 /dev/zero >&2; echo last >&2; exit 4")
    with pytest.raises(HookError, match=r"exit status 4: .*last") as info:
        run_hook(hook, STATE, kind="prestart", index=0)
    assert len(str(info.value)) < 600
    assert "\0" not in str(info.value)


def test_works_with_config_hook_type() -> None:
    config = pytest.importorskip("pysandbox.oci.config")
    run_hooks([config.Hook(path="/bin/true")], STATE, kind="prestart")


def test_hook_is_cheap() -> None:
    hook = Hook("/bin/true")
    run_hook(hook, STATE, kind="prestart", index=0)
    n = 50
    start = time.perf_counter()
    for _ in range(n):
        run_hook(hook, STATE, kind="prestart", index=0)
    per_hook = (time.perf_counter() - start) / n
    assert per_hook < 0.01, f"{per_hook * 1000:.2f} ms per /bin/true hook"
