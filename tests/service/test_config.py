"""service.config: CPU sizing never oversubscribes the cores a process may use."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import Settings, available_cores


@pytest.mark.parametrize(
    ("cpu_max", "expected_cap"),
    [("max 100000\n", None), ("150000 100000\n", 2), ("50000 100000\n", 1), ("garbage", None)],
)
def test_cgroup_quota_caps_the_cores(
    tmp_path: Path, cpu_max: str, expected_cap: int | None
) -> None:
    limit = tmp_path / "cpu.max"
    limit.write_text(cpu_max)
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if expected_cap is None else min(affinity, expected_cap)
    assert available_cores(limit) == expected
    assert available_cores(tmp_path / "missing") == affinity


def test_defaults_use_every_core_once(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CONVSERVE_WORKERS", "CONVSERVE_TORCH_THREADS"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.workers == available_cores()
    assert settings.workers * settings.torch_threads <= max(available_cores(), 1)


def test_torch_threads_split_the_cores_between_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSERVE_WORKERS", "1")
    monkeypatch.delenv("CONVSERVE_TORCH_THREADS", raising=False)
    assert Settings().torch_threads == available_cores()


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSERVE_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValueError, match="max_batch_size"):
        Settings()
