"""Fixtures of the reliability suite: the shared servers of tests/service, and fresh ones.

Tests that kill, stop, reload or load a server start their own with `start_server`, so the
shared `server` and `strict_server` stay pristine for everyone else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.server import Server
from tests.service.conftest import server, strict_server

__all__ = ["server", "strict_server"]

StartServer = Callable[..., Server]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """start_server(model_path, **env) -> a running gunicorn, stopped when the test ends."""
    started: list[Server] = []

    def start(model_path: Path, wait_ready: bool = True, **env: str) -> Server:
        running = Server(tmp_path, {"CONVSERVE_MODEL_PATH": str(model_path), **env})
        started.append(running)
        return running.start(wait_ready=wait_ready)

    yield start
    for running in started:
        running.stop()
