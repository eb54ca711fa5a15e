"""Overload and memory with the real gunicorn.

Capacity is measured first (closed loop, as many connections as the server has threads), then
requests arrive open-loop at twice that rate for a few seconds. Every request must be answered,
200 or 503 with Retry-After; the 200s keep a bounded p99 and no worker is killed for a timeout.
Then 20,000 mixed requests must leave every worker's resident memory within 10%.
"""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from tests.images import encode, gradient, png
from tests.reliability.checks import SERVER_FAULTS
from tests.reliability.conftest import StartServer
from tests.reliability.load import Call, percentile, run_load

PREDICT = Call("POST", "/v1/predict", png(), {"Content-Type": "image/png"})
OVERLOAD_S = 4.0


@pytest.mark.slow
def test_twice_capacity_is_answered(tiny_checkpoint: Path, start_server: StartServer) -> None:
    running = start_server(tiny_checkpoint)  # 2 workers x 8 threads
    pids = running.worker_pids()
    capacity = run_load(running.url, [PREDICT], connections=16, duration_s=3.0)
    assert not capacity.failures()
    rate = 2 * capacity.throughput()
    result = run_load(running.url, [PREDICT], connections=64, duration_s=OVERLOAD_S, rate=rate)
    ok = [o.latency_s for o in result.ok()]
    p50, p99 = percentile(ok, 50), percentile(ok, 99)
    print(
        f"overload: capacity {capacity.throughput():.0f} req/s; offered {rate:.0f} req/s for "
        f"{OVERLOAD_S:.0f} s: {len(result.outcomes)} requests, {result.statuses()}, "
        f"{len(result.failures())} failed; 200s p50 {p50 * 1000:.0f} ms p99 {p99 * 1000:.0f} ms"
    )
    assert len(result.outcomes) >= rate * OVERLOAD_S * 0.9
    assert not result.failures(), result.failures()[:5]
    assert ok
    # Nothing is shed (see docs/reliability.md): at 2x the backlog grows for OVERLOAD_S seconds
    # and then drains, at a capacity the client itself shares the two cores with, so waits
    # stay within a few OVERLOAD_S; nothing hangs until a timeout (request 30 s, worker 60 s).
    assert p99 < 3 * OVERLOAD_S
    assert running.worker_pids() == pids
    assert not SERVER_FAULTS.findall(running.log_path.read_text(errors="replace"))
    assert running.get("/readyz").status_code == 200


def rss_kib(pid: int) -> int:
    """Resident set size of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def mixed_calls() -> list[Call]:
    """The traffic of the memory test: every body type, errors included, and the probes."""
    images = [png(), encode(gradient((300, 200), "RGB"), "JPEG"), encode(gradient(), "GIF")]
    boundary = "convserve-mixed"
    multipart = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{i}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
            for i, data in enumerate(images)
        )
        + f"--{boundary}--\r\n".encode()
    )
    batch = orjson.dumps({"images": [base64.b64encode(data).decode() for data in images]})
    return [
        PREDICT,
        Call("POST", "/v1/predict?top_k=3", images[1], {"Content-Type": "image/jpeg"}),
        Call(
            "POST",
            "/v1/predict",
            multipart,
            {"Content-Type": f"multipart/form-data; boundary={boundary}"},
        ),
        Call("POST", "/v1/predict", batch, {"Content-Type": "application/json"}),
        Call("POST", "/v1/predict", png()[:40], {"Content-Type": "image/png"}),  # 422
        Call("POST", "/v1/predict", b"{", {"Content-Type": "application/json"}),  # 400
        Call("GET", "/v1/model"),
        Call("GET", "/readyz"),
        PREDICT,
        Call("GET", "/metrics"),
    ]


@pytest.mark.slow
def test_memory_stays_flat(tiny_checkpoint: Path, start_server: StartServer) -> None:
    running = start_server(tiny_checkpoint)
    calls = mixed_calls()
    warm = run_load(running.url, calls, connections=8, duration_s=30, total=2000)
    assert set(warm.statuses()) <= {200, 400, 422}
    pids = sorted(running.worker_pids())
    before = {pid: rss_kib(pid) for pid in pids}
    result = run_load(running.url, calls, connections=8, duration_s=150, total=20_000)
    after = {pid: rss_kib(pid) for pid in pids}
    print(
        f"memory: {len(result.outcomes)} mixed requests in {result.wall_s:.0f} s "
        f"({result.statuses()}); RSS KiB per worker before {before} after {after}"
    )
    assert len(result.outcomes) == 20_000
    assert set(result.statuses()) <= {200, 400, 422}
    assert sorted(running.worker_pids()) == pids
    for pid in pids:
        assert abs(after[pid] - before[pid]) < 0.10 * before[pid], (pid, before[pid], after[pid])
