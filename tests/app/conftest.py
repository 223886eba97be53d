"""Fixtures of the in-process tests: each builds its own gateway, so only the simulators
need healing between tests (no shared gateway process's breakers to reset)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from loadtest.harness import Upstreams


@pytest.fixture
def healthy(upstreams: Upstreams) -> Iterator[Upstreams]:
    """Healthy simulators before and after."""
    upstreams.heal()
    try:
        yield upstreams
    finally:
        upstreams.heal()
