"""Turns one benchmark run into bench/results.md (and a short summary for the terminal).

Rows are labelled by scenario ("S", "M") or by scenario and variant ("M bf16"); a label's HTTP
limit is its scenario's (same body), its model limit is measured with its own settings.
"""

from __future__ import annotations

from bench import decodecost
from bench.load import LoadResult
from bench.records import Results, Row

# How far ahead of the tuned peer issue 5 wants each scenario at the same concurrency.
PEER_FACTORS = {"S": 1.3, "M": 1.5}
# The tuned peers' req/s as quoted in issue 5 (another run, concurrency 16), for information.
QUOTED_PEERS = {"S": "Flask 1,845 / TorchServe 1,420", "M": "Flask 159 / TorchServe 157"}
MEMORY_GROWTH_TOLERANCE = 0.02
# Issue 18, small images against the tuned peer: throughput and tail at c=32, and the latency
# a prediction adds to the echo route at c=1; large images keep issue 5's lead.
S_PEER_FACTOR, S_P99_FACTOR, S_C1_GAP_MS, M_PEER_FACTOR = 1.2, 1.5, 1.3, 1.75


def http_limit(results: Results, label: str) -> float:
    """Highest echo-route throughput with this scenario's body, over the concurrencies."""
    scenario = label.split()[0]
    return max(r.rps for (name, _), r in results.echo.items() if name == scenario)


def limit(results: Results, label: str) -> float:
    """min(HTTP limit, model limit) for the label."""
    return min(http_limit(results, label), results.model_limits[label].best)


def ceiling(results: Results, label: str) -> float | None:
    """Requests/s if a request cost only an echo, a decode and a forward pass (bench.decodecost).

    None when the scenario's decode cost was not measured.
    """
    decode_ms = results.decode_ms.get(label.split()[0])
    if decode_ms is None:
        return None
    cores = int(results.context["cores"])
    return decodecost.ceiling(
        http_limit(results, label), results.model_limits[label].best, decode_ms, cores
    )


def row(results: Results, label: str, batching: bool, concurrency: int) -> Row | None:
    """The row for that configuration, if it ran."""
    for candidate in results.rows:
        key = (candidate.scenario, candidate.batching, candidate.concurrency)
        if key == (label, batching, concurrency):
            return candidate
    return None


