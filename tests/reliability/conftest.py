"""Fixtures of the reliability suite: the shared servers of tests/service, and fresh ones.

Tests that kill, stop, reload or load a server start their own with `start_server`, so the
shared `server` and `strict_server` stay pristine for everyone else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bench.server import Server
from tests.reliability.checks import sample, scrape
from tests.service.conftest import server, strict_server

__all__ = ["server", "strict_server"]

StartServer = Callable[..., Server]


def wait_all_workers_ready(
    running: Server, timeout: float = 60.0, expected_loads: int | None = None
) -> None:
    """Waits until every worker has loaded a model (Server.start waits for the first one).

    Workers count their loads in convserve_model_reloads_total{outcome="loaded"}; a killed
    worker's count stays, so after a replacement pass `expected_loads` explicitly.
    """
    expected = expected_loads or int(running.env["CONVSERVE_WORKERS"])
    key = running.env.get("CONVSERVE_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else None
    deadline = time.monotonic() + timeout
    while (
        sample(scrape(running.url, headers), "convserve_model_reloads_total", outcome="loaded")
        < expected
    ):
        assert time.monotonic() < deadline, (
            f"workers did not load their models:\n{running.log_tail()}"
        )
        time.sleep(0.1)


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """start_server(model_path, **env) -> a running gunicorn, stopped when the test ends."""
    started: list[Server] = []

    def start(model_path: Path, wait_ready: bool = True, **env: str) -> Server:
        running = Server(tmp_path, {"CONVSERVE_MODEL_PATH": str(model_path), **env})
        started.append(running)
        running.start(wait_ready=wait_ready)
        if wait_ready:
            wait_all_workers_ready(running)
        return running

    yield start
    for running in started:
        running.stop()
