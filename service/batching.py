"""Dynamic batching: concurrent requests in one worker share forward passes.

Leader/follower, with no batcher thread of its own: the request thread that waits for its
result while no forward pass is running becomes the leader. It gathers the oldest queued jobs
that share a key into a batch of at most `max_batch_size` images, waiting up to `max_delay_s`
for more only while other requests are still decoding (announced with `expect()`), runs the
batch, hands every job its rows and repeats until its own jobs are done; then it passes the
lead to the owner of the oldest queued job. A lone request thus runs its forward pass in its
own thread, with no hand-off between threads; under load there is one hand-off per batch, and
never more than one forward pass at a time per worker. A bounded queue sheds load with
`Overloaded` instead of growing without limit.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
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
    """Rows of the model output for one job, with the timings of the pass that made them."""

    outputs: torch.Tensor
    queue_s: float
    inference_s: float


@dataclass(eq=False)
class _Job(Generic[Key]):
    key: Key
    pixels: torch.Tensor
    ticket: Ticket[Key]
    size: int
    enqueued: float = field(default_factory=time.perf_counter)
    queued: bool = True
    result: BatchResult | None = None
    error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.result is not None or self.error is not None


RunBatch = Callable[[Key, torch.Tensor], torch.Tensor]


class Signal:
    """A one-waiter event on a bare lock: set() wakes the waiter, wait() clears it again.

    threading.Event wakes through a Condition, whose woken thread must take the Condition's
    lock back while the setter may still hold it: 12 us per wake-up with the GIL held here,
    against 3.6 us for a lock (a leader wakes every other owner of its batch).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # held: not set

    def set(self) -> None:
        """Wakes the waiter, or lets its next wait() return at once."""
        with contextlib.suppress(RuntimeError):  # already set
            self._lock.release()

    def clear(self) -> None:
        """Unsets it (a no-op when it is not set)."""
        self._lock.acquire(blocking=False)

    def wait(self, timeout_s: float) -> bool:
        """True (and cleared again) once set within `timeout_s` seconds, else False."""
        return self._lock.acquire(timeout=timeout_s)


class Ticket(Generic[Key]):
    """The jobs of one submit(); result() waits for them, leading forward passes when due."""

    def __init__(self, batcher: Batcher[Key], key: Key, chunks: Sequence[torch.Tensor]) -> None:
        self._batcher = batcher
        self.jobs = [_Job(key, chunk, self, chunk.shape[0]) for chunk in chunks]
        self.wake = Signal()

    @property
    def done(self) -> bool:
        """True once every job has its rows or its error."""
        return all(job.done for job in self.jobs)

    def result(self, timeout_s: float) -> list[BatchResult]:
        """Each job's result in order; re-raises the forward pass's exception.

        Raises TimeoutError after `timeout_s` seconds of waiting (jobs not started by then are
        withdrawn from the queue).
        """
        self._batcher.wait(self, timeout_s)
        results: list[BatchResult] = []
        for job in self.jobs:
            if job.error is not None:
                raise job.error
            assert job.result is not None
            results.append(job.result)
        return results


