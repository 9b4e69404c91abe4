"""--overlay parsing and sizing (oci/overlay.py); the mounts are tested in
real containers (tests/integration/test_overlay.py)."""

from __future__ import annotations

import os

import pytest

from pysandbox.oci.overlay import Overlay, OverlayError, parse_overlay, tmpfs_size


def test_parse_forms() -> None:
    assert parse_overlay("root:memory") == Overlay("memory")
    assert parse_overlay("root:memory,size=512m") == Overlay("memory", size=512 << 20)
    assert parse_overlay("root:memory,size=2GiB") == Overlay("memory", size=2 << 30)
    assert parse_overlay("root:memory,size=4096") == Overlay("memory", size=4096)
    assert parse_overlay("root:dir=/var/lib/x") == Overlay("dir", path="/var/lib/x")
    assert parse_overlay("none") == Overlay("none")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "memory",
        "root:disk",
        "root:memory,size=",
        "root:memory,size=-1m",
        "root:memory,size=lots",
        "root:memory,mode=0755",
        "root:dir=relative/path",
        "root:dir=/a,size=1m",
        "self:memory",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(OverlayError, match="invalid overlay"):
        parse_overlay(text)


def test_size_defaults() -> None:
    assert tmpfs_size(Overlay("memory", size=123 << 20), 64 << 20) == 123 << 20
    assert tmpfs_size(Overlay("memory"), 64 << 20) == 32 << 20
    host_half = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    assert tmpfs_size(Overlay("memory"), None) == host_half
