"""Real Prometheus (Debian's package) scrapes the real server; we read the series back."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from bench.server import Server, free_port
from tests.images import png
from tests.service.test_metrics import DOCUMENTED_METRICS, predict_ok_count

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None and not os.environ.get("CI"),
        reason="Debian's prometheus is not installed (make test installs it)",
    ),
]


@pytest.fixture
def prometheus(server: Server, tmp_path: Path) -> Iterator[str]:
    """Prometheus on a free loopback port, scraping `server` every second."""
    assert PROMETHEUS is not None, "prometheus binary missing (apt-get install prometheus)"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
        "scrape_configs:\n  - job_name: convserve\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{server.port}']\n"
    )
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "prometheus.log", "wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: requests.get(url + "/-/ready", timeout=2).status_code == 200, 60)
        yield url
    finally:
        process.terminate()
        process.wait(20)


def wait_until(check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"condition not met in {timeout}s")


def query(url: str, expression: str) -> list[dict[str, Any]]:
    response = requests.get(url + "/api/v1/query", params={"query": expression}, timeout=5)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()["data"]["result"]
    return result


def test_prometheus_scrapes_request_counts(server: Server, prometheus: str) -> None:
    for _ in range(7):
        response = server.post("/v1/predict", data=png(), headers={"Content-Type": "image/png"})
        assert response.status_code == 200
    expected = predict_ok_count(server)
    selector = 'convserve_requests_total{endpoint="/v1/predict",method="POST",status="200"}'

    def arrived() -> bool:
        result = query(prometheus, selector)
        return len(result) == 1 and float(result[0]["value"][1]) == expected

    wait_until(arrived, 30)
    names = {
        series["metric"]["__name__"] for series in query(prometheus, '{__name__=~"convserve_.*"}')
    }
    for name, kind in DOCUMENTED_METRICS.items():
        assert (name + "_count" if kind == "histogram" else name) in names
    up = query(prometheus, 'up{job="convserve"}')
    assert float(up[0]["value"][1]) == 1.0
