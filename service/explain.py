"""POST /v1/explain: one image's prediction, feature maps, first-layer kernels and Grad-CAM.

The prediction goes through the engine exactly like /v1/predict; the explanation then walks
the shared serving module in the request thread, in float32, with its own input tensor
(models.explain says why that is thread-safe). A per-worker semaphore bounds how many run at
once, and so how much of a worker's CPU explain traffic can take from the predictions.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch
from flask import Blueprint, Flask, Response, current_app, g, request
from pydantic import ValidationError

from models.cnn import CNN
from models.explain import Explanation, explain
from models.transforms import Form
from service import metrics
from service.api import json_response, prediction_body
from service.config import Settings
from service.engine import ServedModel
from service.errors import Problem
from service.inference import decode_files, predict_pixels, served_model, serving_version, settings
from service.loading import LoadedModel
from service.pictures import (
    Picture,
    heat_colours,
    heat_overlay,
    input_picture,
    png_data_url,
    scaled_kernels,
    scaled_maps,
)
from service.schemas import ExplainQuery
from service.uploads import read_uploads

explain_api = Blueprint("explain", __name__)

_SLOTS = "convserve.explain_slots"


def init_explain(app: Flask, settings: Settings) -> None:
    """Registers the route and this worker's limit on concurrent explains."""
    app.extensions[_SLOTS] = threading.BoundedSemaphore(settings.max_concurrent_explains)
    app.register_blueprint(explain_api)


@explain_api.post("/v1/explain")
def explain_route() -> Response:
    """Prediction plus feature maps, kernels and Grad-CAM for exactly one uploaded image."""
    config = settings()
    query = _query()
    served = served_model()
    serving_version(served)  # a 503 before anything is read when it cannot answer
    slots: threading.BoundedSemaphore = current_app.extensions[_SLOTS]
    if not slots.acquire(blocking=False):
        raise Problem(
            503,
            "too-many-explains",
            f"This worker is already running {config.max_concurrent_explains} explains; "
            "retry shortly.",
            {"Retry-After": "1"},
        )
    started = time.perf_counter()
    try:
        return _explain(config, served, query)
    finally:
        slots.release()
        metrics.EXPLAIN_DURATION.observe(time.perf_counter() - started)


def _explain(config: Settings, served: ServedModel, query: ExplainQuery) -> Response:
    decoded: list[tuple[torch.Tensor, Form]] = []
    targets: list[int | None] = []

    def prepare(model: LoadedModel) -> torch.Tensor:
        # The target is checked against the version that will run, before the body is read.
        targets.append(None if query.target is None else _target(query.target, model.classes))
        files = read_uploads(request, config)
        if len(files) != 1:
            raise Problem(
                400, "one-image", f"/v1/explain takes exactly one image; {len(files)} were sent."
            )
        pixels, forms = decode_files(files, model, config)
        decoded.append((pixels[0], forms[0]))
        return pixels

    inference = predict_pixels(served, prepare)
    model = inference.model
    target = targets[0]
    pixels, form = decoded[0]
    prediction = prediction_body(
        inference.probabilities[0].tolist(), model.classes, query.top_k, form
    )
    explain_started = time.perf_counter()
    explanation = explain(
        _cnn(model),
        _float_input(model, pixels),
        prediction["index"] if target is None else target,
    )
    encode_started = time.perf_counter()
    body = _body(model, pixels, prediction, explanation)
    done = time.perf_counter()
    body["timing_ms"] = {
        "decode": _ms(inference.decode_s),
        "queue": _ms(inference.queue_s),
        "inference": _ms(inference.inference_s),
        "explain": _ms(encode_started - explain_started),
        "encode": _ms(done - encode_started),
        "total": _ms(done - g.started),
    }
    return json_response(body)


def _query() -> ExplainQuery:
    try:
        return ExplainQuery.model_validate(request.args.to_dict())
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "query"
        raise Problem(400, "bad-query", f"Query parameter {where}: {error['msg']}.") from exc


def _target(raw: str, classes: list[str]) -> int:
    """A class label, or its index, -> the index; a 400 naming the classes otherwise."""
    if raw in classes:
        return classes.index(raw)
    if raw.isdecimal() and int(raw) < len(classes):
        return int(raw)
    raise Problem(
        400,
        "bad-target",
        f"target {raw!r} is neither a class label nor an index from 0 to {len(classes) - 1}; "
        f"the classes are {', '.join(classes)}.",
    )


def _cnn(model: LoadedModel) -> CNN:
    module = model.module
    if not isinstance(module, CNN):
        raise TypeError(f"explain needs a models.cnn.CNN, the engine serves {type(module)}")
    return module


def _float_input(model: LoadedModel, pixels: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) float32 normalised input, the same multiply-add as Engine.forward.

    Built here, outside the batcher's inference mode, so autograd can differentiate it.
    """
    return (pixels.to(torch.float32) * model.scale + model.shift).unsqueeze(0)


def _body(
    model: LoadedModel, pixels: torch.Tensor, prediction: dict[str, Any], explanation: Explanation
) -> dict[str, Any]:
    cam = explanation.gradcam
    probabilities = prediction["scores"]
    label = model.classes[cam.target]
    return {
        "model": {"name": model.name, "version": model.version},
        "prediction": prediction,
        "input": {
            "image": input_picture(pixels),
            "channels": pixels.shape[0],
            "height": pixels.shape[1],
            "width": pixels.shape[2],
        },
        "layers": [
            {
                "name": layer.name,
                "kind": layer.kind,
                "block": layer.block,
                "shape": list(layer.maps.shape),
                "maps": [_picture(p) for p in scaled_maps(layer.maps)],
            }
            for layer in explanation.layers
        ],
        "kernels": {
            "layer": explanation.kernel_layer,
            "shape": list(explanation.kernels.shape),
            "maps": [
                dict(_picture(picture), values=kernel.tolist())
                for picture, kernel in zip(
                    scaled_kernels(explanation.kernels), explanation.kernels, strict=True
                )
            ],
        },
        "gradcam": {
            "target": {"label": label, "index": cam.target, "score": probabilities[label]},
            "layer": cam.layer,
            "empty": cam.empty,
            "heatmap": png_data_url(heat_colours(cam.heatmap)),
            "overlay": png_data_url(heat_overlay(cam.heatmap, pixels)),
        },
    }


def _picture(picture: Picture) -> dict[str, Any]:
    return {"image": picture.image, "min": picture.low, "max": picture.high}


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
