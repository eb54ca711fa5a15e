"""The decode cost: CPU time to turn one request body into model input, no HTTP, one thread.

Together with the HTTP and model limits it gives the ceiling of a server that does nothing
but those three things: each request costs an echo, a decode and a forward pass.
"""

from __future__ import annotations

import time

from bench.fixtures import Scenario
from models.checkpoint import load_checkpoint
from service.config import Settings
from service.imaging import decode_image


def measure(scenario: Scenario, seconds: float, rounds: int = 5) -> float:
    """Milliseconds of thread CPU time per decode_image call, best of `rounds`."""
    preprocessing = load_checkpoint(scenario.checkpoint).preprocessing
    settings = Settings()
    data = scenario.body.read_bytes()

    def decode() -> None:
        decode_image(data, preprocessing, settings.max_image_pixels, settings.decode_timeout_ms)

    decode()
    best = float("inf")
    for _ in range(rounds):
        calls, started = 0, time.thread_time()
        deadline = time.perf_counter() + seconds / rounds
        while time.perf_counter() < deadline:
            decode()
            calls += 1
        best = min(best, (time.thread_time() - started) / calls)
    return best * 1000


def ceiling(http_limit: float, model_limit: float, decode_ms: float, cores: int) -> float:
    """Requests/s of a server whose only costs are an echo, a decode and a forward pass.

    The two limits are whole-machine rates (their CPU cost per item is 1/rate of the machine);
    the decode cost is one thread's CPU time, spread over `cores`.
    """
    return 1.0 / (1.0 / http_limit + 1.0 / model_limit + decode_ms / 1000.0 / cores)
