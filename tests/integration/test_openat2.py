"""openat2(2) scoped by RESOLVE_BENEATH or RESOLVE_IN_ROOT, opening to write:
the gofer does it in its view of the directory (the kernel's own view of the
root is read-only, where such an open failed with EROFS). Every answer and
the tree it leaves must be runc's."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.conftest import Bundle, Runner
from tests.integration.helpers import compile_probe, run_runc

PROBE = Path(__file__).parent / "probes" / "openat2.c"
LIST = "/probe; echo rc=$?; cd /scope && find . | sort && cat new sub/new sub/linked"


def test_scoped_opens_that_write_agree_with_runc(
    runtime: Runner, bundle: Bundle, cid: str, tmp_path: Path
) -> None:
    exe = compile_probe(tmp_path, PROBE.read_text(), "openat2")
    shutil.copy2(exe, bundle.rootfs / "probe")
    bundle.config["root"]["readonly"] = False
    caps = bundle.config["process"]["capabilities"]
    for kind in ("bounding", "effective", "permitted"):  # the probe becomes uid 1000
        caps[kind] = sorted({*caps.get(kind, []), "CAP_SETUID", "CAP_SETGID"})
    bundle.args("sh", "-c", LIST).write()
    got = runtime("run", "--bundle", str(bundle.path), cid)
    # runc writes the rootfs itself: a fresh copy of it
    theirs = tmp_path / "runc-bundle"
    shutil.copytree(bundle.path, theirs, symlinks=True)
    want = run_runc(tmp_path, Bundle(theirs, bundle.config), cid + "-runc")
    assert got.stdout.splitlines() == want.stdout.splitlines(), got.stderr
    assert "rc=0" in got.stdout and "create: ok mode 640 size 6" in got.stdout
    assert "dotdot out: Invalid cross-device link" in got.stdout
    assert not (bundle.rootfs / "scope").exists()  # the overlay took the writes
