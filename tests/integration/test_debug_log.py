"""`--debug` records each invocation's command line in the log: under an engine
(dockerd's runtimeArgs, containerd's shim) it is the only way to see what the
runtime was really asked to do."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import Runner


def test_debug_records_the_command_line(runtime: Runner, tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    debug = Runner(runtime.root, ["--debug", "--log", str(log), "--log-format", "json"])
    res = debug("state", "pst-nonexistent")
    assert res.returncode == 1
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records[0]["level"] == "debug"
    assert records[0]["msg"].startswith("pysandbox state: argv ['--root',")
    assert "'pst-nonexistent'" in records[0]["msg"]
    assert records[-1]["level"] == "error"
    assert "does not exist" in records[-1]["msg"]


def test_no_debug_records_without_the_flag(runtime: Runner, tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    quiet = Runner(runtime.root, ["--log", str(log), "--log-format", "json"])
    assert quiet("state", "pst-nonexistent").returncode == 1
    levels = [json.loads(line)["level"] for line in log.read_text().splitlines()]
    assert levels == ["error"]
