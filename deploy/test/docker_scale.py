"""Load through the compose stack's nginx, for the scale-out checks of deploy/test/docker-test.sh.

    python docker_scale.py load URL --out FILE [--concurrency C] [--pause S] [--until FILE]
                                    [--max-seconds S] [--image PNG]
        POSTs one image to URL/v1/predict from C threads (keep-alive connections, a pause
        between requests) until FILE exists or S seconds passed; writes every answer's tally
        to --out (JSON) and prints the requests/s
    python docker_scale.py verdict FILE --name NAME
        PASS when every answer was a 200, or a 503 with Retry-After; else FAIL with each
        failure's kind and count
    python docker_scale.py spread --prometheus URL --since FILE --load FILE [--min-share F]
        each api replica's own convserve_requests_total (through Prometheus) grew since the
        snapshot in --since (written by `snapshot`) by at least F of the 200s that the load
        in --load counted, and together by all of them
    python docker_scale.py snapshot --prometheus URL --out FILE
    python docker_scale.py too-large URL
        an 11 MiB POST through nginx gets a problem+json 413, and a /v2 one {"error": ...}

Standard library and docker_smoke.py beside it. Loopback URLs only; every loop is bounded in
time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import docker_smoke as smoke

STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def gradient_png(size: int = 28) -> bytes:
    """A size x size greyscale PNG with a diagonal gradient, so the load needs no dataset."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(
        b"\0" + bytes((x + y) * 255 // (2 * size) for x in range(size)) for y in range(size)
    )
    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _split(url: str) -> tuple[str, int, str]:
    parts = urllib.parse.urlsplit(smoke._loopback(url))
    return parts.hostname or "127.0.0.1", parts.port or 80, parts.path


class Tally:
    """Counts answers by kind, thread-safely."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kinds: Counter[str] = Counter()
        self.stale_retries = 0
        self.first_failure: dict[str, float] = {}

    def add(self, kind: str, at: float) -> None:
        with self.lock:
            self.kinds[kind] += 1
            if not kind.startswith(("200", "503+retry-after")):
                self.first_failure.setdefault(kind, at)


def _one(conn: http.client.HTTPConnection, path: str, body: bytes) -> str:
    conn.request("POST", path, body=body, headers={"Content-Type": "image/png"})
    response = conn.getresponse()
    response.read()
    if response.status == 503 and response.getheader("Retry-After"):
        return "503+retry-after"
    if response.status != 200:
        return f"{response.status} {response.getheader('Content-Type')}"
    return "200"


def _worker(url: str, body: bytes, pause: float, stop: threading.Event, tally: Tally) -> None:
    host, port, prefix = _split(url)
    path = f"{prefix}/v1/predict"
    conn: http.client.HTTPConnection | None = None
    served = 0  # requests answered on the current connection
    start = time.monotonic()
    while not stop.is_set():
        if conn is None:
            conn = http.client.HTTPConnection(host, port, timeout=30)
            served = 0
        try:
            kind = _one(conn, path, body)
            served += 1
        except STALE:
            conn.close()
            conn = None
            if served:
                # The server closed an idle keep-alive connection as this request went out
                # (nginx does so on reload): nothing was answered, so the request is sent
                # again on a new connection, as HTTP clients do. Counted apart.
                with tally.lock:
                    tally.stale_retries += 1
                conn = http.client.HTTPConnection(host, port, timeout=30)
                served = 0
                try:
                    kind = _one(conn, path, body)
                    served += 1
                except (OSError, http.client.HTTPException) as exc:
                    kind = f"transport {type(exc).__name__}"
                    conn.close()
                    conn = None
            else:
                kind = "transport closed-before-answer"
        except (OSError, http.client.HTTPException) as exc:
            kind = f"transport {type(exc).__name__}"
            conn.close()
            conn = None
        tally.add(kind, time.monotonic() - start)
        if pause:
            stop.wait(pause)
    if conn is not None:
        conn.close()


def load(
    url: str,
    out: Path,
    concurrency: int,
    pause: float,
    until: Path | None,
    max_seconds: float,
    body: bytes,
) -> dict[str, Any]:
    """Runs the load; returns (and writes) the tally."""
    tally = Tally()
    stop = threading.Event()
    threads = [
        threading.Thread(target=_worker, args=(url, body, pause, stop, tally), daemon=True)
        for _ in range(concurrency)
    ]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    deadline = start + max_seconds
    while time.monotonic() < deadline and not (until and until.exists()):
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(40)
    seconds = time.monotonic() - start
    total = sum(tally.kinds.values())
    result = {
        "seconds": round(seconds, 2),
        "concurrency": concurrency,
        "requests": total,
        "requests_per_s": round(total / seconds, 1),
        "answers": dict(tally.kinds),
        "stale_keepalive_retries": tally.stale_retries,
        "first_failure_s": {k: round(v, 2) for k, v in tally.first_failure.items()},
        "timed_out": until is not None and not until.exists(),
    }
    out.write_text(json.dumps(result, indent=1))
    return result


def verdict(path: Path, name: str) -> bool:
    result = json.loads(path.read_text())
    answers: dict[str, int] = result["answers"]
    good = answers.get("200", 0) + answers.get("503+retry-after", 0)
    failed = {k: v for k, v in answers.items() if k not in ("200", "503+retry-after")}
    detail = (
        f"{result['requests']} requests in {result['seconds']} s at concurrency "
        f"{result['concurrency']}: {answers.get('200', 0)} x 200, "
        f"{answers.get('503+retry-after', 0)} x 503+Retry-After, {sum(failed.values())} failed"
        f"; {result['stale_keepalive_retries']} re-sent after nginx closed an idle keep-alive"
        " connection"
    )
    if failed:
        detail += f"; failures: {failed} (first at {result['first_failure_s']} s)"
    ok = not failed and good > 0 and not result["timed_out"]
    if result["timed_out"]:
        detail += "; the scenario did not finish within the load's time bound"
    print(f"{'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
    return ok


PER_REPLICA = (
    'sum by (instance) (convserve_requests_total{job="convserve", '
    'endpoint="/v1/predict", status="200"})'
)


def per_replica(prometheus: str) -> dict[str, float]:
    """Each scraped replica's own count of answered predictions."""
    result = smoke.prom_query(smoke._loopback(prometheus), PER_REPLICA)["data"]["result"]
    return {r["metric"]["instance"]: float(r["value"][1]) for r in result}


