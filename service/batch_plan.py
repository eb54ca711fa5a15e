"""Whether batching pays for one model version, decided from its own forward passes.

Batching trades a short wait for stragglers (up to max_batch_delay_ms, while other requests
still decode) for fewer, larger forward passes. It pays when a pass over many images costs
clearly less per image than a pass over one: a small CNN on small images (conv layers run far
below the CPU's speed on one image) gains the most, a model whose per-image cost is already
linear gains nothing and would only wait. The engine times both at load, after warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# Batching stays on when a full batch saves at least this share of the per-image cost.
MIN_SAVING = 0.2
_REPEATS = 3


@dataclass(frozen=True)
class BatchingPlan:
    """The batch limit chosen for a model version and the timings that chose it."""

    max_batch_size: int
    alone_ms: float  # one forward pass over one image
    batched_ms_per_image: float  # per image, in one pass over `measured_batch` images
    measured_batch: int
    reason: str


def plan_batching(
    forward: Callable[[int], object], limit: int, limit_was_set: bool
) -> BatchingPlan:
    """Times `forward(size)` (a warmed-up pass over `size` images) at 1 and at `limit` images
    and chooses the batch limit: `limit` when batching saves at least MIN_SAVING per image or
    when the limit was set explicitly (CONVSERVE_MAX_BATCH_SIZE), else 1 (no batching)."""
    alone = _best_ms(forward, 1)
    batched = _best_ms(forward, limit) / limit if limit > 1 else alone
    saving = 1.0 - batched / alone if alone > 0 else 0.0
    if limit == 1:
        chosen, why = 1, "batching off (max_batch_size 1)"
    elif limit_was_set:
        chosen, why = limit, f"max_batch_size {limit} as configured"
    elif saving >= MIN_SAVING:
        chosen, why = limit, f"batching pays (up to {limit} images a pass)"
    else:
        chosen, why = 1, "batching off: requests run alone and never wait for others"
    measured = (
        f"one image alone takes {alone:.3f} ms, {batched:.3f} ms each in a pass of {limit} "
        f"({saving:.0%} saved per image)"
    )
    return BatchingPlan(chosen, alone, batched, limit, f"{why}; {measured}")


def _best_ms(forward: Callable[[int], object], size: int) -> float:
    """The fastest of a few passes over `size` images, in ms (the others met interruptions)."""
    best = float("inf")
    for _ in range(_REPEATS):
        started = time.perf_counter()
        forward(size)
        best = min(best, time.perf_counter() - started)
    return best * 1000.0
