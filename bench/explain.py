"""`python -m bench.explain`: one explain's cost, and /v1/predict beside explain traffic.

Serves scenario S (the default Fashion-MNIST model and a 28x28 PNG) with the default worker
settings, then measures:
1. one request at a time: /v1/predict and /v1/explain latency, the explain's server-side
   timings and its response size;
2. wrk on /v1/predict at a fixed concurrency for a while alone, then as long again beside
   paced explain traffic (a few people using the page), then beside saturating explain
   traffic (as many back-to-back clients as the workers' explain limits allow).
Writes bench/explain-results.md. A short run on a shared machine: read the numbers as a band.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench import fixtures, load
from bench.server import REPO, Server, cpu_seconds
from service.config import Settings


@dataclass
class Sequential:
    """Client-side latencies (ms) of one request at a time, and server timings of the explains."""

    predict_ms: list[float] = field(default_factory=list)
    explain_ms: list[float] = field(default_factory=list)
    # Worker CPU time (user + system) per request, ms: steadier than latency on a busy machine.
    predict_cpu_ms: float | None = None
    explain_cpu_ms: float | None = None
    explain_timing: dict[str, list[float]] = field(default_factory=dict)
    explain_bytes: int = 0


@dataclass
class Background:
    """Explain traffic run beside a wrk run: answers by status and 200 latencies (ms).

    `interval_s` is the pause each client keeps between the starts of its explains (0: none).
    """

    clients: int
    interval_s: float
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench.explain`."""
    parser = argparse.ArgumentParser(prog="python -m bench.explain", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per wrk run")
    parser.add_argument("--requests", type=int, default=100, help="sequential requests each")
    parser.add_argument("--concurrency", type=int, default=8, help="wrk connections")
    parser.add_argument(
        "--paced-rate", type=float, default=4.0, help="explains per second, paced traffic"
    )
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "explain-results.md")
    args = parser.parse_args(argv)
    os.chdir(REPO)
    load.wrk_binary()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = (REPO / "bench" / "runs" / f"explain-{stamp}").resolve()
    scenario = fixtures.prepare(workdir)[0]
    defaults = Settings()
    env = {
        "CONVSERVE_MODEL_PATH": str(scenario.checkpoint),
        "CONVSERVE_WORKERS": str(defaults.workers),
        "CONVSERVE_THREADS": str(defaults.threads),
        "CONVSERVE_TORCH_THREADS": str(defaults.torch_threads),
    }
    server = Server(workdir, env).start(timeout=120)
    try:
        body = scenario.body.read_bytes()
        sequential = _sequential(server, body, args.requests)
        predict_url = server.url + "/v1/predict"
        load.run(predict_url, scenario.body, scenario.content_type, args.concurrency, 2.0)
        alone = load.run(
            predict_url, scenario.body, scenario.content_type, args.concurrency, args.seconds
        )
        saturating = defaults.workers * defaults.max_concurrent_explains
        besides = [Background(2, 2 / args.paced_rate), Background(saturating, 0.0)]
        runs = [
            _beside(background, server.url, body, predict_url, scenario, args)
            for background in besides
        ]
    finally:
        server.stop()
    report = _render(
        scenario, defaults, args, sequential, alone, list(zip(besides, runs, strict=True))
    )
    args.output.write_text(report)
    print(report)
    return 0


def _sequential(server: Server, body: bytes, count: int) -> Sequential:
    result = Sequential()
    session = requests.Session()
    headers = {"Content-Type": "image/png"}
    for _ in range(5):  # warm-up
        session.post(server.url + "/v1/explain", data=body, headers=headers, timeout=30)
    pids = server.worker_pids()
    for path, latencies in (("/v1/predict", result.predict_ms), ("/v1/explain", result.explain_ms)):
        before = cpu_seconds(pids)
        for _ in range(count):
            started = time.perf_counter()
            response = session.post(server.url + path, data=body, headers=headers, timeout=30)
            response.raise_for_status()
            latencies.append(1000 * (time.perf_counter() - started))
            if path == "/v1/explain":
                for name, value in response.json()["timing_ms"].items():
                    result.explain_timing.setdefault(name, []).append(value)
                result.explain_bytes = len(response.content)
        after = cpu_seconds(pids)
        cpu_ms = None if before is None or after is None else 1000 * (after - before) / count
        if path == "/v1/predict":
            result.predict_cpu_ms = cpu_ms
        else:
            result.explain_cpu_ms = cpu_ms
    return result


