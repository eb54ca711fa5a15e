"""Assertions shared by the reliability tests: what every answer of the service must look like."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import requests
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from service.schemas import ProblemDetail, TorchServeError, V2Error

# Anything an error body must never show: stack traces, source files, paths, library names and
# versions. Problem details are written for clients, not operators (operators read the logs).
LEAK = re.compile(
    r"Traceback|File \"|\.py\b|/usr/|/tmp/|/work/|/home/|site-packages|\bPIL\b|Pillow|"
    r"libjpeg|libpng|libtiff|libwebp|zlib|Werkzeug|werkzeug|gunicorn|flask|Flask|torch|"
    r"pydantic|Python|\b\d+\.\d+\.\d+\b",
)
ALLOWED_ERRORS = frozenset({400, 401, 404, 405, 413, 415, 422})


# Error shapes by path prefix: each protocol answers its errors in its own shape.
PROTOCOL_ERRORS: tuple[tuple[str, type[BaseModel]], ...] = (
    ("/v2", V2Error),
    ("/predictions/", TorchServeError),
    ("/ping", TorchServeError),
)


def assert_safe_answer(response: requests.Response) -> None:
    """A 200, or a documented 4xx in the path's error shape that leaks nothing; nosniff always.

    The shape is problem+json, or under /v2 and TorchServe's routes their own JSON errors.
    """
    assert response.status_code == 200 or response.status_code in ALLOWED_ERRORS, (
        response.status_code,
        response.text[:300],
    )
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert not re.search(r"\d", response.headers.get("Server", "")), response.headers["Server"]
    if response.status_code != 200:
        path = urlsplit(response.url).path
        shape = next((s for prefix, s in PROTOCOL_ERRORS if path.startswith(prefix)), None)
        if shape is None:
            assert response.headers["Content-Type"] == "application/problem+json"
            ProblemDetail.model_validate(response.json())
        else:
            assert response.headers["Content-Type"] == "application/json"
            shape.model_validate(response.json())
        leak = LEAK.search(response.text)
        assert leak is None, f"error body shows {leak.group(0)!r}: {response.text}"


# Log lines that mean the server failed, not the client: crashes and worker timeout kills.
SERVER_FAULTS = re.compile(
    r"unhandled error|Traceback|WORKER TIMEOUT|Worker \(pid:\d+\) was sent|"
    r"Exception in worker process|Exception during worker exit"
)


def scrape(
    url: str, headers: dict[str, str] | None = None
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics at `url`, keyed by (name, labels)."""
    response = requests.get(url + "/metrics", headers=headers, timeout=10)
    response.raise_for_status()
    text = response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    """The value of one sample (0.0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
