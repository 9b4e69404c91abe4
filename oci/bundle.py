"""The embedded default bundle: a busybox-static rootfs plus the default config.

`pysandbox bundle DIR` (and the demo and tests) need a container image that
exists on any Debian host without a registry: Debian's busybox-static gives a
whole userland in one binary, one symlink per applet.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

from .specgen import default_spec, write_spec

HOST_BUSYBOX = Path("/bin/busybox")

_PT_INTERP = 3
_ROOTFS_DIRS = {
    "proc": 0o555,
    "sys": 0o555,
    "dev": 0o755,
    "tmp": 0o1777,
    "etc": 0o755,
    "root": 0o700,
}
_ETC_FILES = {
    "passwd": (
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    ),
    "group": "root:x:0:\nnobody:x:65534:\n",
    "hostname": "pysandbox\n",
}


class BundleError(Exception):
    """The default bundle cannot be built on this host."""


def _interpreter(binary: Path) -> str | None:
    """The PT_INTERP of a 64-bit little-endian ELF file, or None if it has none.

    A binary with an interpreter needs the host's dynamic loader and libc,
    which the busybox rootfs does not have.
    """
    with open(binary, "rb") as f:
        header = f.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF":
            raise BundleError(f"{binary}: not an ELF executable")
        if header[4] != 2 or header[5] != 1:
            raise BundleError(f"{binary}: not a 64-bit little-endian ELF executable")
        # e_phoff (u64 at 32), e_phentsize and e_phnum (u16 at 54 and 56).
        (phoff,) = struct.unpack_from("<Q", header, 32)
        phentsize, phnum = struct.unpack_from("<HH", header, 54)
        for index in range(phnum):
            f.seek(phoff + index * phentsize)
            # p_type (u32), p_flags (u32), p_offset (u64), ..., p_filesz (u64 at 32).
            entry = f.read(40)
            if len(entry) < 40:
                raise BundleError(f"{binary}: truncated ELF program headers")
            p_type, _flags, p_offset = struct.unpack_from("<IIQ", entry)
            if p_type == _PT_INTERP:
                (p_filesz,) = struct.unpack_from("<Q", entry, 32)
                f.seek(p_offset)
                return f.read(p_filesz).rstrip(b"\0").decode(errors="replace")
    return None


def _check_static(busybox: Path) -> None:
    if not busybox.is_file():
        raise BundleError(f"{busybox}: not found; install Debian's busybox-static package")
    interpreter = _interpreter(busybox)
    if interpreter is not None:
        raise BundleError(
            f"{busybox} is dynamically linked (interpreter {interpreter}); "
            "the rootfs needs a static one: install Debian's busybox-static package"
        )


def _applets(busybox: Path) -> list[str]:
    listing = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout
    # Names are plain words ("[" and "[[" included); refuse anything path-like.
    return [name for name in listing.split() if "/" not in name and name not in (".", "..")]


def _install_file(path: Path, data: bytes | None, source: Path | None = None) -> None:
    """Replace `path` atomically, so a half-written file is never left behind."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            if source is not None:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, f)
            elif data is not None:
                f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _link_applet(bin_dir: Path, name: str) -> None:
    link = bin_dir / name
    if link.is_symlink():
        if os.readlink(link) == "busybox":
            return
        link.unlink()
    elif link.exists():
        return  # a real file someone put there wins over the applet
    # Relative, so the link resolves inside the container's root too.
    link.symlink_to("busybox")


def make_busybox_rootfs(rootfs: Path, *, busybox: Path = HOST_BUSYBOX) -> None:
    """Build (or refresh) a busybox rootfs at `rootfs`; safe to run again."""
    _check_static(busybox)
    rootfs = Path(rootfs)
    bin_dir = rootfs / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, mode in _ROOTFS_DIRS.items():
        directory = rootfs / name
        directory.mkdir(exist_ok=True)
        directory.chmod(mode)  # mkdir's mode is filtered by the umask

    target = bin_dir / "busybox"
    _install_file(target, None, source=busybox)
    target.chmod(0o755)
    for name in _applets(busybox):
        if name != "busybox":
            _link_applet(bin_dir, name)

    for name, text in _ETC_FILES.items():
        path = rootfs / "etc" / name
        _install_file(path, text.encode())
        path.chmod(0o644)


def write_bundle(bundle: Path, args: list[str] | None = None, *, rootless: bool = False) -> Path:
    """Create a runnable bundle at `bundle` (rootfs + config.json); return its path.

    config.json is rewritten each time (with `args`, terminal false so it runs
    without a console socket); the rootfs is refreshed in place.
    """
    bundle = Path(bundle).absolute()
    bundle.mkdir(parents=True, exist_ok=True)
    make_busybox_rootfs(bundle / "rootfs")
    config = bundle / "config.json"
    config.unlink(missing_ok=True)
    write_spec(bundle, default_spec(args, rootless=rootless, terminal=False))
    return bundle
