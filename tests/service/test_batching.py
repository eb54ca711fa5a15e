"""service.batching: concurrent jobs share forward passes, each gets its own rows back."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from service.batching import Batcher, Overloaded


class RecordingModel:
    """Returns each image's first pixel, and records the batch sizes it was called with."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s

    def __call__(self, key: str, pixels: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(pixels))
        time.sleep(self.delay_s)
        return pixels.flatten(1)[:, :1].float() + (1000 if key == "new" else 0)


def images(first: int, count: int) -> torch.Tensor:
    return torch.arange(first, first + count, dtype=torch.uint8).view(count, 1, 1, 1)


def make(model: RecordingModel, **kwargs: float) -> Batcher[str]:
    options = {"max_batch_size": 8, "max_delay_s": 0.05, "max_queue_images": 64, **kwargs}
    batcher: Batcher[str] = Batcher(
        model,
        int(options["max_batch_size"]),
        options["max_delay_s"],
        int(options["max_queue_images"]),
    )
    batcher.start()
    return batcher


def run_request(batcher: Batcher[str], first: int, count: int, key: str = "old") -> list[float]:
    with batcher.expect():
        futures = batcher.submit(key, images(first, count))
    return torch.cat([f.result(5).outputs for f in futures]).flatten().tolist()


def test_each_request_gets_its_own_rows_under_concurrency() -> None:
    model = RecordingModel(delay_s=0.002)
    batcher = make(model)
    try:
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: run_request(batcher, i * 3, 3), range(40)))
    finally:
        batcher.stop()
    for i, rows in enumerate(results):
        assert rows == [float(i * 3), float(i * 3 + 1), float(i * 3 + 2)]
    assert sum(model.batches) == 120
    assert max(model.batches) > 3, "concurrent requests were never batched"
    assert max(model.batches) <= 8


def test_a_lone_request_does_not_wait_for_the_delay() -> None:
    batcher = make(RecordingModel(), max_delay_s=1.0)
    try:
        started = time.perf_counter()
        assert run_request(batcher, 5, 1) == [5.0]
        assert time.perf_counter() - started < 0.5
    finally:
        batcher.stop()


def test_a_forming_batch_waits_for_an_announced_request() -> None:
    model = RecordingModel()
    batcher = make(model, max_delay_s=2.0)
    announced = threading.Event()
    release = threading.Event()

    def slow_decoder() -> list[float]:
        with batcher.expect():
            announced.set()
            release.wait(5)
            futures = batcher.submit("old", images(50, 1))
        return futures[0].result(5).outputs.flatten().tolist()

    try:
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(slow_decoder)
            announced.wait(5)
            with batcher.expect():
                first = batcher.submit("old", images(10, 1))
            time.sleep(0.05)
            release.set()
            assert first[0].result(5).outputs.flatten().tolist() == [10.0]
            assert slow.result(5) == [50.0]
    finally:
        batcher.stop()
    assert model.batches == [2]


def test_large_requests_are_split_into_max_batch_chunks() -> None:
    model = RecordingModel()
    batcher = make(model, max_batch_size=4)
    try:
        assert run_request(batcher, 0, 10) == [float(i) for i in range(10)]
    finally:
        batcher.stop()
    assert model.batches == [4, 4, 2]


def test_jobs_for_different_models_never_share_a_batch() -> None:
    model = RecordingModel(delay_s=0.01)
    batcher = make(model)
    try:
        with ThreadPoolExecutor(8) as pool:
            old = [pool.submit(run_request, batcher, i, 1, "old") for i in range(8)]
            new = [pool.submit(run_request, batcher, i, 1, "new") for i in range(8)]
            assert [f.result()[0] for f in old] == [float(i) for i in range(8)]
            assert [f.result()[0] for f in new] == [1000.0 + i for i in range(8)]
    finally:
        batcher.stop()


def test_full_queue_raises_overloaded_and_queues_nothing() -> None:
    gate = threading.Event()

    def blocked(key: str, pixels: torch.Tensor) -> torch.Tensor:
        gate.wait(5)
        return pixels.flatten(1).float()

    batcher: Batcher[str] = Batcher(blocked, 4, 0.0, 4)
    batcher.start()
    try:
        first = batcher.submit("old", images(0, 4))  # taken by the (blocked) batcher thread
        time.sleep(0.05)
        queued = batcher.submit("old", images(0, 4))
        with pytest.raises(Overloaded):
            batcher.submit("old", images(0, 1))
        gate.set()
        assert len(first[0].result(5).outputs) == 4 and len(queued[0].result(5).outputs) == 4
        assert len(batcher.submit("old", images(0, 1))[0].result(5).outputs) == 1
    finally:
        gate.set()
        batcher.stop()


def test_a_failing_forward_pass_fails_only_its_jobs() -> None:
    calls = {"n": 0}

    def flaky(key: str, pixels: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return pixels.flatten(1).float()

    batcher: Batcher[str] = Batcher(flaky, 4, 0.0, 16)
    batcher.start()
    try:
        with pytest.raises(RuntimeError):
            batcher.submit("old", images(0, 1))[0].result(5)
        assert batcher.submit("old", images(7, 1))[0].result(5).outputs.item() == 7.0
    finally:
        batcher.stop()
