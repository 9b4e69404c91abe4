"""Compatibility: the same busybox script in a container under pysandbox (sentry
and overlay, the defaults) and under runc must print the same bytes.

The script exercises what issue 5's file layer will serve: mkdir, cp -a, ln and
ln -s, tar c/x, sed -i, mv across directories, find, ls -la (without times and
inode numbers, which differ between any two runs), stat of every file, cat.
It guards today's pass-through and every handler that replaces it. Directory
sizes and link counts are left out: they are the file system's business (ext4
says 4096 and 2 + subdirectories; the overlay's tmpfs upper layer counts entries,
and overlayfs reports 1 link for a directory merged from the image), not the
workload's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Bundle, Runner

SCRIPT = r"""
set -e
cd /work
mkdir -p a/b/c
printf 'line one\nline two\ndata\n' > a/f
printf 'x%.0s' $(seq 1 5000) > a/b/big
chmod 640 a/f
chmod 2755 a/b
ln a/f a/hard
ln -s f a/link
ln -s ../f a/b/uplink
cp -a a copy
tar cf t.tar a
mkdir unpacked
tar xf t.tar -C unpacked
sed -i 's/data/DATA/' a/f
mv a/b/big copy/b/c/moved
mv copy/link copy/b/link-moved
rm a/hard
rmdir unpacked/a/b/c
echo '--- find'
find . | sort
echo '--- ls'
ls -la a copy copy/b unpacked/a | awk '/^total/ {next}
  NF > 2 {d = $1 ~ /^d/; print $1, d ? "-" : $2, $3, $4, d ? "-" : $5, $NF}
  NF <= 2'
echo '--- stat'
find . -exec stat -c '%n %s %h %a %F' {} + \
  | awk '$NF == "directory" {$2 = "-"; $3 = "-"} {print}' | sort
echo '--- content'
cat a/f copy/f unpacked/a/f; readlink copy/b/link-moved; readlink a/b/uplink
wc -c copy/b/c/moved
"""


def _bundle(tmp: Path, busybox_rootfs: Path, name: str) -> Bundle:
    from pysandbox.oci.specgen import default_spec

    path = tmp / name
    path.mkdir()
    shutil.copytree(busybox_rootfs, path / "rootfs", symlinks=True)
    (path / "rootfs" / "work").mkdir()
    config = default_spec(["sh", "-c", SCRIPT], terminal=False)
    config["root"]["readonly"] = False
    config["ociVersion"] = "1.0.2"
    return Bundle(path, config).write()


def test_file_operations_match_runc(runtime: Runner, busybox_rootfs: Path, tmp_path: Path) -> None:
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed (make setup installs it)")
    ours = _bundle(tmp_path, busybox_rootfs, "ours")
    res = runtime("run", "--bundle", str(ours.path), "compat-busybox")
    assert res.returncode == 0, res.stderr
    theirs = _bundle(tmp_path, busybox_rootfs, "runc")
    ref = subprocess.run(
        [
            "runc",
            "--root",
            str(tmp_path / "runc-state"),
            "run",
            "--bundle",
            str(theirs.path),
            "compat-busybox-runc",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ref.returncode == 0, ref.stderr
    assert res.stdout == ref.stdout
    assert "--- content" in res.stdout and "DATA" in res.stdout
    # runc wrote its bundle; ours was left as it was (the overlay took the writes)
    assert (theirs.rootfs / "work" / "a").exists()
    assert list((ours.rootfs / "work").iterdir()) == []
    assert json.loads((ours.path / "config.json").read_text())["root"]["readonly"] is False
