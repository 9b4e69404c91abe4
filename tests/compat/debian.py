"""A Debian root file system for the compatibility tests, made with debootstrap
from this machine's configured apt mirror and kept between runs.

The tree lives in the runtime's cache directory (/var/cache/pysandbox for
root, or $PYSANDBOX_CACHE_DIR), named after the suite and the package list,
and is built into a temporary directory and renamed into place, so a build cut
short leaves nothing that looks finished. The containers never write it: under
pysandbox its writes go to the overlay's upper layer, and the runc side runs it
with a read-only root and a tmpfs for its work.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

SUITE = "bookworm"
PACKAGES = ("python3", "libpython3.11-testsuite", "gcc", "make", "git", "libc6-dev")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SOURCES = (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))


def apt_mirror() -> str:
    """The first Debian archive URI this machine's apt is configured with."""
    for path in SOURCES:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and len(words) > 1 and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"] and len(words) > 2:
                uri = next((w for w in words[1:] if "://" in w), "")
                if uri and "security" not in uri:
                    return uri
    return DEFAULT_MIRROR


def cache_root() -> Path:
    return Path(os.environ.get("PYSANDBOX_CACHE_DIR", "/var/cache/pysandbox")) / "rootfs"


def debian_rootfs() -> Path:
    """The cached tree (built on first use: about a minute here)."""
    key = hashlib.sha256(" ".join((SUITE, *PACKAGES)).encode()).hexdigest()[:12]
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    tree = root / f"debian-{SUITE}-{key}"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs build it once
        if (tree / "usr" / "bin" / "python3").exists():
            return tree
        debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
        work = root / f".build-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        res = subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(work),
                apt_mirror(),
            ],
            capture_output=True,
            text=True,
            timeout=900,
        )
        if res.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            raise RuntimeError(f"debootstrap failed:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
        (work / "work").mkdir(exist_ok=True)  # the tests' tmpfs mount point
        for deb in (work / "var" / "cache" / "apt" / "archives").glob("*.deb"):
            deb.unlink()
        os.rename(work, tree)
    return tree
