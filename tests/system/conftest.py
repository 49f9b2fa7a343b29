"""System-layer fixtures. Multi-host tests need root and `ip netns`; elsewhere they skip."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed import netns


@pytest.fixture(scope="module")
def network_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[type[netns.Network]]:
    """Skips the module (with the reason) when namespaces cannot be made here."""
    reason = netns.available()
    if reason is not None:
        pytest.skip(reason)
    yield netns.Network
