"""Several models per server: worker memory and start-up time against the number of models.

`python -m bench.models --counts 1,4,8` serves N copies of scenario S's checkpoint from one
CONVSERVE_MODEL_DIR (each under its own name, so each is loaded, warmed and batched on its
own) and reports the time from starting gunicorn to /readyz, the time until every model of
every worker answers, and each worker's idle RSS. It prints a markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bench import fixtures
from bench.server import IDLE_S, REPO, Server, rss_kb
from service.config import Settings


@dataclass(frozen=True)
class ModelsRow:
    """One server start with `count` models."""

    count: int
    ready_s: float
    all_models_s: float
    rss_kb: list[int]


def measure(workdir: Path, checkpoint: Path, count: int, workers: int) -> ModelsRow:
    """Starts a server over `count` copies of `checkpoint`; times it and reads worker RSS."""
    folder = workdir / f"models-{count}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for index in range(count):
        shutil.copy(checkpoint, folder / f"m{index:02d}.pt")
    env = {"CONVSERVE_MODEL_DIR": str(folder), "CONVSERVE_WORKERS": str(workers)}
    server = Server(workdir, env)
    started = time.perf_counter()
    server.start(timeout=600)
    ready_s = time.perf_counter() - started
    try:
        # Each worker loads every model before it accepts; poll until all answer on new
        # connections, so every worker has been asked.
        deadline = time.monotonic() + 600
        names = [f"m{index:02d}" for index in range(count)]
        while time.monotonic() < deadline:
            answers = [server.get(f"/v2/models/{n}/ready").status_code for n in names * workers]
            if all(status == 200 for status in answers):
                break
            time.sleep(0.2)
        all_models_s = time.perf_counter() - started
        time.sleep(IDLE_S)
        rss = [rss_kb(pid) for pid in sorted(server.worker_pids())]
    finally:
        server.stop()
    return ModelsRow(count, ready_s, all_models_s, rss)


def render(rows: list[ModelsRow], workers: int) -> str:
    """The markdown table."""
    lines = [
        f"| models | start to /readyz s | start to every model ready s | idle RSS per worker MiB "
        f"({workers} workers) |",
        "|---|---|---|---|",
    ]
    for row in rows:
        rss = ", ".join(f"{kb / 1024:.0f}" for kb in row.rss_kb)
        lines.append(f"| {row.count} | {row.ready_s:.1f} | {row.all_models_s:.1f} | {rss} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """`python -m bench.models`."""
    parser = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__)
    parser.add_argument("--counts", default="1,4,8")
    parser.add_argument("--workers", type=int, default=Settings().workers)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "runs" / "models")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    small = fixtures.prepare(args.workdir)[0]
    rows = []
    for count in (int(c) for c in args.counts.split(",")):
        rows.append(measure(args.workdir, small.checkpoint, count, args.workers))
        print(f"[models] {rows[-1]}", flush=True)
    print(render(rows, args.workers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
