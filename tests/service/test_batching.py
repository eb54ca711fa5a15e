"""service.batching: concurrent jobs share forward passes, each gets its own rows back."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch

from service.batching import Batcher, BatchResult, Overloaded, Signal


class RecordingModel:
    """Returns each image's first pixel; records batch sizes, calling threads and overlap."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[int] = []
        self.threads: list[int] = []
        self.delay_s = delay_s
        self.running = 0
        self.most_running = 0

    def __call__(self, key: str, pixels: torch.Tensor) -> torch.Tensor:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.batches.append(len(pixels))
        self.threads.append(threading.get_ident())
        time.sleep(self.delay_s)
        self.running -= 1
        return pixels.flatten(1)[:, :1].float() + (1000 if key == "new" else 0)


def images(first: int, count: int) -> torch.Tensor:
    return torch.arange(first, first + count, dtype=torch.uint8).view(count, 1, 1, 1)


def make(model: RecordingModel, **kwargs: float) -> Batcher[str]:
    options = {"max_batch_size": 8, "max_delay_s": 0.05, "max_queue_images": 64, **kwargs}
    return Batcher(
        model,
        int(options["max_batch_size"]),
        options["max_delay_s"],
        int(options["max_queue_images"]),
    )


def run_request(batcher: Batcher[str], first: int, count: int, key: str = "old") -> list[float]:
    with batcher.expect():
        ticket = batcher.submit(key, images(first, count))
    return rows(ticket.result(5))


def rows(results: list[BatchResult]) -> list[float]:
    return torch.cat([r.outputs for r in results]).flatten().tolist()


def test_each_request_gets_its_own_rows_under_concurrency() -> None:
    model = RecordingModel(delay_s=0.002)
    batcher = make(model)
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: run_request(batcher, i * 3, 3), range(40)))
    for i, got in enumerate(results):
        assert got == [float(i * 3), float(i * 3 + 1), float(i * 3 + 2)]
    assert sum(model.batches) == 120
    assert max(model.batches) > 3, "concurrent requests were never batched"
    assert max(model.batches) <= 8
    assert model.most_running == 1, "two forward passes overlapped in one worker"


def test_a_lone_request_runs_in_its_own_thread_without_waiting_for_the_delay() -> None:
    model = RecordingModel()
    batcher = make(model, max_delay_s=1.0)
    started = time.perf_counter()
    assert run_request(batcher, 5, 1) == [5.0]
    assert time.perf_counter() - started < 0.5
    assert model.threads == [threading.get_ident()]


def test_a_forming_batch_waits_for_an_announced_request() -> None:
    model = RecordingModel()
    batcher = make(model, max_delay_s=2.0)
    announced = threading.Event()
    release = threading.Event()

    def slow_decoder() -> list[float]:
        with batcher.expect():
            announced.set()
            release.wait(5)
            ticket = batcher.submit("old", images(50, 1))
        return rows(ticket.result(5))

    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(slow_decoder)
        announced.wait(5)
        first = pool.submit(run_request, batcher, 10, 1)
        time.sleep(0.05)
        release.set()
        assert first.result(5) == [10.0]
        assert slow.result(5) == [50.0]
    assert model.batches == [2]


def test_large_requests_are_split_into_max_batch_chunks() -> None:
    model = RecordingModel()
    batcher = make(model, max_batch_size=4)
    assert run_request(batcher, 0, 10) == [float(i) for i in range(10)]
    assert model.batches == [4, 4, 2]


def test_jobs_for_different_models_never_share_a_batch() -> None:
    model = RecordingModel(delay_s=0.01)
    batcher = make(model)
    with ThreadPoolExecutor(8) as pool:
        old = [pool.submit(run_request, batcher, i, 1, "old") for i in range(8)]
        new = [pool.submit(run_request, batcher, i, 1, "new") for i in range(8)]
        assert [f.result()[0] for f in old] == [float(i) for i in range(8)]
        assert [f.result()[0] for f in new] == [1000.0 + i for i in range(8)]


@dataclass(frozen=True)
class Version:
    """A key like a served model version: a frozen dataclass that holds tensors."""

    name: str
    weights: torch.Tensor


def test_keys_are_told_apart_by_identity_even_when_they_hold_tensors() -> None:
    # After a reload, jobs for the old and the new version of a model wait in one queue; a
    # dataclass's == would compare their tensors (and raise) instead of telling them apart.
    seen: list[tuple[str, int]] = []

    def run(key: Version, pixels: torch.Tensor) -> torch.Tensor:
        seen.append((key.name, len(pixels)))
        return pixels.flatten(1).float() + key.weights[:1]

    batcher: Batcher[Version] = Batcher(run, 8, 0.0, 64)
    old, new = Version("rgb", torch.zeros(3)), Version("rgb", torch.ones(3))
    first, second = batcher.submit(old, images(0, 1)), batcher.submit(new, images(5, 1))
    assert first.result(5)[0].outputs.tolist() == [[0.0]]
    assert second.result(5)[0].outputs.tolist() == [[6.0]]
    assert seen == [("rgb", 1), ("rgb", 1)]


