"""`pysandbox install` / `uninstall` on real files, through the functions and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pysandbox.oci.install import default_binary, install, uninstall
from pysandbox.oci.log import RuntimeFailure
from tests.conftest import PYSANDBOX

EXISTING: dict[str, Any] = {
    "log-level": "warn",
    "registry-mirrors": ["https://mirror.example"],
    "runtimes": {"other": {"path": "/usr/bin/other-runtime", "runtimeArgs": ["--x"]}},
    "default-runtime": "runc",
}


@pytest.fixture
def binary(tmp_path: Path) -> str:
    path = tmp_path / "bin" / "pysandbox"
    path.parent.mkdir()
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def write(config: Path, doc: Any) -> str:
    text = json.dumps(doc, indent=2) + "\n"
    config.write_text(text)
    return text


def read(config: Path) -> Any:
    return json.loads(config.read_text())


def siblings(config: Path) -> list[str]:
    return sorted(p.name for p in config.parent.iterdir() if p.name != "bin")


def test_creates_a_new_file(tmp_path: Path, binary: str) -> None:
    config = tmp_path / "etc" / "docker" / "daemon.json"
    msg = install(runtime="pysandbox", config=str(config), path=binary, runtime_args=[])
    assert "added" in msg
    assert read(config) == {"runtimes": {"pysandbox": {"path": binary}}}
    assert config.stat().st_mode & 0o777 == 0o644
    assert siblings(config) == ["daemon.json"]  # nothing to back up, no temp file left


def test_keeps_everything_else_and_backs_up_first(tmp_path: Path, binary: str) -> None:
    config = tmp_path / "daemon.json"
    original = write(config, EXISTING)
    config.chmod(0o600)
    msg = install(runtime="pysandbox", config=str(config), path=binary, runtime_args=["--debug"])
    assert "daemon.json.bak" in msg
    doc = read(config)
    assert doc["runtimes"] == {
        **EXISTING["runtimes"],
        "pysandbox": {"path": binary, "runtimeArgs": ["--debug"]},
    }
    assert {k: v for k, v in doc.items() if k != "runtimes"} == {
        k: v for k, v in EXISTING.items() if k != "runtimes"
    }
    assert list(doc) == list(EXISTING)  # key order kept
    assert (tmp_path / "daemon.json.bak").read_text() == original
    assert config.stat().st_mode & 0o777 == 0o600
    assert siblings(config) == ["daemon.json", "daemon.json.bak"]


def test_second_install_changes_nothing(tmp_path: Path, binary: str) -> None:
    config = tmp_path / "daemon.json"
    write(config, EXISTING)
    install(runtime="pysandbox", config=str(config), path=binary, runtime_args=[])
    before = (config.read_text(), config.stat().st_mtime_ns, siblings(config))
    msg = install(runtime="pysandbox", config=str(config), path=binary, runtime_args=[])
    assert "nothing changed" in msg
    assert (config.read_text(), config.stat().st_mtime_ns, siblings(config)) == before


def test_update_keeps_every_backup(tmp_path: Path, binary: str) -> None:
    config = tmp_path / "daemon.json"
    original = write(config, EXISTING)
    install(runtime="pysandbox", config=str(config), path=binary, runtime_args=[])
    first = config.read_text()
    msg = install(runtime="pysandbox", config=str(config), path=binary, runtime_args=["--debug"])
    assert msg.startswith("updated")
    assert read(config)["runtimes"]["pysandbox"]["runtimeArgs"] == ["--debug"]
    backups = [n for n in siblings(config) if n.startswith("daemon.json.bak")]
    assert len(backups) == 2
    texts = {(tmp_path / n).read_text() for n in backups}
    assert texts == {original, first}


def test_invalid_json_is_left_alone(tmp_path: Path, binary: str) -> None:
    config = tmp_path / "daemon.json"
    config.write_text('{"log-level": "warn",\n  oops}\n')
    with pytest.raises(RuntimeFailure, match=r"not valid JSON.*line 2.*nothing changed"):
        install(runtime="pysandbox", config=str(config), path=binary, runtime_args=[])
    assert config.read_text() == '{"log-level": "warn",\n  oops}\n'
    assert siblings(config) == ["daemon.json"]
    with pytest.raises(RuntimeFailure, match="not valid JSON"):
        uninstall(runtime="pysandbox", config=str(config))


@pytest.mark.parametrize(
    ("doc", "what"), [([1, 2], "not a JSON object"), ({"runtimes": []}, '"runtimes" is not')]
)
def test_wrong_shapes_are_refused(tmp_path: Path, binary: str, doc: Any, what: str) -> None:
    config = tmp_path / "daemon.json"
    text = write(config, doc)
    with pytest.raises(RuntimeFailure, match=what):
        install(runtime="pysandbox", config=str(config), path=binary, runtime_args=[])
    assert config.read_text() == text


def test_empty_file_counts_as_empty_object(tmp_path: Path, binary: str) -> None:
    config = tmp_path / "daemon.json"
    config.write_text("\n")
    install(runtime="pysandbox", config=str(config), path=binary, runtime_args=[])
    assert read(config) == {"runtimes": {"pysandbox": {"path": binary}}}


def test_refusals(tmp_path: Path, binary: str) -> None:
    config = tmp_path / "daemon.json"
    with pytest.raises(RuntimeFailure, match="built-in runtime"):
        install(runtime="runc", config=str(config), path=binary, runtime_args=[])
    with pytest.raises(RuntimeFailure, match="not an executable file"):
        install(runtime="x", config=str(config), path=str(tmp_path / "nope"), runtime_args=[])
    assert not config.exists()


def test_uninstall(tmp_path: Path, binary: str) -> None:
    config = tmp_path / "daemon.json"
    write(config, EXISTING)
    install(runtime="pysandbox", config=str(config), path=binary, runtime_args=[])
    msg = uninstall(runtime="pysandbox", config=str(config))
    assert msg.startswith("removed")
    assert read(config) == EXISTING
    assert "nothing changed" in uninstall(runtime="pysandbox", config=str(config))
    # removing the last runtime drops the empty "runtimes" object
    uninstall(runtime="other", config=str(config))
    assert "runtimes" not in read(config)
    assert "does not exist" in uninstall(runtime="pysandbox", config=str(tmp_path / "none.json"))


def test_uninstall_refuses_the_default_runtime(tmp_path: Path, binary: str) -> None:
    config = tmp_path / "daemon.json"
    text = write(
        config, {"default-runtime": "pysandbox", "runtimes": {"pysandbox": {"path": binary}}}
    )
    with pytest.raises(RuntimeFailure, match="default-runtime"):
        uninstall(runtime="pysandbox", config=str(config))
    assert config.read_text() == text


def test_default_binary_keeps_the_stable_name(
    tmp_path: Path, binary: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = tmp_path / "usr-local-bin-pysandbox"
    link.symlink_to(binary)
    assert default_binary(str(link)) == str(link)  # not resolved into the venv
    monkeypatch.chdir(tmp_path)
    assert default_binary("./bin/pysandbox") == binary


def test_cli_install_uses_the_running_launcher(tmp_path: Path) -> None:
    config = tmp_path / "daemon.json"
    res = subprocess.run(
        [PYSANDBOX, "install", "--config", str(config), "--", "--debug", "--log-format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "added" in res.stdout
    entry = read(config)["runtimes"]["pysandbox"]
    assert entry == {
        "path": os.path.abspath(PYSANDBOX),
        "runtimeArgs": ["--debug", "--log-format", "json"],
    }
    res = subprocess.run(
        [PYSANDBOX, "install", "--config", str(config), "--", "--debug", "--log-format", "json"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and "nothing changed" in res.stdout
    res = subprocess.run(
        [PYSANDBOX, "uninstall", "--config", str(config)], capture_output=True, text=True
    )
    assert res.returncode == 0 and "removed" in res.stdout
    config.write_text("{")
    res = subprocess.run(
        [PYSANDBOX, "install", "--config", str(config)], capture_output=True, text=True
    )
    assert res.returncode == 1
    assert "not valid JSON" in res.stderr
    assert config.read_text() == "{"