def spread(
    prometheus: str, since: Path, load_file: Path, min_share: float, expect: int, timeout: float
) -> bool:
    before: dict[str, float] = json.loads(since.read_text())
    sent = json.loads(load_file.read_text())["answers"].get("200", 0)
    deadline = time.monotonic() + timeout
    gained: dict[str, float] = {}
    while time.monotonic() < deadline:
        now = per_replica(prometheus)
        gained = {k: v - before.get(k, 0.0) for k, v in now.items()}
        if len(gained) >= expect and sum(gained.values()) >= sent:
            break
        time.sleep(1)
    total = sum(gained.values())
    shares = {k: round(v / total, 2) for k, v in gained.items()} if total else {}
    ok = len(gained) >= expect and total > 0 and min(shares.values()) >= min_share
    print(
        f"{'PASS' if ok else 'FAIL'} balance: {total:.0f} predictions counted by "
        f"{len(gained)} replicas' own convserve_requests_total (through Prometheus), "
        f"shares {shares} (each must be >= {min_share})",
        flush=True,
    )
    return ok


def too_large(url: str) -> bool:
    base = smoke._loopback(url)
    body = b"\0" * (11 * 1024 * 1024)
    problems = []
    for path, want_type in (
        ("/v1/predict", "application/problem+json"),
        ("/v2/models/model/infer", "application/json"),
    ):
        try:
            status, headers, data = smoke.http(
                "POST", base + path, body, {"Content-Type": "image/png"}, timeout=60
            )
        except OSError as exc:
            problems.append(f"{path}: {type(exc).__name__} {exc}")
            continue
        ctype = headers.get("Content-Type")
        answer = json.loads(data) if ctype == want_type else {}
        if status != 413 or ctype != want_type:
            problems.append(f"{path}: HTTP {status} {ctype} {data[:120]!r}")
        elif want_type.endswith("problem+json") and answer.get("status") != 413:
            problems.append(f"{path}: problem body {answer}")
        elif not want_type.endswith("problem+json") and "error" not in answer:
            problems.append(f"{path}: v2 body {answer}")
    print(
        f"{'FAIL' if problems else 'PASS'} too-large: an 11 MiB POST through nginx gets 413 as "
        'problem+json on /v1 and {"error"} on /v2' + (f"; {problems}" if problems else ""),
        flush=True,
    )
    return not problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("load")
    run.add_argument("url")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--concurrency", type=int, default=4)
    run.add_argument("--pause", type=float, default=0.0)
    run.add_argument("--until", type=Path)
    run.add_argument("--max-seconds", type=float, default=60)
    run.add_argument("--image", type=Path)
    judge = sub.add_parser("verdict")
    judge.add_argument("file", type=Path)
    judge.add_argument("--name", required=True)
    snap = sub.add_parser("snapshot")
    snap.add_argument("--prometheus", required=True)
    snap.add_argument("--out", type=Path, required=True)
    share = sub.add_parser("spread")
    share.add_argument("--prometheus", required=True)
    share.add_argument("--since", type=Path, required=True)
    share.add_argument("--load", type=Path, required=True)
    share.add_argument("--replicas", type=int, default=2)
    share.add_argument("--min-share", type=float, default=0.2)
    share.add_argument("--timeout", type=float, default=30)
    big = sub.add_parser("too-large")
    big.add_argument("url")
    args = parser.parse_args(argv)

    if args.command == "load":
        body = args.image.read_bytes() if args.image else gradient_png()
        result = load(
            args.url, args.out, args.concurrency, args.pause, args.until, args.max_seconds, body
        )
        print(f"{result['requests_per_s']}")
        return 0
    if args.command == "verdict":
        return 0 if verdict(args.file, args.name) else 1
    if args.command == "snapshot":
        args.out.write_text(json.dumps(per_replica(args.prometheus)))
        return 0
    if args.command == "spread":
        ok = spread(
            args.prometheus, args.since, args.load, args.min_share, args.replicas, args.timeout
        )
        return 0 if ok else 1
    return 0 if too_large(args.url) else 1


if __name__ == "__main__":
    sys.exit(main())
