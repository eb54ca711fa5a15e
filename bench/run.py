"""`python -m bench`: runs every measurement of the benchmark and writes bench/results.md.

Order: the model limits (in-process), then one echo server (the HTTP limit) and, per scenario,
one product server with batching on and one with batching off, each driven by wrk at every
concurrency. The tuned peer (bench/peer.py) runs beside the batching-on server: at c=8 and 32
the two alternate, PEER_ROUNDS runs each, and each side's median run is reported. Worker
memory is read after a warm-up and again after 10,000 more requests.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

from bench import decodecost, fixtures, load, modellimit, peer, protocols, report
from bench.fixtures import Scenario
from bench.records import Memory, Results, Row
from bench.server import IDLE_S, REPO, Server, cpu_seconds, rss_kb
from service.config import Settings

CONCURRENCY = (1, 8, 32)
PEER_CONCURRENCY = (8, 32)
# Alternating runs of the product and the peer at each peer concurrency; the median counts.
PEER_ROUNDS = 3
ECHO_APP = "bench.app:create_app()"
PRODUCT_APP = "service:create_app()"


@dataclass(frozen=True)
class ServerRun:
    """One server configuration: a scenario, batching on or off, extra CONVSERVE_* settings."""

    label: str
    scenario: Scenario
    batching: bool
    env: dict[str, str]
    concurrency: tuple[int, ...] = CONCURRENCY
    memory: bool = False


def _server_runs(scenarios: list[Scenario], bf16: bool) -> list[ServerRun]:
    """Per scenario: batching on (plus the memory check), batching off; opt-in bf16 for M."""
    runs: list[ServerRun] = []
    for scenario in scenarios:
        runs.append(ServerRun(scenario.name, scenario, True, {}, memory=True))
        runs.append(ServerRun(scenario.name, scenario, False, {"CONVSERVE_MAX_BATCH_SIZE": "1"}))
        if scenario.name == "M" and bf16:
            env = {"CONVSERVE_PRECISION": "bf16"}
            runs.append(ServerRun("M bf16", scenario, True, env, concurrency=(8, 32)))
    return runs


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m bench`."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per row")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per row")
    parser.add_argument("--limit-seconds", type=float, default=2.0, help="per model batch size")
    parser.add_argument("--memory-requests", type=int, default=10_000)
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results.md")
    parser.add_argument("--workdir", type=Path, default=None, help="default bench/runs/<time>")
    parser.add_argument("--scenarios", default="S,M", help="comma-separated subset of S,M")
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        help="wait up to this many seconds for the 1-minute load average to drop below "
        "--idle-load before measuring",
    )
    parser.add_argument("--idle-load", type=float, default=0.7)
    parser.add_argument(
        "--no-bf16",
        dest="bf16",
        action="store_false",
        help="skip the opt-in CONVSERVE_PRECISION=bf16 rows (skipped anyway without CPU bf16)",
    )
    args = parser.parse_args(argv)
    args.bf16 = args.bf16 and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())

    os.chdir(REPO)
    load.wrk_binary()
    if args.wait_idle > 0:
        _wait_idle(args.wait_idle, args.idle_load)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = (args.workdir or REPO / "bench" / "runs" / stamp).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    defaults = Settings()
    results = Results(
        started=dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        load_before=_loadavg(),
        context=_context(defaults),
    )
    wanted = {name.strip().upper() for name in args.scenarios.split(",")}
    results.scenarios = [s for s in fixtures.prepare(workdir) if s.name in wanted]
    server_env = {
        "CONVSERVE_WORKERS": str(defaults.workers),
        "CONVSERVE_THREADS": str(defaults.threads),
        "CONVSERVE_TORCH_THREADS": str(defaults.torch_threads),
        "CONVSERVE_RELOAD_INTERVAL_S": str(defaults.reload_interval_s),
    }

    user_env = {k: v for k, v in os.environ.items() if k.startswith("CONVSERVE_")}
    runs = _server_runs(results.scenarios, bf16=args.bf16)
    for label, scenario, extra in [(r.label, r.scenario, r.env) for r in runs if r.batching]:
        _say(f"model limit {label}")
        results.model_limits[label] = modellimit.measure(
            scenario.checkpoint,
            defaults.workers,
            defaults.torch_threads,
            args.limit_seconds,
            {**user_env, **extra},
        )
        _say(f"  best {results.model_limits[label].best:.0f} images/s")

    for scenario in results.scenarios:
        results.decode_ms[scenario.name] = decodecost.measure(scenario, args.limit_seconds)
        _say(f"decode {scenario.name}: {results.decode_ms[scenario.name]:.3f} ms per image")

    first = results.scenarios[0]
    echo_env = {**server_env, "CONVSERVE_MODEL_PATH": str(first.checkpoint)}
    with _serve(workdir, echo_env, ECHO_APP) as server:
        for scenario in results.scenarios:
            for concurrency in CONCURRENCY:
                url = server.url + "/bench/echo"
                _drive(url, scenario, concurrency, args.warmup, 0)
                result = _measure(server, url, scenario, concurrency, args.seconds)
                results.echo[(scenario.name, concurrency)] = result
                _say(f"echo {scenario.name} c={concurrency}: {_brief(result)}")

    for run in runs:
        scenario = run.scenario
        env = {**server_env, **run.env, "CONVSERVE_MODEL_PATH": str(scenario.checkpoint)}
        # The peer runs beside the product's batching-on server and the two alternate at the
        # peer's concurrencies, so the machine's drift over a run falls on both alike.
        with _serve(workdir, env, PRODUCT_APP) as server, _peer(workdir, run, defaults) as rival:
            url = server.url + "/v1/predict"
            if run.batching:
                results.batching[run.label] = server.get("/v1/model").json()["batching"]["reason"]
            _drive(url, scenario, 32, args.warmup, 0)
            for concurrency in run.concurrency:
                _drive(url, scenario, concurrency, args.warmup, 0)
                if rival is None or concurrency not in PEER_CONCURRENCY:
                    row = _product_row(server, url, run, concurrency, args.seconds)
                else:
                    row = _side_by_side(server, rival, run, concurrency, args, results)
                results.rows.append(row)
                state = "on" if run.batching else "off"
                _say(f"{run.label} batching {state} c={concurrency}: {_brief(row.result)}")
            if run.memory and args.memory_requests:
                rate = results.rows[-1].result.rps
                results.memory.append(_memory(server, url, scenario, args.memory_requests, rate))

    small = next((s for s in results.scenarios if s.name == "S"), None)
    protocol_text = ""
    if small is not None:
        rows = protocols.measure(workdir, small, server_env, args.seconds, args.warmup)
        top = protocols.ceiling_images(
            report.http_limit(results, "S"),
            results.model_limits["S"].best,
            results.decode_ms["S"],
            int(results.context["cores"]),
        )
        protocol_text = "\n" + protocols.render(rows, results.model_limits["S"].best, top)

    results.load_after = _loadavg()
    text = report.render(results) + protocol_text
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    (workdir / "results.md").write_text(text)
    _say(f"wrote {args.output}")
    print(report.summary(results))
    return 0


def _peer(
    workdir: Path, run: ServerRun, defaults: Settings
) -> contextlib.AbstractContextManager[Server | None]:
    """The tuned peer on the run's checkpoint, beside the batching-on run of each scenario."""
    if not run.batching or run.label != run.scenario.name:
        return contextlib.nullcontext()
    app = f'bench.peer:create_app("{run.scenario.checkpoint}")'
    return _serve(workdir, {}, app, sync_workers=defaults.workers)


