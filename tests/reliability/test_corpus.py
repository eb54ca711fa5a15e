"""Hundreds of malformed and unusual files POSTed to the running server.

Every answer is a 200 or a documented 4xx that leaks nothing, the server logs no crash, no
worker dies or is replaced, and the server is ready afterwards.
"""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.server import Server
from tests.reliability import corpus, hostile
from tests.reliability.checks import SERVER_FAULTS, assert_safe_answer

CORPUS = corpus.build()


def _log_size(server: Server) -> int:
    return len(server.log_path.read_text(errors="replace"))


def _new_log(server: Server, offset: int) -> str:
    return server.log_path.read_text(errors="replace")[offset:]


def test_corpus_gets_only_200_or_documented_4xx(server: Server) -> None:
    pids, log_offset = server.worker_pids(), _log_size(server)
    local = threading.local()

    def post(item: tuple[str, bytes]) -> tuple[str, int]:
        name, data = item
        if not hasattr(local, "session"):
            local.session = requests.Session()
        response = local.session.post(
            server.url + "/v1/predict",
            data=data,
            headers={"Content-Type": "application/octet-stream"},
            timeout=30,
        )
        try:
            assert_safe_answer(response)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
        return name, response.status_code

    with ThreadPoolExecutor(4) as pool:
        answers = dict(pool.map(post, sorted(CORPUS.items())))

    statuses = Counter(answers.values())
    print(f"{len(answers)} corpus files posted: {dict(statuses)}")
    assert len(answers) >= 300
    assert statuses[200] > 0 and statuses[422] > 0 and statuses[413] > 0
    assert answers["empty"] == 400
    for name in CORPUS:
        if name.startswith("valid/") or name in hostile.samples():
            assert answers[name] == 200, name
    assert server.get("/readyz").status_code == 200
    assert server.worker_pids() == pids
    faults = SERVER_FAULTS.findall(_new_log(server, log_offset))
    assert not faults, faults


def test_corpus_in_batches(server: Server) -> None:
    """The same files through multipart and JSON batches: one bad image fails its request."""
    names = sorted(CORPUS)
    with requests.Session() as session:
        for start in range(0, len(names), 8):
            chunk = [CORPUS[name] for name in names[start : start + 8]]
            files = [("file", (f"{i}.bin", data)) for i, data in enumerate(chunk)]
            assert_safe_answer(session.post(server.url + "/v1/predict", files=files, timeout=30))
            images = [base64.b64encode(data).decode() for data in chunk]
            response = session.post(server.url + "/v1/predict", json={"images": images}, timeout=30)
            assert_safe_answer(response)
    assert server.get("/readyz").status_code == 200


def test_a_spinning_decoder_is_cut_off_by_the_server(server: Server) -> None:
    """A 1.3 MB progressive JPEG that costs libjpeg minutes gets a 422 after the default 2 s."""
    pids = server.worker_pids()
    started = time.monotonic()
    response = server.post(
        "/v1/predict",
        data=hostile.spinning_jpeg(),
        headers={"Content-Type": "image/jpeg"},
    )
    elapsed = time.monotonic() - started
    assert_safe_answer(response)
    assert response.status_code == 422
    assert response.json()["type"].endswith("/decode-timeout")
    assert elapsed < 15, f"answered after {elapsed:.1f} s"
    assert server.get("/readyz").status_code == 200
    assert server.worker_pids() == pids
    assert "image decode cut off" in server.log_path.read_text(errors="replace")
