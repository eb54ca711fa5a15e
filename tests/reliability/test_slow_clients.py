"""Slow, idle and malformed request streams against the real gunicorn: the service keeps
answering everyone else, and each bad stream ends at its deadline with a 4xx problem+json.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import requests

from bench.server import Server
from service.schemas import ProblemDetail
from tests.images import encode, png
from tests.reliability.checks import SERVER_FAULTS, assert_safe_answer, sample, scrape
from tests.reliability.conftest import StartServer
from tests.reliability.hostile import noise
from tests.reliability.load import Call, percentile, run_load
from tests.reliability.slow import exchange, slow_body, slow_header, trickle

PREDICT = Call("POST", "/v1/predict", png(), {"Content-Type": "image/png"})
DEADLINE_S = 3.0  # the header timeout and the body window of the slow-client server
SLOW = 200


def problem_of(answer: bytes) -> tuple[int, dict[str, object]]:
    """The status and validated problem+json body of a raw answer (which must be one)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers["content-type"] == "application/problem+json", answer[:300]
    assert headers["x-content-type-options"] == "nosniff"
    document = json.loads(body[: int(headers["content-length"])])
    ProblemDetail.model_validate(document)
    return int(lines[0].split()[1]), document


@pytest.mark.slow
def test_slow_clients_cannot_stop_the_service(
    tiny_checkpoint: Path, start_server: StartServer
) -> None:
    """100 connections trickle a head and 100 a body, a byte every 300 ms; normal requests
    meanwhile all succeed quickly, and every slow connection gets its 408 at its deadline."""
    running = start_server(
        tiny_checkpoint,
        CONVSERVE_CLIENT_HEADER_TIMEOUT_S=str(DEADLINE_S),
        CONVSERVE_CLIENT_BODY_TIMEOUT_S=str(DEADLINE_S),
    )
    pids = running.worker_pids()
    run_load(running.url, [PREDICT], connections=4, duration_s=1.0, rate=50)  # warm-up
    calm = run_load(running.url, [PREDICT], connections=4, duration_s=2.0, rate=50)
    starts = [slow_header(running.port)] * (SLOW // 2) + [slow_body(running.port)] * (SLOW // 2)
    slow_result: list[tuple[list, float]] = []
    trickler = threading.Thread(
        target=lambda: slow_result.append(trickle(running.port, starts, 0.3, DEADLINE_S + 5))
    )
    trickler.start()
    time.sleep(0.5)  # the slow connections are open and trickling
    busy = run_load(
        running.url,
        [PREDICT, Call("GET", "/readyz")],
        connections=4,
        duration_s=DEADLINE_S - 0.5,
        rate=50,
    )
    trickler.join(timeout=DEADLINE_S + 15)
    ended, _ = slow_result[0]

    ok = [o.latency_s for o in busy.ok()]
    calm_p99, p99 = percentile([o.latency_s for o in calm.ok()], 99), percentile(ok, 99)
    endings = sorted(round(e.after_s, 1) for e in ended)
    print(
        f"slow clients: {len(ended)} trickling; normal requests alone p99 {calm_p99 * 1000:.0f} "
        f"ms, beside them {busy.statuses()} p50 {percentile(ok, 50) * 1000:.0f} ms p99 "
        f"{p99 * 1000:.0f} ms; slow connections ended after {endings[0]}-{endings[-1]} s with "
        f"{sorted({e.status for e in ended}, key=str)}"
    )
    assert busy.statuses() == {200: len(busy.outcomes)}, busy.failures()[:3]
    assert len(busy.outcomes) >= 50 * (DEADLINE_S - 0.5) * 0.9
    # The promise is 100 ms. The machine running the tests may be shared, so latency noise
    # that the same load shows without slow clients (measured just before) is allowed for;
    # before the fix, the p99 beside 200 slow clients was 15 s.
    assert p99 < max(0.1, 2 * calm_p99)
    for end in ended:
        assert end.closed and end.status == 408, end
        problem_of(end.answer)
        # Opened within 0.5 s of each other (`after_s` counts from the last), swept every 0.1 s.
        assert DEADLINE_S - 0.6 <= end.after_s <= DEADLINE_S + 1.5, end
    assert running.get("/readyz").status_code == 200
    assert running.worker_pids() == pids
    assert not SERVER_FAULTS.findall(running.log_path.read_text(errors="replace"))
    samples = scrape(running.url)
    for reason in ("header_timeout", "body_timeout"):
        assert sample(samples, "convserve_request_read_errors_total", reason=reason) == SLOW // 2


@pytest.mark.slow
def test_a_slow_phone_upload_gets_through(tiny_checkpoint: Path, start_server: StartServer) -> None:
    """A 1 MB photo sent at 256 kbit/s (32 KB/s, about 32 s) with the default deadlines."""
    running = start_server(tiny_checkpoint)
    photo = encode(noise((640, 540)), "PNG")
    assert 1_000_000 <= len(photo) < 1_100_000
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{running.port}\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(photo)}\r\nConnection: close\r\n\r\n"
    ).encode()
    piece, every_s = 4096, 4096 / 32_000
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", running.port), timeout=60) as sock:
        sock.sendall(head)
        for index, at in enumerate(range(0, len(photo), piece)):
            time.sleep(max(0.0, started + index * every_s - time.monotonic()))
            sock.sendall(photo[at : at + piece])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    took = time.monotonic() - started
    print(f"slow upload: {len(photo):,} bytes in {took:.1f} s: {answer[:15]!r}")
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert took > 25


