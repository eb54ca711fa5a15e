"""service.heap: free heap pages go back to the system when trimmed."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from service import heap

pytestmark = pytest.mark.skipif(not heap.available(), reason="glibc only")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_trim_returns_the_free_middle_of_the_heap() -> None:
    # 64 KiB blocks come from the heap (below glibc's mmap threshold); the last one stays
    # alive, so the freed ones sit below it where only malloc_trim can give them back.
    blocks = [bytearray(b"x" * (64 * 1024)) for _ in range(3000)]
    keeper = bytearray(b"y" * (64 * 1024))
    del blocks
    gc.collect()
    before = rss_mib()
    assert heap.trim()
    after = rss_mib()
    assert before - after > 100, f"RSS {before:.0f} -> {after:.0f} MiB"
    assert keeper[0] == ord("y")
