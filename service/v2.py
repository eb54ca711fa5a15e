"""Open Inference Protocol v2 over REST (KServe's required API, as Triton speaks it).

Health, server and model metadata, model readiness and infer, with Triton's binary tensor
data and classification extensions, on the same decode, batching, limits and metrics path as
/v1. Every error is `{"error": "..."}`.
"""

from __future__ import annotations

from http import HTTPStatus

import orjson
import torch
from flask import Blueprint, Flask, Response, request

from service import inference
from service.api import json_response
from service.loading import LoadedModel
from service.openapi import package_version
from service.schemas import (
    V2Error,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
    V2TensorMetadata,
)
from service.uploads import read_body
from service.v2_codec import (
    BINARY_HEADER,
    INPUT_NAME,
    OUTPUT_NAME,
    InferCall,
    encode_outputs,
    parse_infer,
)

v2 = Blueprint("v2", __name__)

EXTENSIONS = ["binary_tensor_data", "classification"]
PLATFORM = "pytorch"


def register_v2(app: Flask) -> None:
    """Mounts the v2 routes (every error under /v2 is `{"error": ...}`: service.problems)."""
    app.register_blueprint(v2)


@v2.get("/v2")
def server_metadata() -> Response:
    """The server's name, version and protocol extensions."""
    document = V2ServerMetadata(name="convserve", version=package_version(), extensions=EXTENSIONS)
    return json_response(document.model_dump())


@v2.get("/v2/health/live")
def live() -> Response:
    """200 while the process serves."""
    return json_response(V2Live(live=True).model_dump())


@v2.get("/v2/health/ready")
def ready() -> Response:
    """200 once the default model serves; 503 with the reason before."""
    found = inference.engine()
    if not found.ready:
        detail = f"Not ready: {found.load_error}"
        return json_response(V2Error(error=detail).model_dump(), HTTPStatus.SERVICE_UNAVAILABLE)
    return json_response(V2Ready(ready=True).model_dump())


@v2.get("/v2/models/<name>")
@v2.get("/v2/models/<name>/versions/<model_version>")
def model_metadata(name: str, model_version: str | None = None) -> Response:
    """The model's input, output and version."""
    model = inference.serving_version(inference.served_model(name), model_version)
    return json_response(metadata(model).model_dump())


@v2.get("/v2/models/<name>/ready")
@v2.get("/v2/models/<name>/versions/<model_version>/ready")
def model_ready(name: str, model_version: str | None = None) -> Response:
    """200 when the model (at that version) serves; 404 unknown, 503 not loaded yet."""
    inference.serving_version(inference.served_model(name), model_version)
    return json_response(V2ModelReady(name=name, ready=True).model_dump())


@v2.post("/v2/models/<name>/infer")
@v2.post("/v2/models/<name>/versions/<model_version>/infer")
def infer(name: str, model_version: str | None = None) -> Response:
    """Classifies the images of the request's one input (see the README's Interoperability)."""
    served = inference.served_model(name)
    inference.serving_version(served, model_version)
    config = inference.settings()
    calls: list[InferCall] = []

    def prepare(model: LoadedModel) -> torch.Tensor:
        # The body is read and parsed inside the hand-off, so a forming batch waits for it.
        body = read_body(request, config)
        calls.append(parse_infer(body, request.headers.get(BINARY_HEADER), config))
        image = calls[0].image
        if image.files is not None:
            return inference.decode_files(image.files, model, config)[0]
        return image.pixels(model)

    answer = inference.predict_pixels(served, prepare)
    parsed = calls[0]
    model = answer.model
    output, binary = encode_outputs(answer.probabilities, model.classes, parsed.output)
    document: dict[str, object] = {"model_name": name, "model_version": model.version}
    if parsed.id is not None:
        document["id"] = parsed.id
    document["outputs"] = [output]
    header = orjson.dumps(document)
    if not binary:
        return Response(header, mimetype="application/json")
    response = Response(header + binary, mimetype="application/octet-stream")
    response.headers[BINARY_HEADER] = str(len(header))
    return response


def metadata(model: LoadedModel) -> V2ModelMetadata:
    """The v2 metadata of one loaded version: an image-file input, a probabilities output."""
    return V2ModelMetadata(
        name=model.name,
        versions=[model.version],
        platform=PLATFORM,
        inputs=[V2TensorMetadata(name=INPUT_NAME, datatype="BYTES", shape=[-1])],
        outputs=[
            V2TensorMetadata(name=OUTPUT_NAME, datatype="FP32", shape=[-1, len(model.classes)])
        ],
    )