def targets(results: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) per target of issue 5 this run covers; met None: for info."""
    checks: list[tuple[str, str, bool | None]] = []
    for name, floor in (("S", 0.6), ("M", 0.7)):
        found = row(results, name, True, 32)
        if found:
            fraction = found.result.rps / limit(results, name)
            checks.append(
                (
                    f"{name} at c=32 >= {floor:.1f} of the limit",
                    f"{fraction:.2f}",
                    fraction >= floor,
                )
            )
    for name in ("S", "M"):
        top = ceiling(results, name)
        if top is not None and name in results.model_limits:
            checks.append(
                (
                    f"{name}: the ceiling (echo + decode + forward, no other cost) as a fraction "
                    "of the limit, i.e. the best fraction any server could reach here",
                    f"{top / limit(results, name):.2f}",
                    None,
                )
            )
    on, off = row(results, "M", True, 32), row(results, "M", False, 32)
    if on and off and off.result.rps > 0:
        ratio = on.result.rps / off.result.rps
        checks.append(("M at c=32: batching on >= 1.5x off", f"{ratio:.2f}x", ratio >= 1.5))
    single = row(results, "S", True, 1)
    if single and ("S", 1) in results.echo:
        gap = single.result.p50_ms - results.echo[("S", 1)].p50_ms
        checks.append(
            ("S at c=1: p50 within 1.5 ms of the HTTP limit's p50", f"{gap:+.2f} ms", gap <= 1.5)
        )
    bad = sum(r.result.non_2xx + r.result.socket_errors for r in results.rows)
    checks.append(("zero non-2xx and socket errors in every row", str(bad), bad == 0))
    for memory in results.memory:
        growth = max(
            (memory.after_requests_kb[pid] - kb) / kb for pid, kb in memory.after_warmup_kb.items()
        )
        checks.append(
            (
                f"{memory.scenario}: worker RSS does not grow over {memory.requests:,} requests",
                f"{growth:+.1%} (largest worker change)",
                growth <= MEMORY_GROWTH_TOLERANCE,
            )
        )
    for name, factor in PEER_FACTORS.items():
        found, peer = row(results, name, True, 32), results.peer.get((name, 32))
        if not (found and peer and peer.rps > 0):
            continue
        checks.append(
            (
                f"{name} at c=32: >= {factor}x the tuned peer measured in this run "
                f"(bench/peer.py; issue 5 quotes {QUOTED_PEERS[name]} req/s from its own run)",
                f"{found.result.rps / peer.rps:.2f}x",
                found.result.rps >= factor * peer.rps,
            )
        )
        echo = results.echo.get((name, 32))
        ours_cpu, peer_cpu = found.result.cpu_ms_per_request, peer.cpu_ms_per_request
        if ours_cpu and peer_cpu and echo and echo.cpu_ms_per_request:
            checks.append(
                (
                    f"{name} at c=32, worker CPU per request: convserve / tuned peer / the echo "
                    "route (the HTTP stack alone), for information",
                    f"{ours_cpu:.2f} / {peer_cpu:.2f} / {echo.cpu_ms_per_request:.2f} ms",
                    None,
                )
            )
    bf16 = row(results, "M bf16", True, 32)
    if bf16 and on:
        checks.append(
            (
                "M at c=32, opt-in CONVSERVE_PRECISION=bf16 vs the default fp32 (for information)",
                f"{bf16.result.rps / on.result.rps:.2f}x",
                None,
            )
        )
    return checks


def render(results: Results) -> str:
    """The whole results.md."""
    return "\n".join(_header(results) + _limits(results) + _rows(results) + _rest(results)) + "\n"


def _header(results: Results) -> list[str]:
    ctx = results.context
    lines = [
        "# convserve benchmark results",
        "",
        "Written by `make bench` (`python -m bench`); every number below comes from the one run "
        "described here. Rerun it to measure your machine.",
        "",
        f"- Run: {results.started}, commit {ctx['commit']}",
        f"- Machine: {ctx['cpu']}, {ctx['cores']} cores; Python {ctx['python']}, "
        f"torch {ctx['torch']}",
        f"- Load average (1/5/15 min) before the run: **{results.load_before}**; after it: "
        f"{results.load_after} (the run itself keeps both cores busy)"
        + (
            f"; run at niceness {ctx['nice']} (server, wrk and model limit alike) so that "
            "other work on the machine disturbs it less"
            if ctx.get("nice", "0") != "0"
            else ""
        ),
        "- Server: real gunicorn with the production config (`service/gunicorn_conf.py`, gthread) "
        f"and default settings: {ctx['workers']} workers x {ctx['threads']} threads, "
        f"{ctx['torch_threads']} torch thread(s) per worker, max batch {ctx['max_batch_size']} "
        "(lowered per model at load where larger passes cost more per image: see the batching "
        "chosen under Targets), "
        f"batch delay {ctx['max_batch_delay_ms']} ms, precision {ctx['precision']}; batching off "
        "= `CONVSERVE_MAX_BATCH_SIZE=1`; `M bf16` = `CONVSERVE_PRECISION=bf16` (opt-in)",
        f"- Load generator: {ctx['wrk']} on loopback, 1 thread, keep-alive; `bench/post.lua` "
        "POSTs the file as the raw body. Each row is a warm-up run, then a measured run; wrk "
        "shares the 2 cores with the server (as in the peers' measurements)",
        f"- Tuned peer: `bench/peer.py`, what a hand-written service does (Flask, gunicorn with "
        f"{ctx['workers']} sync workers, so no keep-alive, 1 torch thread per process, the plain "
        "eager model from the same checkpoint, full Pillow decode and resize, no batching, no "
        "validation, metrics or logs), started beside the batching-on server of each scenario; "
        f"at c=8 and c=32 the two alternate, {ctx['peer_rounds']} measured runs each, and each "
        "side's median run (by req/s) is its row",
        "",
        "Scenarios:",
        "",
    ]
    for scenario in results.scenarios:
        size = scenario.body.stat().st_size
        lines.append(
            f"- **{scenario.name}**: {scenario.description}; body {size:,} bytes "
            f"({scenario.content_type}); model {scenario.model_origin}"
        )
    return lines


def _limits(results: Results) -> list[str]:
    ctx = results.context
    lines = [
        "",
        "## Limits of the stack (same run)",
        "",
        "HTTP limit: the same server config answering `POST /bench/echo` (reads the body, "
        "returns constant JSON; it exists only in the benchmark's app factory `bench/app.py`) "
        "with the scenario's body, best of the three concurrencies. Model limit: "
        f"`Engine.forward` (normalize, model, softmax) in {ctx['workers']} processes x "
        f"{ctx['torch_threads']} torch thread(s), no HTTP, at the best batch size. Decode: "
        "CPU time of `service.imaging.decode_image` on the scenario's body, one thread, no "
        "HTTP. Ceiling: 1 / (1/HTTP limit + 1/model limit + decode / cores), the rate of a "
        "server whose requests cost an echo, a decode and a forward pass and nothing else.",
        "",
        "| scenario | HTTP limit req/s | HTTP p50 at c=1 ms | model limit images/s (batch) "
        "| limit = min | decode ms | ceiling req/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, model in results.model_limits.items():
        echo1 = results.echo.get((label.split()[0], 1))
        decode_ms = results.decode_ms.get(label.split()[0])
        top = ceiling(results, label)
        lines.append(
            f"| {label} | {http_limit(results, label):,.0f} | "
            f"{f'{echo1.p50_ms:.2f}' if echo1 else '-'} | "
            f"{model.best:,.0f} ({model.best_batch}) | {limit(results, label):,.0f} | "
            f"{f'{decode_ms:.3f}' if decode_ms is not None else '-'} | "
            f"{f'{top:,.0f}' if top is not None else '-'} |"
        )
    return lines


def _rows(results: Results) -> list[str]:
    lines = [
        "",
        "## Scenarios",
        "",
        "| scenario | batching | concurrency | req/s | p50 ms | p99 ms | non-2xx | socket errors "
        "| worker CPU ms/req | images per forward pass | fraction of limit | fraction of ceiling |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in results.scenarios:
        for (name, concurrency), r in sorted(results.echo.items()):
            if name == scenario.name:
                lines.append(
                    f"| {name} HTTP limit (echo) | - | {concurrency} | {_load_cells(r)} "
                    "| - | - | - |"
                )
        for found in results.rows:
            if found.scenario.split()[0] != scenario.name:
                continue
            r = found.result
            mean = f"{found.mean_batch:.1f}" if found.mean_batch is not None else "-"
            top = ceiling(results, found.scenario)
            lines.append(
                f"| {found.scenario} | {'on' if found.batching else 'off'} | "
                f"{found.concurrency} | {_load_cells(r)} | {mean} | "
                f"{r.rps / limit(results, found.scenario):.2f} | "
                f"{f'{r.rps / top:.2f}' if top else '-'} |"
            )
        for (name, concurrency), r in sorted(results.peer.items()):
            if name == scenario.name:
                lines.append(
                    f"| {name} tuned peer (bench/peer.py) | - | {concurrency} | "
                    f"{_load_cells(r)} | 1.0 | {r.rps / limit(results, name):.2f} | - |"
                )
    for issue, checks in (("18", speed_targets(results)), ("5", targets(results))):
        lines += ["", f"## Targets (issue {issue})", "", "| target | measured | met |"]
        lines.append("|---|---:|---|")
        for target, measured, met in checks:
            verdict = "(info)" if met is None else "yes" if met else "**no**"
            lines.append(f"| {target} | {measured} | {verdict} |")
    return lines


def speed_targets(results: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) per target of issue 18 this run covers; met None: for info."""
    checks = _ahead_of_peer(results, "S", S_PEER_FACTOR, "the tuned peer's req/s")
    small, small_peer = row(results, "S", True, 32), results.peer.get(("S", 32))
    if small and small_peer and small_peer.p99_ms > 0:
        tail = small.result.p99_ms / small_peer.p99_ms
        checks.append(
            (
                f"S at c=32: p99 <= {S_P99_FACTOR}x the tuned peer's p99",
                f"{small.result.p99_ms:.1f} / {small_peer.p99_ms:.1f} ms = {tail:.2f}x",
                tail <= S_P99_FACTOR,
            )
        )
    single = row(results, "S", True, 1)
    if single and ("S", 1) in results.echo:
        gap = single.result.p50_ms - results.echo[("S", 1)].p50_ms
        checks.append(
            (
                f"S at c=1: p50 within {S_C1_GAP_MS} ms of the echo route's p50",
                f"{gap:+.2f} ms",
                gap <= S_C1_GAP_MS,
            )
        )
    checks += _ahead_of_peer(results, "M", M_PEER_FACTOR, "the tuned peer (no regression)")
    for label, reason in results.batching.items():
        checks.append((f"{label}: batching chosen at load (GET /v1/model)", reason, None))
    return checks


