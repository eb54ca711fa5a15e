"""The HTTP endpoints: parse and validate, then delegate to the Engine."""

from __future__ import annotations

import time
from typing import Any

import orjson
import torch
from flask import Blueprint, Response, current_app, g, request

from service import metrics
from service.config import Settings
from service.engine import (
    Engine,
    LoadedModel,
    NotReady,
    Overloaded,
    PendingPrediction,
    PredictionBatch,
)
from service.errors import Problem
from service.imaging import decode_image
from service.uploads import read_uploads

api = Blueprint("api", __name__)

_MAX_TOP_K = 1000
_DEFAULT_TOP_K = 5


def _engine() -> Engine:
    engine: Engine = current_app.extensions["convserve.engine"]
    return engine


def _settings() -> Settings:
    settings: Settings = current_app.extensions["convserve.settings"]
    return settings


def _serving_model(engine: Engine) -> LoadedModel:
    """The model serving now; a 503 problem with Retry-After before one is loaded."""
    model = engine.model
    if model is None:
        raise Problem(503, "not-ready", "The model is not loaded yet.", {"Retry-After": "1"})
    return model


def json_response(body: Any, status: int = 200) -> Response:
    """A UTF-8 JSON response encoded with orjson."""
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


@api.post("/v1/predict")
def predict() -> Response:
    """Classifies every uploaded image; see DESIGN.md for the body types and the answer."""
    settings, engine = _settings(), _engine()
    top_k = _query_top_k()
    model = _serving_model(engine)
    with engine.request():
        files = read_uploads(request, settings)
        decode_started = time.perf_counter()
        pixels = torch.stack([decode_upload(data, model, settings) for data in files])
        decode_s = time.perf_counter() - decode_started
        pending = submit_pixels(engine, model, pixels)
    batch = wait_for(pending)
    predictions = [prediction_body(row, model.classes, top_k) for row in batch.probabilities]
    for prediction in predictions:
        metrics.PREDICTIONS.labels(prediction["label"]).inc()
    return json_response(
        {
            "model": {"name": model.name, "version": model.version},
            "predictions": predictions,
            "timing_ms": {
                "decode": _ms(decode_s),
                "queue": _ms(batch.queue_s),
                "inference": _ms(batch.inference_s),
                "total": _ms(time.perf_counter() - g.started),
            },
        }
    )


@api.get("/v1/model")
def model_info() -> Response:
    """Everything about the model being served."""
    return json_response(describe_model(_serving_model(_engine()), _settings()))


@api.get("/healthz")
def healthz() -> Response:
    """200 while the process serves."""
    return json_response({"status": "ok"})


@api.get("/readyz")
def readyz() -> Response:
    """200 once the model is loaded and warmed up; 503 with the reason before."""
    engine = _engine()
    model = engine.model
    if model is None:
        return json_response({"status": "not ready", "detail": engine.load_error}, 503)
    return json_response({"status": "ready", "model_version": model.version})


@api.get("/metrics")
def metrics_endpoint() -> Response:
    """Prometheus exposition merged over all gunicorn workers."""
    body, content_type = metrics.render_metrics()
    return Response(body, content_type=content_type)


@api.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3.1 document generated from the pydantic schemas."""
    return json_response(current_app.extensions["convserve.openapi"])


def describe_model(model: LoadedModel, settings: Settings) -> dict[str, Any]:
    """The /v1/model document."""
    checkpoint = model.checkpoint
    config = checkpoint.config
    pre = checkpoint.preprocessing
    return {
        "name": model.name,
        "version": model.version,
        "classes": model.classes,
        "input": {"channels": config.in_channels, "height": config.height, "width": config.width},
        "normalization": {
            "mode": pre.mode,
            "resample": pre.resample,
            "background": pre.background,
            "mean": list(pre.mean),
            "std": list(pre.std),
        },
        "architecture": {
            "config": config.to_dict(),
            "layers": [
                {
                    "name": layer.name,
                    "kind": layer.kind,
                    "output_shape": list(layer.output_shape),
                    "parameters": layer.parameters,
                }
                for layer in model.summary.layers
            ],
            "parameters": model.summary.parameters,
        },
        "training": checkpoint.training,
        "precision": settings.precision,
    }


def submit_pixels(engine: Engine, model: LoadedModel, pixels: torch.Tensor) -> PendingPrediction:
    """Queues (N, C, H, W) uint8 pixels for a forward pass; a 503 problem when the queue is full."""
    try:
        return engine.submit(model, pixels)
    except Overloaded as exc:
        metrics.SHED.inc()
        raise Problem(
            503, "overloaded", f"The server is at capacity: {exc}.", {"Retry-After": "1"}
        ) from exc


def wait_for(pending: PendingPrediction) -> PredictionBatch:
    """The probabilities of queued images; a 503 problem past the request timeout."""
    try:
        return pending.result()
    except NotReady as exc:
        raise Problem(503, "overloaded", str(exc), {"Retry-After": "1"}) from exc


def decode_upload(data: bytes, model: LoadedModel, settings: Settings) -> torch.Tensor:
    """One uploaded file -> the model's uint8 (C, H, W) input, timed into the decode histogram."""
    started = time.perf_counter()
    pixels = decode_image(
        data,
        model.checkpoint.preprocessing,
        settings.max_image_pixels,
        settings.decode_timeout_ms,
    )
    metrics.DECODE_DURATION.observe(time.perf_counter() - started)
    return pixels


def _query_top_k() -> int:
    """top_k from the query string (5 without one); a 400 for any other query parameter.

    A misspelt parameter (`topk=3`) must not be ignored. Most requests carry no query string
    and skip parsing one; `args.get` of a missing key is avoided too (werkzeug raises and
    catches an HTTPException inside it: 1.6 us against 0.05 us for the `in` test).
    """
    if not request.query_string:
        return _DEFAULT_TOP_K
    args = request.args
    unknown = sorted(set(args) - {"top_k"})
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise Problem(
            400,
            "unknown-query-parameter",
            f"Unknown query parameter {names}; the only one is top_k.",
        )
    return _parse_top_k(args["top_k"]) if "top_k" in args else _DEFAULT_TOP_K


def _parse_top_k(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= _MAX_TOP_K:
        raise Problem(
            400, "bad-top-k", f"top_k must be an integer from 1 to {_MAX_TOP_K}, got {raw!r}."
        )
    return value


def prediction_body(row: list[float], classes: list[str], top_k: int) -> dict[str, Any]:
    """One image's answer: best class, the top_k classes and every class's probability."""
    ranked = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:top_k]
    best = ranked[0]
    return {
        "label": classes[best],
        "index": best,
        "score": row[best],
        "top_k": [{"label": classes[i], "index": i, "score": row[i]} for i in ranked],
        "scores": dict(zip(classes, row, strict=True)),
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
