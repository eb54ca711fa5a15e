"""The model limit: in-process forward throughput, no HTTP, with the server's thread budget.

As many processes as the server has workers, each with the server's torch thread count, run
`Engine.forward` (normalization, model, softmax: exactly what the batcher runs) on the same
batch size at the same time; their images per second add up. The best batch size wins.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)


@dataclass(frozen=True)
class ModelLimit:
    """Images per second at each batch size; `best` is the limit."""

    per_batch: dict[int, float]

    @property
    def best_batch(self) -> int:
        """The batch size with the highest throughput."""
        return max(self.per_batch, key=self.per_batch.__getitem__)

    @property
    def best(self) -> float:
        """Images per second at the best batch size."""
        return self.per_batch[self.best_batch]


def measure(
    checkpoint: Path,
    workers: int,
    torch_threads: int,
    seconds: float,
    env: dict[str, str],
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
) -> ModelLimit:
    """Runs `workers` spawned processes in lockstep over `batch_sizes`, `seconds` each."""
    context = mp.get_context("spawn")
    barrier = context.Barrier(workers)
    results: Any = context.Queue()
    args = (str(checkpoint), torch_threads, seconds, batch_sizes, env, barrier, results)
    processes = [context.Process(target=_worker, args=args) for _ in range(workers)]
    for process in processes:
        process.start()
    totals = dict.fromkeys(batch_sizes, 0.0)
    try:
        for _ in processes:
            outcome = results.get(timeout=120 + 3 * seconds * len(batch_sizes))
            if isinstance(outcome, str):
                raise RuntimeError(f"model limit worker failed: {outcome}")
            for size, rate in outcome.items():
                totals[size] += rate
    finally:
        for process in processes:
            process.join(10)
            if process.is_alive():
                process.kill()
    return ModelLimit(totals)


def _worker(
    checkpoint: str,
    torch_threads: int,
    seconds: float,
    batch_sizes: tuple[int, ...],
    env: dict[str, str],
    barrier: Barrier,
    results: Any,
) -> None:
    import os

    os.environ.update(env)
    try:
        import torch

        from service.config import Settings
        from service.engine import Engine

        torch.set_num_threads(torch_threads)
        settings = Settings(model_path=Path(checkpoint), torch_threads=torch_threads)
        engine = Engine(settings)
        if not engine.reload() or engine.model is None:
            raise RuntimeError(f"could not load {checkpoint}: {engine.load_error}")
        model = engine.model
        shape = model.checkpoint.config.input_shape
        generator = torch.Generator().manual_seed(0)
        rates: dict[int, float] = {}
        for size in batch_sizes:
            pixels = torch.randint(0, 256, (size, *shape), dtype=torch.uint8, generator=generator)
            for _ in range(3):
                engine.forward(model, pixels)
            barrier.wait(timeout=600)
            images, started = 0, time.perf_counter()
            deadline = started + seconds
            while True:
                engine.forward(model, pixels)
                images += size
                now = time.perf_counter()
                if now >= deadline:
                    break
            rates[size] = images / (now - started)
        results.put(rates)
    except Exception as exc:  # reported to the parent, which raises
        results.put(f"{type(exc).__name__}: {exc}")
        barrier.abort()