def _ahead_of_peer(
    results: Results, name: str, factor: float, what: str
) -> list[tuple[str, str, bool | None]]:
    """The check that `name` at c=32 (batching on) answers >= factor x the peer's req/s."""
    ours, peer = row(results, name, True, 32), results.peer.get((name, 32))
    if not (ours and peer and peer.rps > 0):
        return []
    ratio = ours.result.rps / peer.rps
    return [(f"{name} at c=32: >= {factor}x {what}", f"{ratio:.2f}x", ratio >= factor)]


def _load_cells(r: LoadResult) -> str:
    """The cells every row shares: req/s, p50, p99, non-2xx, socket errors, worker CPU."""
    cpu = f"{r.cpu_ms_per_request:.2f}" if r.cpu_ms_per_request is not None else "-"
    return (
        f"{r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.non_2xx} | {r.socket_errors} | {cpu}"
    )


def _rest(results: Results) -> list[str]:
    lines: list[str] = []
    if results.memory:
        lines += [
            "",
            "## Worker memory (batching on, c=32)",
            "",
            "Idle RSS of each gunicorn worker (read 2.5 s after the load stopped, past a heap "
            "trim) after warm-up and the measured rows, then after that many more requests.",
            "",
            "| scenario | worker | idle RSS after warm-up MiB | idle RSS after the requests MiB "
            "| requests "
            "| change MiB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for memory in results.memory:
            for index, (pid, before) in enumerate(sorted(memory.after_warmup_kb.items())):
                after = memory.after_requests_kb[pid]
                lines.append(
                    f"| {memory.scenario} | {index + 1} | {before / 1024:.1f} | "
                    f"{after / 1024:.1f} | {memory.requests:,} | {(after - before) / 1024:+.1f} |"
                )
    sizes = sorted({b for m in results.model_limits.values() for b in m.per_batch})
    lines += [
        "",
        "## Model limit by batch size (images/s, all workers together)",
        "",
        "| scenario | " + " | ".join(str(b) for b in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for label, model in results.model_limits.items():
        cells = " | ".join(
            f"{model.per_batch[b]:,.0f}" if b in model.per_batch else "-" for b in sizes
        )
        lines.append(f"| {label} | {cells} |")
    return lines


def summary(results: Results) -> str:
    """The targets as plain text lines."""
    marks = {True: "ok  ", False: "MISS", None: "info"}
    checks = speed_targets(results) + targets(results)
    return "\n".join(f"{marks[met]} {target}: {measured}" for target, measured, met in checks)
