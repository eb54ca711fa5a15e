"""Whether batching pays for one model version, decided from its own forward passes.

Batching trades a short wait for stragglers (up to max_batch_delay_ms, while other requests
still decode) for fewer, larger forward passes. It pays when a pass over many images costs
clearly less per image than a pass over one: a small CNN on small images (conv layers run far
below the CPU's speed on one image) gains the most, a model whose per-image cost is already
linear gains nothing and would only wait. The engine times passes of several sizes at load,
after warm-up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

# Batching stays on when some pass size saves at least this share of the per-image cost (a
# share the timing noise of a busy machine does not reach), and batches are capped at the
# largest size within NEAR_BEST of the lowest per-image cost.
MIN_SAVING = 0.1
NEAR_BEST = 0.1
_ROUNDS = 3


@dataclass(frozen=True)
class BatchingPlan:
    """The batch limit chosen for a model version and the timings that chose it."""

    max_batch_size: int
    ms_per_image: dict[int, float]  # batch size -> ms per image in one pass of that size
    reason: str


def plan_batching(
    forward: Callable[[int], object], limit: int, limit_was_set: bool
) -> BatchingPlan:
    """Times `forward(size)` (a warmed-up pass over `size` images) at 1, the powers of two
    below `limit` and `limit`, and chooses the batch limit: 1 (no batching) when no size saves
    MIN_SAVING per image against one image alone; else the largest size whose per-image cost
    is within NEAR_BEST of the lowest; `limit` itself when it was set (CONVSERVE_MAX_BATCH_SIZE).

    Larger is not always cheaper: past a size whose activations fit the CPU's caches, a pass
    costs more per image, so batches are capped there.
    """
    sizes = sorted({1, limit, *(2**k for k in range(1, limit.bit_length()) if 2**k < limit)})
    per_image = {size: ms / size for size, ms in _fastest_ms(forward, sizes).items()}
    lowest = min(per_image.values())
    saving = 1.0 - lowest / per_image[1] if per_image[1] > 0 else 0.0
    cap = max(size for size in sizes if per_image[size] <= lowest * (1.0 + NEAR_BEST))
    if limit == 1:
        chosen, why = 1, "batching off (max_batch_size 1)"
    elif limit_was_set:
        chosen, why = limit, f"max_batch_size {limit} as configured"
    elif saving >= MIN_SAVING and cap > 1:
        chosen, why = cap, f"batching pays: up to {cap} images a pass"
    else:
        chosen, why = 1, "batching off: requests run alone and never wait for others"
    timings = ", ".join(f"{size}: {ms:.3f}" for size, ms in per_image.items())
    measured = f"ms per image by pass size {timings} (at best {saving:.0%} less than alone)"
    return BatchingPlan(chosen, per_image, f"{why}; {measured}")


def _fastest_ms(forward: Callable[[int], object], sizes: list[int]) -> dict[int, float]:
    """The fastest pass over each size, in ms, over a few rounds that each time every size
    once: a machine that speeds up or slows down meanwhile touches every size alike."""
    best = dict.fromkeys(sizes, float("inf"))
    for _ in range(_ROUNDS):
        for size in sizes:
            started = time.perf_counter()
            forward(size)
            best[size] = min(best[size], (time.perf_counter() - started) * 1000.0)
    return best