class Gate:
    """A model that blocks inside its forward pass until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, key: str, pixels: torch.Tensor) -> torch.Tensor:
        self.entered.set()
        self.release.wait(5)
        return pixels.flatten(1).float()


@contextmanager
def leader_blocked_in_forward() -> Iterator[Batcher[str]]:
    """A batcher (batches and queue of 4) whose leader holds 4 images in a gated forward pass."""
    gate = Gate()
    batcher: Batcher[str] = Batcher(gate, 4, 0.0, 4)
    with ThreadPoolExecutor(1) as pool:
        leader = pool.submit(lambda: batcher.submit("old", images(0, 4)).result(5))
        try:
            assert gate.entered.wait(5)
            yield batcher
        finally:
            gate.release.set()
        assert len(leader.result(5)[0].outputs) == 4


def test_full_queue_raises_overloaded_and_queues_nothing() -> None:
    with leader_blocked_in_forward() as batcher:
        queued = batcher.submit("old", images(0, 4))
        with pytest.raises(Overloaded):
            batcher.submit("old", images(0, 1))
    assert len(queued.result(5)[0].outputs) == 4
    assert len(batcher.submit("old", images(0, 1)).result(5)[0].outputs) == 1


def test_a_timed_out_request_leaves_the_queue() -> None:
    with leader_blocked_in_forward() as batcher:
        waiting = batcher.submit("old", images(0, 4))
        with pytest.raises(TimeoutError):
            waiting.result(0.05)
        later = batcher.submit("old", images(0, 4))  # fits: the timed-out images left
    assert len(later.result(5)[0].outputs) == 4


def test_a_failing_forward_pass_fails_only_its_jobs() -> None:
    calls = {"n": 0}

    def flaky(key: str, pixels: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return pixels.flatten(1).float()

    batcher: Batcher[str] = Batcher(flaky, 4, 0.0, 16)
    with pytest.raises(RuntimeError):
        batcher.submit("old", images(0, 1)).result(5)
    assert batcher.submit("old", images(7, 1)).result(5)[0].outputs.item() == 7.0


def test_a_lowered_limit_applies_to_the_next_requests() -> None:
    """The engine lowers max_batch_size to 1 for a model batching cannot help."""
    model = RecordingModel(delay_s=0.02)
    batcher = make(model)
    batcher.max_batch_size = 1
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda first: run_request(batcher, first, 3), (0, 10, 20, 30)))
    assert answers == [[first + i for i in range(3)] for first in (0, 10, 20, 30)]
    assert model.batches == [1] * 12


def test_signal_wakes_one_wait_and_is_consumed_by_it() -> None:
    signal = Signal()
    assert not signal.wait(0.01)
    signal.set()
    signal.set()  # setting twice is setting once
    assert signal.wait(0.01)
    assert not signal.wait(0.01)
    signal.set()
    signal.clear()
    assert not signal.wait(0.01)
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(signal.wait(5)))
    waiter.start()
    time.sleep(0.05)
    signal.set()
    waiter.join(5)
    assert woken == [True]


def test_a_full_batch_runs_without_waiting_for_requests_still_decoding() -> None:
    """The leader waits for decoding requests only until a whole batch is queued."""
    model = RecordingModel()
    batcher = make(model, max_batch_size=4, max_delay_s=5.0)
    with batcher.expect():  # a request that keeps decoding for the whole test
        started = time.perf_counter()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda first: run_request(batcher, first, 1), range(4)))
        assert time.perf_counter() - started < 2.5
    assert sorted(answers) == [[0.0], [1.0], [2.0], [3.0]]
    assert sum(model.batches) == 4


def test_an_owner_timing_out_while_its_job_waits_in_a_forming_batch_gets_a_timeout() -> None:
    """Its job was already taken off the queue by the leader, which still waits for more."""
    model = RecordingModel()
    batcher = make(model, max_batch_size=8, max_delay_s=0.5)
    with batcher.expect():  # keeps the leader gathering for max_delay_s
        leader_ticket = batcher.submit("old", images(0, 1))
        follower_ticket = batcher.submit("old", images(1, 1))
        with ThreadPoolExecutor(1) as pool:
            leader = pool.submit(leader_ticket.result, 5)
            time.sleep(0.1)  # the leader took both jobs and waits for the decoding request
            with pytest.raises(TimeoutError):
                follower_ticket.result(0.05)
            assert rows(leader.result(5)) == [0.0]


def test_an_owner_giving_up_passes_the_lead_on() -> None:
    """Handed the lead as it timed out, an owner that withdraws wakes the next one."""
    batcher = make(RecordingModel())
    first = batcher.submit("old", images(0, 1))
    second = batcher.submit("old", images(1, 1))
    first.wake.set()  # the lead was handed to the first owner...
    assert batcher._withdraw(first)  # ...which gave up at that moment
    assert second.wake.wait(0.01)
    assert rows(second.result(5)) == [1.0]
