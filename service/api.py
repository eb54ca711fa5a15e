"""The /v1 HTTP endpoints and the probes: parse and validate, then delegate to the Engine."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
import torch
from flask import Blueprint, Response, current_app, g, request
from pydantic import ValidationError
from werkzeug.datastructures import MultiDict

from models.transforms import Form
from service import metrics
from service.batch_plan import BatchingPlan
from service.config import Settings
from service.engine import ServedModel
from service.errors import Problem
from service.inference import (
    decode_files,
    engine,
    predict_pixels,
    served_model,
    serving_version,
    settings,
)
from service.loading import LoadedModel
from service.schemas import (
    Architecture,
    BatchingInfo,
    InputShape,
    Layer,
    ModelInfo,
    ModelList,
    Normalization,
    PredictQuery,
    PreprocessingInfo,
    ServedModelEntry,
)
from service.uploads import read_uploads

api = Blueprint("api", __name__)


def json_response(body: Any, status: int = 200) -> Response:
    """A UTF-8 JSON response encoded with orjson."""
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


@api.post("/v1/predict")
def predict() -> Response:
    """Classifies every uploaded image with the default model (see the README for the bodies)."""
    return _predict(None)


@api.post("/v1/models/<name>/predict")
def predict_named(name: str) -> Response:
    """Classifies every uploaded image with the model served as `name`."""
    return _predict(name)


def _predict(name: str | None) -> Response:
    top_k = top_k_from(request.query_string, request.args)
    served = served_model(name)
    config = settings()

    def read_files() -> list[bytes]:
        return read_uploads(request, config)

    return json_response(predict_answer(served, read_files, top_k, config, g.started))


def predict_answer(
    served: ServedModel,
    read_files: Callable[[], list[bytes]],
    top_k: int,
    config: Settings,
    started: float,
) -> dict[str, Any]:
    """The /v1 predict document for the image files `read_files()` returns, classified by
    `served`, its total time counted from `started` (perf_counter); Problem for anything that
    stops it (the model's readiness is checked before anything is read)."""
    serving_version(served)  # a 503 before anything is read when it cannot answer
    forms: list[Form] = []

    def prepare(model: LoadedModel) -> torch.Tensor:
        # The body is read inside the hand-off too, so a batch that is forming waits for it.
        pixels, forms[:] = decode_files(read_files(), model, config)
        return pixels

    inference = predict_pixels(served, prepare)
    model = inference.model
    rows = inference.probabilities.tolist()
    return {
        "model": {"name": model.name, "version": model.version},
        "predictions": [
            prediction_body(row, model.classes, top_k, form)
            for row, form in zip(rows, forms, strict=True)
        ],
        "timing_ms": {
            "decode": _ms(inference.decode_s),
            "queue": _ms(inference.queue_s),
            "inference": _ms(inference.inference_s),
            "total": _ms(time.perf_counter() - started),
        },
    }


@api.get("/v1/model")
def model_info() -> Response:
    """Everything about the default model."""
    model = serving_version(served_model())
    return json_response(describe_model(model, settings()).model_dump(mode="json"))


@api.get("/v1/models")
def list_models() -> Response:
    """Every model found, by name, with the version serving now."""
    found = engine()
    default = found.default
    entries = [
        ServedModelEntry(
            name=name,
            version=served.current.version if served.current else None,
            ready=served.current is not None,
            default=served is default,
            detail=served.load_error,
        )
        for name, served in sorted(found.models.items())
    ]
    return json_response(ModelList(models=entries).model_dump(mode="json"))


@api.get("/v1/models/<name>")
def named_model_info(name: str) -> Response:
    """Everything about the model served as `name`."""
    model = serving_version(served_model(name))
    return json_response(describe_model(model, settings()).model_dump(mode="json"))


@api.get("/healthz")
def healthz() -> Response:
    """200 while the process serves."""
    return json_response({"status": "ok"})


@api.get("/readyz")
def readyz() -> Response:
    """200 once the default model is loaded and warmed up; 503 with the reason before."""
    found = engine()
    model = found.model
    if model is None:
        return json_response({"status": "not ready", "detail": found.load_error}, 503)
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


def describe_model(model: LoadedModel, settings: Settings) -> ModelInfo:
    """The /v1/model document of one loaded version."""
    checkpoint = model.checkpoint
    config = checkpoint.config
    pre = checkpoint.preprocessing
    return ModelInfo(
        name=model.name,
        version=model.version,
        classes=model.classes,
        input=InputShape(channels=config.in_channels, height=config.height, width=config.width),
        normalization=Normalization(
            mode=pre.mode,
            resample=pre.resample,
            background=pre.background,
            mean=list(pre.mean),
            std=list(pre.std),
        ),
        architecture=Architecture(
            config=config.to_dict(),
            layers=[
                Layer(
                    name=layer.name,
                    kind=layer.kind,
                    output_shape=list(layer.output_shape),
                    parameters=layer.parameters,
                )
                for layer in model.summary.layers
            ],
            parameters=model.summary.parameters,
        ),
        preprocessing=PreprocessingInfo.model_validate(pre.describe()),
        training=checkpoint.training,
        precision=settings.precision,
        batching=_batching_info(model.batching) if model.batching else None,
    )


def _batching_info(plan: BatchingPlan) -> BatchingInfo:
    return BatchingInfo(
        max_batch_size=plan.max_batch_size,
        ms_per_image={str(size): round(ms, 4) for size, ms in plan.ms_per_image.items()},
        reason=plan.reason,
    )


_DEFAULT_TOP_K: int = PredictQuery.model_fields["top_k"].default
_TOP_K_BOUNDS = PredictQuery.model_json_schema()["properties"]["top_k"]


def top_k_from(query_string: bytes, args: MultiDict[str, str]) -> int:
    """top_k from the query (PredictQuery's default without one); 400 for anything else.

    A misspelt parameter (`topk=3`) must not be ignored. Most requests carry no query string
    and skip parsing one.
    """
    if not query_string:
        return _DEFAULT_TOP_K
    unknown = sorted(set(args) - set(PredictQuery.model_fields))
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise Problem(
            400,
            "unknown-query-parameter",
            f"Unknown query parameter {names}; the only one is top_k.",
        )
    try:
        return PredictQuery.model_validate(args.to_dict()).top_k
    except ValidationError as exc:
        raise Problem(400, "bad-top-k", _top_k_error(args.get("top_k", ""))) from exc


def _top_k_error(raw: str) -> str:
    low, high = _TOP_K_BOUNDS["minimum"], _TOP_K_BOUNDS["maximum"]
    return f"top_k must be an integer from {low} to {high}, got {raw!r}."


def prediction_body(row: list[float], classes: list[str], top_k: int, form: Form) -> dict[str, Any]:
    """One image's answer: best class, the top_k classes, every class's probability and the
    form the image came in."""
    ranked = sorted(range(len(row)), key=row.__getitem__, reverse=True)[:top_k]
    best = ranked[0]
    return {
        "label": classes[best],
        "index": best,
        "score": row[best],
        "top_k": [{"label": classes[i], "index": i, "score": row[i]} for i in ranked],
        "scores": dict(zip(classes, row, strict=True)),
        "preprocessing": form,
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
