"""Prometheus metrics (the README lists them), correct across gunicorn worker processes.

gunicorn_conf points PROMETHEUS_MULTIPROC_DIR at a wiped directory before any worker starts;
each worker then writes its samples to files there and /metrics merges them all.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

REQUESTS = Counter(
    "convserve_requests_total",
    "HTTP requests answered.",
    ["endpoint", "method", "status", "model"],
)
REQUEST_DURATION = Histogram(
    "convserve_request_duration_seconds",
    "Time from request to response.",
    ["endpoint"],
    buckets=_LATENCY_BUCKETS,
)
DECODE_DURATION = Histogram(
    "convserve_image_decode_duration_seconds",
    "Decoding and preprocessing one image.",
    buckets=_LATENCY_BUCKETS,
)
INFERENCE_DURATION = Histogram(
    "convserve_inference_duration_seconds",
    "One forward pass of the model.",
    ["model"],
    buckets=_LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "convserve_batch_size", "Images per forward pass.", ["model"], buckets=_BATCH_BUCKETS
)
PREDICTIONS = Counter("convserve_predictions_total", "Predicted top-1 labels.", ["label", "model"])
INFLIGHT = Gauge(
    "convserve_inflight_requests", "Requests being handled.", multiprocess_mode="livesum"
)
MODEL_INFO = Gauge(
    "convserve_model_info",
    "The model being served (value 1).",
    ["name", "version"],
    multiprocess_mode="livemax",
)
EXPLAIN_DURATION = Histogram(
    "convserve_explain_duration_seconds",
    "One POST /v1/explain: prediction, feature maps, Grad-CAM and their encoding.",
    buckets=_LATENCY_BUCKETS,
)
SHED = Counter("convserve_shed_total", "Requests refused with 503 because the queue was full.")
REQUEST_READ_ERRORS = Counter(
    "convserve_request_read_errors_total",
    "Connections the worker's event loop answered or closed while their request was still "
    "arriving: idle (nothing sent), header_timeout, body_timeout (408), too_large (413/431), "
    "malformed (400).",
    ["reason"],
)
RELOADS = Counter(
    "convserve_model_reloads_total", "Checkpoint (re)load attempts by outcome.", ["outcome"]
)


def render_metrics() -> tuple[bytes, str]:
    """The exposition text (merged over all workers in multiprocess mode) and its content type."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