def _beside(
    background: Background,
    url: str,
    body: bytes,
    predict_url: str,
    scenario: fixtures.Scenario,
    args: argparse.Namespace,
) -> load.LoadResult:
    """One wrk run on /v1/predict while `background.clients` threads post explains."""
    stop = threading.Event()
    threads = [
        threading.Thread(target=_explain_loop, args=(url, body, stop, background))
        for _ in range(background.clients)
    ]
    for thread in threads:
        thread.start()
    try:
        return load.run(
            predict_url, scenario.body, scenario.content_type, args.concurrency, args.seconds
        )
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def _explain_loop(url: str, body: bytes, stop: threading.Event, out: Background) -> None:
    session = requests.Session()
    while not stop.is_set():
        started = time.perf_counter()
        response = session.post(
            url + "/v1/explain", data=body, headers={"Content-Type": "image/png"}, timeout=30
        )
        elapsed = 1000 * (time.perf_counter() - started)
        with out.lock:
            out.statuses[response.status_code] = out.statuses.get(response.status_code, 0) + 1
            if response.status_code == 200:
                out.latencies_ms.append(elapsed)
        stop.wait(max(out.interval_s - elapsed / 1000, 0.0))
        if response.status_code == 503:
            stop.wait(0.1)


def _cpu(milliseconds: float | None) -> str:
    return "n/a (a worker restarted)" if milliseconds is None else f"{milliseconds:.2f}"


def _p(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1] if len(values) > 1 else values[0]


def _render(
    scenario: fixtures.Scenario,
    settings: Settings,
    args: argparse.Namespace,
    sequential: Sequential,
    alone: load.LoadResult,
    besides: list[tuple[Background, load.LoadResult]],
) -> str:
    timing = sequential.explain_timing
    medians = ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in timing.items())
    loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        "# Explain cost and predict beside explain traffic",
        "",
        f"Run {dt.datetime.now().astimezone().isoformat(timespec='seconds')} by "
        f"`python -m bench.explain` (load average after: {loadavg}); scenario "
        f"{scenario.name}: {scenario.description}; model {scenario.model_origin}; "
        f"{settings.workers} workers x {settings.threads} threads, {settings.torch_threads} "
        f"torch thread(s) each, at most {settings.max_concurrent_explains} explains per worker. "
        "A short run on a shared, noisy machine: read the numbers as a band.",
        "",
        f"## One request at a time ({args.requests} each, client-side)",
        "",
        "| request | p50 ms | p90 ms | worker CPU ms per request | response bytes |",
        "|---|---|---|---|---|",
        f"| POST /v1/predict | {_p(sequential.predict_ms, 50):.2f} | "
        f"{_p(sequential.predict_ms, 90):.2f} | {_cpu(sequential.predict_cpu_ms)} | |",
        f"| POST /v1/explain | {_p(sequential.explain_ms, 50):.2f} | "
        f"{_p(sequential.explain_ms, 90):.2f} | {_cpu(sequential.explain_cpu_ms)} | "
        f"{sequential.explain_bytes:,} |",
        "",
        f"Explain server timings, medians in ms: {medians}.",
        "",
        f"## /v1/predict under wrk (c={args.concurrency}, {args.seconds:.0f} s each)",
        "",
        "| traffic beside it | predict req/s | p50 ms | p99 ms | non-2xx | explains 200/s | "
        "explain p50 ms | explain statuses |",
        "|---|---|---|---|---|---|---|---|",
        f"| none | {alone.rps:.0f} | {alone.p50_ms:.2f} | {alone.p99_ms:.2f} | "
        f"{alone.non_2xx} | | | |",
    ]
    for background, result in besides:
        ok = background.statuses.get(200, 0)
        what = (
            f"{background.clients} explain clients, paced to {args.paced_rate:g}/s"
            if background.interval_s
            else f"{background.clients} back-to-back explain clients"
        )
        latency = _p(background.latencies_ms, 50) if background.latencies_ms else 0.0
        lines.append(
            f"| {what} | {result.rps:.0f} | {result.p50_ms:.2f} | {result.p99_ms:.2f} | "
            f"{result.non_2xx} | {ok / args.seconds:.1f} | {latency:.1f} | "
            f"{dict(sorted(background.statuses.items()))} |"
        )
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