def test_idle_connections_beyond_the_threads_do_not_block(server: Server) -> None:
    """40 connections that never send and 40 kept alive after one request, against 2 workers
    x 8 threads: new requests are still answered at once."""
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(40)]
    kept = []
    try:
        for _ in range(40):
            session = requests.Session()
            assert session.get(server.url + "/healthz", timeout=10).status_code == 200
            kept.append(session)
        time.sleep(0.3)
        slowest = 0.0
        for _ in range(20):
            started = time.monotonic()
            response = requests.post(
                server.url + "/v1/predict",
                data=png(),
                headers={"Content-Type": "image/png"},
                timeout=10,
            )
            slowest = max(slowest, time.monotonic() - started)
            assert response.status_code == 200
    finally:
        for sock in idle:
            sock.close()
        for session in kept:
            session.close()
    # gthread gave each new connection a thread that waited up to 5 s for its first byte.
    assert slowest < 1.0, f"a new request waited {slowest:.2f} s"


def _chunked(port: int, body: bytes, path: str = "/v1/predict") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode() + body


@pytest.mark.parametrize(
    "body",
    [
        png(),  # raw bytes where chunks belong
        b"zz\r\nhello\r\n0\r\n\r\n",  # a size that is not hexadecimal
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello world\r\n0\r\n\r\n",  # more data than the size says
        b"5;ext=\x01\r\nhello\r\n0\r\n\r\n",  # an invalid chunk extension
        b"5\r\nhello\r\n0\r\nBad Trailer\r\n\r\n",  # a trailer that is no header
    ],
    ids=["raw", "not-hex", "negative", "too-long", "bad-extension", "bad-trailer"],
)
def test_malformed_chunked_bodies_get_400(server: Server, body: bytes) -> None:
    status, _ = problem_of(exchange(server.port, _chunked(server.port, body)))
    assert status == 400
    assert server.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({f"X-Header-{i}": "v" for i in range(300)}, 431),
        ({"X-Big": "v" * 20_000}, 431),
        ({"Expect": "something-else"}, 417),
    ],
    ids=["300-headers", "20kb-header", "bad-expect"],
)
def test_header_errors_are_problems(server: Server, headers: dict[str, str], status: int) -> None:
    response = requests.get(server.url + "/healthz", headers=headers, timeout=10)
    assert response.status_code == status
    assert_safe_answer_4xx(response)


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/v2/models/model/infer", {"error"}),
        ("/predictions/model", {"code", "type", "message"}),
        ("/v1/predict", set(ProblemDetail.model_fields)),
    ],
    ids=["v2", "torchserve", "v1"],
)
def test_errors_the_worker_answers_take_the_protocols_shape(
    server: Server, path: str, shape: set[str]
) -> None:
    # Answered by the worker's event loop before Flask sees the request: still in the shape
    # of the protocol the path belongs to (a tritonclient must read {"error": ...}).
    oversized = requests.post(server.url + path, headers={"X-Big": "v" * 20_000}, timeout=10)
    chunked = exchange(server.port, _chunked(server.port, b"zz\r\nhello\r\n0\r\n\r\n", path))
    head, _, body = chunked.partition(b"\r\n\r\n")
    assert oversized.status_code == 431 and set(oversized.json()) == shape
    assert head.split()[1] == b"400" and set(json.loads(body)) == shape
    assert server.get("/readyz").status_code == 200


