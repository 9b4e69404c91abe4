"""The shortest path through the runtime: run a container, see its output."""

from __future__ import annotations

from tests.conftest import Bundle, Runner


def test_run_echo(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sh", "-c", "echo hello; exit 7")
    res = runtime("run", "--bundle", str(bundle.path), cid)
    assert res.stdout == "hello\n", res.stderr
    assert res.returncode == 7


def test_create_start_delete(runtime: Runner, bundle: Bundle, cid: str) -> None:
    bundle.args("sleep", "30")
    runtime("create", "--bundle", str(bundle.path), cid, check=True)
    assert runtime.state(cid)["status"] == "created"
    runtime("start", cid, check=True)
    assert runtime.state(cid)["status"] == "running"
    runtime("kill", cid, "KILL", check=True)
    runtime("delete", "--force", cid, check=True)
    assert runtime("state", cid).returncode == 1
