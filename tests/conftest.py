"""Session-wide test settings and shared fixtures.

One torch thread for the whole session: the models under test are tiny, and on a busy 2-core machine
multi-threaded small ops stall in OpenMP barriers (milliseconds instead of microseconds per op).
"""

from __future__ import annotations

import pytest
import torch

from workbench.data.world import World, WorldConfig, build_world

TINY_WORLD = WorldConfig(n_train=200, n_val=50, n_test=100)


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_world() -> World:
    """A small built-in world (200/50/100 images, 5 captions each); built once per session, never mutated."""
    return build_world(TINY_WORLD)
