"""Servers for the integration tests: the real gunicorn with a tiny trained checkpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.server import Server

API_KEY = "test-key-0123456789"


@pytest.fixture(scope="session")
def server(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """gunicorn with 2 workers serving the tiny checkpoint with default limits."""
    workdir = tmp_path_factory.mktemp("server")
    running = Server(workdir, {"CONVSERVE_MODEL_PATH": str(tiny_checkpoint)}).start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def strict_server(
    tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One worker with an API key and small limits, so every limit is cheap to hit."""
    workdir = tmp_path_factory.mktemp("strict")
    env = {
        "CONVSERVE_MODEL_PATH": str(tiny_checkpoint),
        "CONVSERVE_WORKERS": "1",
        "CONVSERVE_API_KEY": API_KEY,
        "CONVSERVE_MAX_UPLOAD_BYTES": "200000",
        "CONVSERVE_MAX_IMAGE_PIXELS": "250000",
        "CONVSERVE_MAX_IMAGES_PER_REQUEST": "4",
        "CONVSERVE_MAX_BATCH_SIZE": "1",
        "CONVSERVE_MAX_QUEUE_IMAGES": "1",
    }
    running = Server(workdir, env).start()
    yield running
    running.stop()
