"""Fixtures for the engine tests: a private dockerd per session, and a check
after every test that the containers it removed left nothing behind."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest

from tests.engines.dockerd import (
    DOCKER,
    DOCKERD,
    Dockerd,
    container_cgroups,
    container_processes,
    mounts_under,
    pysandbox_runtimes,
)


@pytest.fixture(scope="session")
def dockerd_session() -> Iterator[Dockerd]:
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root")
    if not (os.path.exists(DOCKERD) and shutil.which(DOCKER)):
        pytest.skip("docker.io is not installed (make setup installs it)")
    daemon = Dockerd(pysandbox_runtimes())
    try:
        daemon.start()
        daemon.import_image()
    except BaseException:
        daemon.stop()
        raise
    daemon.baseline_mounts = set(mounts_under(daemon.base))
    yield daemon
    left = daemon.stop()
    assert not left, f"the docker session left things behind: {left}"
    assert not daemon.base.exists()


def _leftovers(daemon: Dockerd) -> dict[str, list[str]]:
    found = {
        "container processes": [str(p) for p in container_processes(daemon.cgroup_parent)],
        "cgroups": container_cgroups(daemon.cgroup_parent),
        "pysandbox state": daemon.state_dirs(),
        "mounts": [m for m in mounts_under(daemon.base) if m not in daemon.baseline_mounts],
    }
    return {k: v for k, v in found.items() if v}


@pytest.fixture
def docker(dockerd_session: Dockerd) -> Iterator[Dockerd]:
    """The session's dockerd. Afterwards every container is removed and nothing
    of theirs may remain: processes, cgroups, pysandbox state, mounts."""
    yield dockerd_session
    dockerd_session.remove_all_containers()
    deadline = time.monotonic() + 5
    left = _leftovers(dockerd_session)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _leftovers(dockerd_session)
    if left:
        pytest.fail(f"containers left things behind: {left}")
