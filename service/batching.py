"""Dynamic batching: concurrent requests in one worker share forward passes.

Request threads submit uint8 image tensors; one batcher thread gathers them into a batch of at
most `max_batch_size` images and runs it. It waits up to `max_delay_s` for more images only while
other requests are still decoding (announced with `expect()`), so a lone request never waits.
A bounded queue sheds load with `Overloaded` instead of growing without limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

log = logging.getLogger("convserve.batching")

Key = TypeVar("Key")


class Overloaded(Exception):
    """The queue holds as many images as it may; the caller should retry later."""


@dataclass(frozen=True)
class BatchResult:
    """Rows of the model output for one job, with the timings of the pass(es) that made them."""

    outputs: torch.Tensor
    queue_s: float
    inference_s: float


@dataclass
class _Job(Generic[Key]):
    key: Key
    pixels: torch.Tensor
    future: Future[BatchResult] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


RunBatch = Callable[[Key, torch.Tensor], torch.Tensor]


class Batcher(Generic[Key]):
    """Runs `run(key, pixels)` on batches of jobs that share the same key (the model).

    `run` gets a (N, C, H, W) tensor and returns (N, ...) outputs; each job gets its own rows.
    """

    def __init__(
        self,
        run: RunBatch[Key],
        max_batch_size: int,
        max_delay_s: float,
        max_queue_images: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run = run
        self._max_batch = max_batch_size
        self._max_delay = max_delay_s
        self._max_queue = max(max_queue_images, max_batch_size)
        self._on_batch = on_batch
        self._jobs: deque[_Job[Key]] = deque()
        self._queued_images = 0
        self._expected = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Starts the batcher thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Lets queued jobs finish, then ends the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    @contextmanager
    def expect(self) -> Iterator[None]:
        """Marks a request that will submit soon, so a forming batch waits for it."""
        with self._cond:
            self._expected += 1
        try:
            yield
        finally:
            with self._cond:
                self._expected -= 1
                self._cond.notify_all()

    def submit(self, key: Key, pixels: torch.Tensor) -> list[Future[BatchResult]]:
        """Queues (N, C, H, W) pixels in chunks of at most max_batch_size.

        Raises Overloaded, queueing nothing, when they do not fit in the queue.
        """
        chunks = list(torch.split(pixels, self._max_batch))
        jobs = [_Job(key, chunk) for chunk in chunks]
        with self._cond:
            if self._stopping:
                raise Overloaded("the worker is shutting down")
            if self._queued_images + len(pixels) > self._max_queue:
                raise Overloaded(f"{self._queued_images} images are already queued")
            self._jobs.extend(jobs)
            self._queued_images += len(pixels)
            self._cond.notify_all()
        return [job.future for job in jobs]

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._execute(batch)

    def _next_batch(self) -> list[_Job[Key]] | None:
        with self._cond:
            while not self._jobs:
                if self._stopping:
                    return None
                self._cond.wait()
            batch = [self._jobs.popleft()]
            size = len(batch[0].pixels)
            deadline = time.perf_counter() + self._max_delay
            while size < self._max_batch:
                if self._jobs:
                    following = self._jobs[0]
                    if following.key != batch[0].key or size + len(following.pixels) > (
                        self._max_batch
                    ):
                        break
                    batch.append(self._jobs.popleft())
                    size += len(following.pixels)
                    continue
                remaining = deadline - time.perf_counter()
                if self._expected == 0 or remaining <= 0 or self._stopping:
                    break
                self._cond.wait(remaining)
            self._queued_images -= size
            return batch

    def _execute(self, batch: list[_Job[Key]]) -> None:
        started = time.perf_counter()
        try:
            pixels = torch.cat([job.pixels for job in batch]) if len(batch) > 1 else batch[0].pixels
            outputs = self._run(batch[0].key, pixels)
        except Exception as exc:
            log.exception("forward pass failed for a batch of %d jobs", len(batch))
            for job in batch:
                job.future.set_exception(exc)
            return
        elapsed = time.perf_counter() - started
        if self._on_batch is not None:
            self._on_batch(len(pixels), elapsed)
        row = 0
        for job in batch:
            count = len(job.pixels)
            result = BatchResult(outputs[row : row + count], started - job.enqueued, elapsed)
            job.future.set_result(result)
            row += count