def _product_row(server: Server, url: str, run: ServerRun, concurrency: int, seconds: float) -> Row:
    """One measured run of the product server, with the mean images per forward pass."""
    before = _batch_stats(server)
    result = _measure(server, url, run.scenario, concurrency, seconds)
    return Row(
        run.label, run.batching, concurrency, result, _mean_batch(before, _batch_stats(server))
    )


def _side_by_side(
    server: Server,
    rival: Server,
    run: ServerRun,
    concurrency: int,
    args: argparse.Namespace,
    results: Results,
) -> Row:
    """PEER_ROUNDS alternating runs of the product and the peer; each side's median run (by
    req/s) is its result, the peer's in results.peer."""
    url, rival_url = server.url + "/v1/predict", rival.url + peer.PREDICT_PATH
    _drive(rival_url, run.scenario, concurrency, args.warmup, 0)
    ours: list[Row] = []
    theirs: list[load.LoadResult] = []
    for _ in range(PEER_ROUNDS):
        ours.append(_product_row(server, url, run, concurrency, args.seconds))
        theirs.append(_measure(rival, rival_url, run.scenario, concurrency, args.seconds))
    peer_result = sorted(theirs, key=lambda r: r.rps)[PEER_ROUNDS // 2]
    results.peer[(run.scenario.name, concurrency)] = peer_result
    _say(f"peer {run.scenario.name} c={concurrency}: {_brief(peer_result)}")
    return sorted(ours, key=lambda r: r.result.rps)[PEER_ROUNDS // 2]


class _serve:
    """Context manager: a gunicorn server, stopped on exit; the production config unless
    `sync_workers` asks for the tuned peer's plain sync workers."""

    def __init__(
        self, workdir: Path, env: dict[str, str], app: str, sync_workers: int | None = None
    ) -> None:
        self.server = Server(workdir, env, app, sync_workers)

    def __enter__(self) -> Server:
        return self.server.start(timeout=120)

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def _drive(
    url: str, scenario: Scenario, concurrency: int, seconds: float, count: int
) -> load.LoadResult:
    return load.run(url, scenario.body, scenario.content_type, concurrency, seconds, count)


def _measure(
    server: Server, url: str, scenario: Scenario, concurrency: int, seconds: float
) -> load.LoadResult:
    """One measured wrk run, with the CPU time the server's workers spent meanwhile.

    CPU per request compares what two servers spend on a request, apart from their throughput,
    which also depends on how much of the cores wrk and the rest of the machine took.
    """
    pids = server.worker_pids()
    before = cpu_seconds(pids)
    result = _drive(url, scenario, concurrency, seconds, 0)
    after = cpu_seconds(pids)
    if before is None or after is None:  # a worker restarted: its CPU time is lost
        return result
    return replace(result, worker_cpu_s=after - before)


def _memory(server: Server, url: str, scenario: Scenario, count: int, rate: float) -> Memory:
    """Idle RSS of each worker now (warmed up by the rows) and after exactly `count` more requests.

    Idle: read IDLE_S after the load stopped, once the engine trimmed the heap, so the numbers
    compare what a worker keeps, not the activations of the batch in flight at that instant.
    wrk runs for its whole duration even once the script stopped sending, so the duration is
    sized from the measured rate, and topped up if it fell short.
    """
    pids = sorted(server.worker_pids())
    time.sleep(IDLE_S)
    before = {pid: rss_kb(pid) for pid in pids}
    sent = 0
    while sent < count:
        remaining = count - sent
        seconds = min(300.0, 1.0 + 1.15 * remaining / max(rate, 1.0))
        sent += _drive(url, scenario, 32, seconds, remaining).requests
    time.sleep(IDLE_S)
    after = {pid: rss_kb(pid) for pid in pids}
    _say(f"memory {scenario.name}: {sent} requests, RSS {before} -> {after} kB")
    return Memory(scenario.name, sent, before, after)


def _batch_stats(server: Server) -> tuple[float, float]:
    """(images, forward passes) so far, summed over the workers, from /metrics."""
    text = requests.get(server.url + "/metrics", timeout=10).text
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        if family.name == "convserve_batch_size":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
    return total, count


def _mean_batch(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    passes = after[1] - before[1]
    return (after[0] - before[0]) / passes if passes > 0 else None


def _brief(result: load.LoadResult) -> str:
    return (
        f"{result.rps:.0f} req/s, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, "
        f"non-2xx {result.non_2xx}, socket errors {result.socket_errors}"
        + (f", worker CPU {cpu:.2f} ms/req" if (cpu := result.cpu_ms_per_request) else "")
    )


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _wait_idle(limit_s: float, threshold: float) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        one_minute = float(_loadavg().split()[0])
        if one_minute < threshold:
            _say(f"load average {one_minute:.2f} < {threshold}: measuring")
            return
        if time.monotonic() >= deadline:
            _say(f"load average still {one_minute:.2f} after {limit_s:.0f}s: measuring anyway")
            return
        _say(f"load average {one_minute:.2f} >= {threshold}: waiting")
        time.sleep(30)


def _context(defaults: Settings) -> dict[str, str]:
    cpu = platform.processor() or "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "service", "bench", "models"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "wrk": load.wrk_version(),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "workers": str(defaults.workers),
        "threads": str(defaults.threads),
        "torch_threads": str(defaults.torch_threads),
        "max_batch_size": str(defaults.max_batch_size),
        "max_batch_delay_ms": f"{defaults.max_batch_delay_ms:g}",
        "precision": defaults.precision,
        "nice": str(os.nice(0)),
        "peer_rounds": str(PEER_ROUNDS),
    }


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