class Batcher(Generic[Key]):
    """Runs `run(key, pixels)` on batches of jobs that share the same key object (one model
    version).

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
        # Images per forward pass at most; the engine lowers it for a model batching cannot help.
        self.max_batch_size = max_batch_size
        self._max_delay = max_delay_s
        self._max_queue = max(max_queue_images, max_batch_size)
        self._on_batch = on_batch
        self._jobs: deque[_Job[Key]] = deque()
        self._queued_images = 0
        self._expected = 0
        self._gathered = 0  # images in the batch a leader is forming, while it waits for more
        self._lock = threading.Lock()
        self._arrivals = threading.Condition(self._lock)
        self._leading = False

    @contextmanager
    def expect(self) -> Iterator[None]:
        """Marks a request that will submit soon, so a forming batch waits for it."""
        with self._lock:
            self._expected += 1
        try:
            yield
        finally:
            with self._lock:
                self._expected -= 1
                self._wake_gathering_leader()

    def run(
        self, key: Key, prepare: Callable[[], torch.Tensor], timeout_s: float
    ) -> list[BatchResult]:
        """One request: `prepare()` makes its pixels, which run under `key`; returns their rows.

        Raises Overloaded when they do not fit in the queue, TimeoutError after `timeout_s`
        seconds of waiting, or the forward pass's own exception.
        """
        with self.expect():
            # While this request decodes, a batch that is forming waits for it (max_delay_s).
            pixels = prepare()
            ticket = self.submit(key, pixels)
        # The wait happens after expect() ends: a leader still counting this request would
        # hold its batch open for images that are already queued.
        return ticket.result(timeout_s)

    def submit(self, key: Key, pixels: torch.Tensor) -> Ticket[Key]:
        """Queues (N, C, H, W) pixels in chunks of at most max_batch_size; result() runs them.

        Raises Overloaded, queueing nothing, when they do not fit in the queue.
        """
        count = pixels.shape[0]
        chunks = (
            torch.split(pixels, self.max_batch_size) if count > self.max_batch_size else (pixels,)
        )
        ticket = Ticket(self, key, chunks)
        with self._lock:
            if self._queued_images + count > self._max_queue:
                raise Overloaded(f"{self._queued_images} images are already queued")
            self._jobs.extend(ticket.jobs)
            self._queued_images += count
            self._wake_gathering_leader()
        return ticket

    def _wake_gathering_leader(self) -> None:
        """Wakes a leader waiting for more images once its wait is over: nobody it waits for is
        still decoding, or the batch it forms and the queue fill a pass. (Called with the lock
        held.) Waking it at every arrival would cost a thread switch per request for nothing."""
        if self._expected == 0 or self._gathered + self._queued_images >= self.max_batch_size:
            self._arrivals.notify()

    def wait(self, ticket: Ticket[Key], timeout_s: float) -> None:
        """Returns once every job of `ticket` is done, leading forward passes when no one does.

        Raises TimeoutError after `timeout_s` seconds, withdrawing the jobs not yet started.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                ticket.wake.clear()
                if ticket.done:
                    return
                lead = not self._leading
                self._leading = True
            if lead:
                self._lead(ticket)
                continue
            remaining = deadline - time.monotonic()
            if (remaining <= 0 or not ticket.wake.wait(remaining)) and self._withdraw(ticket):
                raise TimeoutError(f"no forward pass ran within {timeout_s:g}s")

    def _lead(self, ticket: Ticket[Key]) -> None:
        """Runs batches from the head of the queue until `ticket` is done, then passes the lead."""
        try:
            while True:
                with self._lock:
                    if ticket.done:
                        return
                    batch = self._gather()
                self._execute(batch)
        finally:
            with self._lock:
                self._leading = False
                if self._jobs:
                    self._jobs[0].ticket.wake.set()

    def _withdraw(self, ticket: Ticket[Key]) -> bool:
        """Takes the ticket's not yet started jobs off the queue; False if all are done now."""
        with self._lock:
            if ticket.done:
                return False
            for job in ticket.jobs:
                if job.queued:
                    job.queued = False
                    self._jobs.remove(job)
                    self._queued_images -= job.size
            if not self._leading and self._jobs:
                # The lead may have been passed to this ticket as it gave up: pass it on.
                self._jobs[0].ticket.wake.set()
            return True

    def _gather(self) -> list[_Job[Key]]:
        """Pops the next batch (called with the lock held, the queue not empty)."""
        first = self._take()
        batch, size = [first], first.size
        self._gathered = size
        deadline = time.perf_counter() + self._max_delay
        while size < self.max_batch_size:
            if self._jobs:
                following = self._jobs[0]
                # Identity: a key is one model version, never compared by value.
                if following.key is not first.key or size + following.size > self.max_batch_size:
                    break
                batch.append(self._take())
                size += following.size
                self._gathered = size
                continue
            remaining = deadline - time.perf_counter()
            if self._expected == 0 or remaining <= 0:
                break
            self._arrivals.wait(remaining)
        self._gathered = 0
        return batch

    def _take(self) -> _Job[Key]:
        """Pops the head of the queue into a batch (called with the lock held). From here on
        it is the leader's, also while the lock is released to wait for more: an owner that
        times out meanwhile finds it no longer queued."""
        job = self._jobs.popleft()
        job.queued = False
        self._queued_images -= job.size
        return job

    def _execute(self, batch: list[_Job[Key]]) -> None:
        """Runs one batch and gives every job its rows (or the error); wakes their owners."""
        started = time.perf_counter()
        try:
            pixels = torch.cat([job.pixels for job in batch]) if len(batch) > 1 else batch[0].pixels
            outputs = self._run(batch[0].key, pixels)
        except Exception as exc:
            log.exception("forward pass failed for a batch of %d jobs", len(batch))
            for job in batch:
                job.error = exc
        else:
            elapsed = time.perf_counter() - started
            if self._on_batch is not None:
                self._on_batch(pixels.shape[0], elapsed)
            row = 0
            for job in batch:
                rows = outputs[row : row + job.size]
                job.result = BatchResult(rows, started - job.enqueued, elapsed)
                row += job.size
        for ticket in {job.ticket for job in batch}:
            if ticket.done:
                ticket.wake.set()