def test_a_long_request_line_is_a_problem(server: Server) -> None:
    response = requests.get(server.url + "/healthz?" + "a" * 10_000, timeout=10)
    assert response.status_code == 414
    assert_safe_answer_4xx(response)


def assert_safe_answer_4xx(response: requests.Response) -> None:
    """problem+json, nothing leaked (checks.assert_safe_answer, for statuses it does not list)."""
    assert 400 <= response.status_code < 500
    assert response.headers["Content-Type"] == "application/problem+json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    ProblemDetail.model_validate(response.json())


def test_expect_100_continue_is_answered_before_the_body(server: Server) -> None:
    body = png()
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Type: image/png"
        f"\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        assert sock.recv(64) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK"), answer[:100]  # one 100 Continue, not two


ELEVEN_MIB = b"\0" * (11 * 1024 * 1024)


def test_urllib_sees_the_413_of_an_oversized_upload(server: Server) -> None:
    """urllib writes the whole body before it reads: the 413 must wait for it (lingering)."""
    for _ in range(10):
        request = urllib.request.Request(
            server.url + "/v1/predict", data=ELEVEN_MIB, headers={"Content-Type": "image/png"}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 413
        assert refused.value.headers["Content-Type"] == "application/problem+json"
        assert json.loads(refused.value.read())["type"].endswith("/body-too-large")


def test_requests_sees_the_413_of_an_oversized_upload(server: Server) -> None:
    for _ in range(10):
        response = server.post(
            "/v1/predict", data=ELEVEN_MIB, headers={"Content-Type": "image/png"}
        )
        assert response.status_code == 413
        assert_safe_answer(response)


def test_urllib_sees_the_401_of_an_unauthenticated_upload(strict_server: Server) -> None:
    """The strict server needs a key and takes 200,000 bytes: the 401 comes first."""
    for _ in range(10):
        request = urllib.request.Request(
            strict_server.url + "/v1/predict",
            data=ELEVEN_MIB[: 2 * 1024 * 1024],
            headers={"Content-Type": "image/png"},
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == 401


def test_unfinished_requests_are_bounded_per_worker(
    tiny_checkpoint: Path, start_server: StartServer
) -> None:
    """With max_reading_connections=4 on one worker, 4 silent connections make it stop
    accepting: a fifth connection waits in the backlog until their deadline frees the worker,
    while a connection accepted before keeps being served at once."""
    running = start_server(
        tiny_checkpoint,
        CONVSERVE_WORKERS="1",
        CONVSERVE_MAX_READING_CONNECTIONS="4",
        CONVSERVE_CLIENT_HEADER_TIMEOUT_S="2",
    )
    kept = requests.Session()
    assert kept.get(running.url + "/healthz", timeout=10).status_code == 200
    silent = [socket.create_connection(("127.0.0.1", running.port)) for _ in range(4)]
    try:
        time.sleep(0.3)
        started = time.monotonic()
        statuses: list[int] = []
        waiting = threading.Thread(
            target=lambda: statuses.append(running.get("/healthz").status_code)
        )
        waiting.start()
        for _ in range(5):
            assert kept.get(running.url + "/healthz", timeout=10).status_code == 200
        served_kept_after = time.monotonic() - started
        waiting.join(timeout=10)
        waited = time.monotonic() - started
    finally:
        kept.close()
        for sock in silent:
            sock.close()
    assert served_kept_after < 1.0
    assert statuses == [200]
    assert 1.2 < waited < 4.0, waited
