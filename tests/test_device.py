"""Device helpers: device choice errors and giving freed host memory back to the OS."""

from __future__ import annotations

import platform

import pytest
import torch

from workbench.device import pick_device, release_host_memory


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1]) / 1024


def test_pick_device_names_the_bad_value() -> None:
    assert pick_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="device"):
        pick_device("tpu")


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="needs glibc")
def test_release_host_memory_returns_freed_heap_to_the_os() -> None:
    # Many small (below the mmap threshold) tensors freed out of order leave holes in glibc's heap that stay in RSS.
    keep, drop = [], []
    for i in range(40_000):
        (keep if i % 64 == 0 else drop).append(torch.empty(2_000 + (i % 7) * 100, dtype=torch.float64))
    del drop
    before = _rss_mb()
    assert release_host_memory() is True
    assert _rss_mb() < before - 100, "malloc_trim gave back less than 100 MB of ~620 MB freed"
    assert len(keep) == 625
