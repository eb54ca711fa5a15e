"""What every protocol's predict route shares: find the model, decode, run, count.

A route parses its own request format, then calls `predict_pixels` with a `prepare` that turns
its input into pixels for the version that will run them (`decode_files` for encoded image
files) and formats the `Inference` it gets back. Failures are raised as `Problem`s; each
protocol renders them in its own error shape (service.errors).
"""

from __future__ import annotations

import time

import torch
from flask import current_app, g

from models.transforms import Form
from service import metrics
from service.config import Settings
from service.engine import Engine, Inference, ModelUnavailable, Overloaded, Prepare, ServedModel
from service.errors import Problem
from service.imaging import decode_upload
from service.loading import LoadedModel

_RETRY = {"Retry-After": "1"}


def engine() -> Engine:
    """The Engine of this worker."""
    found: Engine = current_app.extensions["convserve.engine"]
    return found


def settings() -> Settings:
    """The Settings the app was built with."""
    found: Settings = current_app.extensions["convserve.settings"]
    return found


def served_model(name: str | None = None) -> ServedModel:
    """The model served as `name` (the default model for None); a 404 Problem for no such name.

    Also labels this request's metrics with the model's name.
    """
    found = find_model(engine(), name)
    g.model_name = found.name
    return found


def find_model(models: Engine, name: str | None) -> ServedModel:
    """The model `models` serves as `name` (the default model for None); Problem 404 for no
    such name, 503 when no default model is loaded yet."""
    found = models.default if name is None else models.get(name)
    if found is None:
        if name is None:
            raise Problem(503, "not-ready", "No default model is loaded yet.", _RETRY)
        raise Problem(404, "unknown-model", f"There is no model named {name!r}.")
    return found


def serving_version(served: ServedModel, version: str | None = None) -> LoadedModel:
    """The version of `served` serving now; 503 before one loads, 404 when `version` differs."""
    model = served.current
    if model is None:
        raise Problem(
            503, "not-ready", f"Model {served.name!r} is not loaded: {served.load_error}", _RETRY
        )
    if version is not None and version != model.version:
        raise Problem(
            404,
            "unknown-version",
            f"Model {served.name!r} has no version {version!r}; it serves {model.version!r}.",
        )
    return model


def decode_files(
    files: list[bytes], model: LoadedModel, settings: Settings
) -> tuple[torch.Tensor, list[Form]]:
    """Uploaded image files -> (N, C, H, W) uint8 pixels for `model`, in the order given, and
    the form each came in ('photo' when the model's photo conversion ran on it).

    Raises Problem 413 (too many pixels) or 422 (not a readable image) for the first bad file.
    """
    decoded, forms = [], []
    for data in files:
        started = time.perf_counter()
        pixels, form = decode_upload(
            data,
            model.checkpoint.preprocessing,
            settings.max_image_pixels,
            settings.decode_timeout_ms,
        )
        metrics.DECODE_DURATION.observe(time.perf_counter() - started)
        decoded.append(pixels)
        forms.append(form)
    return torch.stack(decoded), forms


def predict_pixels(served: ServedModel, prepare: Prepare) -> Inference:
    """Runs the pixels `prepare(model)` makes for the serving version; counts the top-1 labels.

    `prepare` gets the version that will run them (decode for its input size); the batcher
    waits for it while it runs. Raises Problem 503 with Retry-After when the model is not
    loaded, the queue is full or no forward pass ran within the request timeout.
    """
    try:
        inference = served.infer(prepare)
    except ModelUnavailable as exc:
        raise Problem(503, "not-ready", f"{exc}.", _RETRY) from exc
    except Overloaded as exc:
        metrics.SHED.inc()
        raise Problem(503, "overloaded", f"The server is at capacity: {exc}.", _RETRY) from exc
    except TimeoutError as exc:
        raise Problem(
            503, "timeout", "No forward pass ran within the request timeout.", _RETRY
        ) from exc
    classes = inference.model.classes
    for index in inference.probabilities.argmax(dim=1).tolist():
        metrics.PREDICTIONS.labels(classes[index], served.name).inc()
    return inference
