"""TorchServe-compatible routes: GET /ping and POST|PUT /predictions/{name}[/{version}].

Scripts written for TorchServe's image classifier keep working: the body is one raw image
(`curl -T shoe.png`, any or no Content-Type) or multipart file parts, and the answer is
`{label: probability}` for the 5 best classes, one object per image. Errors take TorchServe's
shape, `{"code", "type", "message"}`.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, request

from service import inference
from service.api import json_response
from service.errors import Problem
from service.uploads import read_body, read_uploads

torchserve = Blueprint("torchserve", __name__)

TOP_K = 5  # what TorchServe's image_classifier handler returns


def register_torchserve(app: Flask) -> None:
    """Mounts the routes (their errors take TorchServe's shape: service.problems)."""
    app.register_blueprint(torchserve)


@torchserve.get("/ping")
def ping() -> Response:
    """{"status": "Healthy"} once the default model serves; 503 "Unhealthy" before."""
    healthy = inference.engine().ready
    body = {"status": "Healthy" if healthy else "Unhealthy"}
    return json_response(body, 200 if healthy else 503)


@torchserve.route("/predictions/<name>", methods=["POST", "PUT"])
@torchserve.route("/predictions/<name>/<model_version>", methods=["POST", "PUT"])
def predictions(name: str, model_version: str | None = None) -> Response:
    """{label: probability} of the 5 best classes for each image (one object for one image)."""
    served = inference.served_model(name)
    inference.serving_version(served, model_version)
    config = inference.settings()

    def files() -> list[bytes]:
        if request.mimetype == "multipart/form-data":
            return read_uploads(request, config)
        body = read_body(request, config)
        if not body:
            raise Problem(400, "body-missing", "The request has no body; send an image.")
        return [body]

    answer = inference.predict_pixels(
        served, lambda model: inference.decode_files(files(), model, config)[0]
    )
    classes = answer.model.classes
    scores, indices = answer.probabilities.topk(min(TOP_K, len(classes)), dim=1)
    answers = [
        {classes[i]: score for score, i in zip(row_scores, row_indices, strict=True)}
        for row_scores, row_indices in zip(scores.tolist(), indices.tolist(), strict=True)
    ]
    body = answers[0] if len(answers) == 1 else answers
    return json_response(body)
