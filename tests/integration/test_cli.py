"""The command line itself: version, spec, features, logging, usage errors,
unknown containers and bundles that must be refused before anything is made."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Bundle, Runner
from tests.integration.helpers import RFC3339, fails, snapshot

MISSING = "pst-does-not-exist"

# Every subcommand that names a container, with what it takes besides the id.
BY_ID: list[tuple[str, list[str], list[str]]] = [
    ("start", [], []),
    ("state", [], []),
    ("kill", [], []),
    ("kill", ["--all"], ["KILL"]),
    ("delete", [], []),
    ("pause", [], []),
    ("resume", [], []),
    ("ps", [], []),
    ("ps", ["--format", "json"], []),
    ("exec", [], ["true"]),
    ("update", ["--pids-limit", "10"], []),
    ("events", ["--stats"], []),
    ("events", [], []),
]


def test_version_three_lines(runtime: Runner) -> None:
    for flag in ("--version", "-v"):
        res = runtime(flag, check=True)
        lines = res.stdout.splitlines()
        assert len(lines) == 3, res.stdout
        assert lines[0].startswith("pysandbox version ") and len(lines[0].split()) == 3
        assert lines[1].startswith("commit: ")
        assert lines[2] == "spec: 1.2.0"


@pytest.mark.parametrize("command,flags,extra", BY_ID)
def test_unknown_container(
    runtime: Runner, command: str, flags: list[str], extra: list[str]
) -> None:
    runtime.root.mkdir(parents=True, exist_ok=True)
    before = snapshot(runtime)
    # runc exits 255 when exec itself fails (a process that ran exits with its own code)
    rc = 255 if command == "exec" else 1
    fails(runtime, command, *flags, MISSING, *extra, msg="container does not exist", rc=rc)
    assert snapshot(runtime) == before


def test_delete_force_missing_is_silent(runtime: Runner) -> None:
    res = runtime("delete", "--force", MISSING)
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


def test_usage_errors(runtime: Runner, bundle: Bundle) -> None:
    runtime.root.mkdir(parents=True, exist_ok=True)
    before = snapshot(runtime, None, "x", "a", "b")
    fails(runtime, "frobnicate", msg="No help topic for 'frobnicate'", rc=3)
    fails(runtime, "create", "--foo", "x", msg="flag provided but not defined: -foo")
    fails(runtime, "--foo", "list", msg="flag provided but not defined: -foo")
    fails(runtime, "state", "-foo=1", "x", msg="flag provided but not defined: -foo")
    for command in ("create", "start", "state", "delete", "pause", "resume", "update", "events"):
        fails(runtime, command, msg="requires exactly 1 argument(s)")
        fails(runtime, command, "a", "b", msg="requires exactly 1 argument(s)")
    for command in ("list", "spec", "features"):
        fails(runtime, command, "x", msg="requires exactly 0 argument(s)")
    fails(runtime, "exec", msg="requires a minimum of 1 argument(s)")
    fails(runtime, "create", "--bundle", msg="flag needs an argument: -bundle")
    fails(runtime, "--log-format", "xml", "list", msg="invalid log-format")
    for command in ("create", "run"):
        fails(
            runtime,
            command,
            "--bundle",
            str(bundle.path),
            "../x",
            msg="invalid container ID format",
        )
    for command in ("state", "start", "kill", "delete", "pause", "exec", "ps"):
        rc = 255 if command == "exec" else 1
        fails(runtime, command, "../x", msg="invalid container ID format", rc=rc)
    assert snapshot(runtime, None, "x", "a", "b") == before
    assert not (Path.cwd() / "config.json").exists()


def test_help(runtime: Runner) -> None:
    res = runtime("--help", check=True)
    assert "COMMANDS:" in res.stdout and "create" in res.stdout
    res = runtime("kill", "--help", check=True)
    assert "pysandbox kill" in res.stdout and "--all" in res.stdout


def test_log_json(runtime: Runner, tmp_path: Path) -> None:
    log = tmp_path / "log.json"
    res = runtime("--log", str(log), "--log-format", "json", "state", MISSING)
    assert res.returncode == 1
    assert res.stderr == "container does not exist\n"
    lines = log.read_text().splitlines()
    assert len(lines) == 1
    rec = json.loads(lines[0])
    assert list(rec) == ["level", "msg", "time"]
    assert rec["level"] == "error" and rec["msg"] == "container does not exist"
    assert RFC3339.match(rec["time"]), rec["time"]
    assert lines[0] == json.dumps(rec, separators=(",", ":"))  # compact, as logrus writes it
    # without --log the JSON record goes to stderr
    res = runtime("--log-format", "json", "state", MISSING)
    assert res.returncode == 1
    rec = json.loads(res.stderr)
    assert rec["msg"] == "container does not exist" and rec["level"] == "error"
    assert res.stderr == json.dumps(rec, separators=(",", ":")) + "\n"
    # the file is appended to, one object per line
    runtime("--log", str(log), "--log-format", "json", "kill", MISSING)
    assert len(log.read_text().splitlines()) == 2


def test_log_text(runtime: Runner, tmp_path: Path) -> None:
    res = runtime("state", MISSING)
    assert res.returncode == 1
    line = res.stderr.strip()
    assert line.startswith('time="') and 'level=error msg="container does not exist"' in line
    log = tmp_path / "log.txt"
    res = runtime("--log", str(log), "start", MISSING)
    assert res.stderr == "container does not exist\n"
    assert 'level=error msg="container does not exist"' in log.read_text()


def test_spec(runtime: Runner, tmp_path: Path) -> None:
    target = tmp_path / "spec"
    target.mkdir()
    runtime("spec", "--bundle", str(target), check=True)
    config = json.loads((target / "config.json").read_text())
    assert config["ociVersion"] == "1.2.0"
    assert config["process"]["args"] == ["sh"] and config["root"]["path"] == "rootfs"
    assert {n["type"] for n in config["linux"]["namespaces"]} >= {"pid", "mount"}
    original = (target / "config.json").read_text()
    fails(runtime, "spec", "--bundle", str(target), msg="exists")
    assert (target / "config.json").read_text() == original

    rootless = tmp_path / "rootless"
    rootless.mkdir()
    runtime("spec", "--rootless", "--bundle", str(rootless), check=True)
    config = json.loads((rootless / "config.json").read_text())
    assert "user" in {n["type"] for n in config["linux"]["namespaces"]}
    assert config["linux"]["uidMappings"] and config["linux"]["gidMappings"]


def test_features(runtime: Runner) -> None:
    doc = json.loads(runtime("features", check=True).stdout)
    assert doc["ociVersionMin"].startswith("1.0") and doc["ociVersionMax"] == "1.2.0"
    assert "pid" in doc["linux"]["namespaces"]
    assert "CAP_SYS_ADMIN" in doc["linux"]["capabilities"]


def _edit(config: dict[str, Any], how: str) -> None:
    if how == "args-empty":
        config["process"]["args"] = []
    elif how == "namespace":
        config["linux"]["namespaces"].append({"type": "bogus"})
    elif how == "capability":
        config["process"]["capabilities"]["bounding"].append("CAP_BOGUS")
    elif how == "windows":
        config["windows"] = {"layerFolders": ["C:\\layers"]}
    elif how == "no-process":
        del config["process"]


@pytest.mark.parametrize(
    "how,msg",
    [
        ("args-empty", "process.args"),
        ("namespace", 'unknown namespace type \\"bogus\\"'),
        ("capability", 'unknown capability \\"CAP_BOGUS\\"'),
        ("windows", "windows"),
        ("no-process", "process"),
        ("bad-json", "invalid JSON"),
        ("no-rootfs", "root.path"),
        ("no-bundle", "no such directory"),
    ],
)
def test_bad_bundle_creates_nothing(
    runtime: Runner, bundle: Bundle, cid: str, how: str, msg: str
) -> None:
    path = str(bundle.path)
    if how == "bad-json":
        (bundle.path / "config.json").write_text('{"ociVersion": ')
    elif how == "no-rootfs":
        bundle.rootfs.rename(bundle.path / "elsewhere")
    elif how == "no-bundle":
        path = str(bundle.path / "nonexistent")
    else:
        _edit(bundle.config, how)
        bundle.write()
    runtime.root.mkdir(parents=True, exist_ok=True)
    before = snapshot(runtime, None, cid)
    for command in (["create"], ["run", "-d"]):
        err = fails(runtime, *command, "--bundle", path, cid, msg=msg)
        assert "Traceback" not in err and "config.json: config.json" not in err
        assert snapshot(runtime, None, cid) == before
    fails(runtime, "state", cid, msg="container does not exist")
