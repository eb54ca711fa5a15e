"""Drives a server with wrk (one thread, keep-alive) and bench/post.lua; parses its JSON line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "post.lua"
_MARKER = "BENCH_JSON "


@dataclass(frozen=True)
class LoadResult:
    """What one wrk run measured; latencies in milliseconds."""

    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    statuses: dict[int, int]
    socket_errors: int
    shed_without_retry_after: int
    # CPU time (user + system) the server's workers spent during the run, when it was read.
    worker_cpu_s: float | None = None

    @property
    def rps(self) -> float:
        """Requests answered per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_request(self) -> float | None:
        """Worker CPU per answered request in milliseconds; None when not read."""
        if self.worker_cpu_s is None or self.requests == 0:
            return None
        return 1000 * self.worker_cpu_s / self.requests

    @property
    def non_2xx(self) -> int:
        """Answers outside 200-299."""
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)

    @property
    def shed(self) -> int:
        """503 answers (load shedding)."""
        return self.statuses.get(503, 0)


def wrk_binary() -> str:
    """The wrk executable; raises with the install hint when it is missing."""
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: run scripts/ensure-apt.sh wrk (or make bench)")
    return found


def wrk_version() -> str:
    """wrk's own version line, e.g. 'wrk debian/4.1.0-3+b2 [epoll]'."""
    out = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, check=False)
    first = (out.stdout or out.stderr).splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "wrk"


def run(
    url: str,
    body: Path,
    content_type: str,
    connections: int,
    seconds: float,
    requests: int = 0,
    timeout_s: float = 10.0,
    header: str | None = None,
) -> LoadResult:
    """POSTs `body` to `url` over `connections` keep-alive connections.

    Runs for `seconds`, or until `requests` answers when that is non-zero (then `seconds` only
    bounds the run). `header` is one more request header, "Name: value".
    """
    env = {
        **os.environ,
        "BENCH_BODY": str(body),
        "BENCH_CONTENT_TYPE": content_type,
        "BENCH_REQUESTS": str(requests),
        **({"BENCH_HEADER": header} if header else {}),
    }
    command = [
        wrk_binary(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={max(1, round(timeout_s))}s",
        "-s",
        str(SCRIPT),
        url,
    ]
    out = subprocess.run(
        command, capture_output=True, text=True, env=env, check=False, timeout=seconds + 60
    )
    for line in out.stdout.splitlines():
        if line.startswith(_MARKER):
            return _parse(json.loads(line[len(_MARKER) :]))
    raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


def _parse(data: dict[str, object]) -> LoadResult:
    latency = data["latency_us"]
    errors = data["socket_errors"]
    statuses = data["statuses"]
    assert isinstance(latency, dict) and isinstance(errors, dict) and isinstance(statuses, dict)
    duration_us = data["duration_us"]
    requests = data["requests"]
    assert isinstance(duration_us, int) and isinstance(requests, int)
    shed_without = data["shed_without_retry_after"]
    assert isinstance(shed_without, int)
    return LoadResult(
        requests=requests,
        seconds=duration_us / 1e6,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        mean_ms=latency["mean"] / 1000,
        statuses={int(status): int(count) for status, count in statuses.items()},
        socket_errors=sum(int(v) for v in errors.values()),
        shed_without_retry_after=shed_without,
    )
