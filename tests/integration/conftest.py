"""Fixtures for tests that need root, runc and a containerd of their own.

``containerd`` (session): a private containerd with the busybox image
imported into its own namespace; see harness.py.  ``container_id`` (per
test): a fresh id whose task and container are deleted afterwards,
whatever the test left behind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import Containerd

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark everything under this folder, so `-m 'not integration'` works."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def containerd() -> Iterator[Containerd]:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root to run containerd and runc")
    ctrd = Containerd.start()
    try:
        yield ctrd
    finally:
        ctrd.stop()


@pytest.fixture
def container_id(
    containerd: Containerd, request: pytest.FixtureRequest
) -> Iterator[str]:
    name = request.node.name.removeprefix("test_")
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "-", name)[:40].strip("-._")
    container_id = containerd.unique_id(prefix or "test")
    yield container_id
    containerd.cleanup_container(container_id)
