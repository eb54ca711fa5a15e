"""The OpenAPI paths of the Open Inference Protocol v2 and TorchServe-compatible routes."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from pydantic import BaseModel

from service.openapi import MODEL_NAME_PARAMETER, add_schema, ref
from service.schemas import (
    TorchServeError,
    V2Error,
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
)

_SCHEMAS: tuple[type[BaseModel], ...] = (
    V2Error,
    V2Live,
    V2Ready,
    V2ModelReady,
    V2ServerMetadata,
    V2ModelMetadata,
    V2InferRequest,
    V2InferResponse,
    TorchServeError,
)
_VERSION_PARAMETER = {
    "name": "version",
    "in": "path",
    "required": True,
    "description": "The checkpoint's content hash (any other version is a 404).",
    "schema": {"type": "string"},
}
_BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}


def add_protocol_paths(spec: APISpec, secured: bool) -> None:
    """Adds the /v2 and TorchServe paths (and their schemas) to `spec`."""
    for model in _SCHEMAS:
        add_schema(spec, model)
    v2_errors = {
        str(status): {
            "description": "An error.",
            "content": {"application/json": _schema("V2Error")},
        }
        for status in (400, 404, 413, 503, *((401,) if secured else ()))
    }
    spec.path(
        path="/v2",
        operations={"get": _get("Server name, version, extensions.", "V2ServerMetadata")},
    )
    spec.path(
        path="/v2/health/live", operations={"get": _get("200 while the process serves.", "V2Live")}
    )
    ready = _get("200 once the default model serves; 503 before.", "V2Ready")
    ready["responses"]["503"] = v2_errors["503"]
    spec.path(path="/v2/health/ready", operations={"get": ready})
    for base, parameters in (
        ("/v2/models/{name}", [MODEL_NAME_PARAMETER]),
        ("/v2/models/{name}/versions/{version}", [MODEL_NAME_PARAMETER, _VERSION_PARAMETER]),
    ):
        for suffix, summary, schema in (
            ("", "The model's input, output and version.", "V2ModelMetadata"),
            ("/ready", "200 when the model serves (at that version).", "V2ModelReady"),
        ):
            operation = _get(summary, schema, secured)
            operation["parameters"] = parameters
            operation["responses"].update(
                {s: v2_errors[s] for s in v2_errors if s in ("401", "404", "503")}
            )
            spec.path(path=base + suffix, operations={"get": operation})
        spec.path(path=base + "/infer", operations={"post": _infer(parameters, v2_errors, secured)})
    _add_torchserve_paths(spec, secured)


def _infer(
    parameters: list[dict[str, Any]], errors: dict[str, Any], secured: bool
) -> dict[str, Any]:
    operation = _get(
        "Classify the images of the one input `image`: BYTES image files (base64 in JSON, raw "
        "in binary), or a UINT8/FP32 pixel tensor. Triton's binary tensor data extension: the "
        "JSON header's length in Inference-Header-Content-Length, then the binary tensors.",
        "V2InferResponse",
        secured,
    )
    operation["parameters"] = [
        *parameters,
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "description": "Length of the JSON header when binary tensors follow it.",
            "schema": {"type": "integer", "minimum": 1},
        },
    ]
    operation["requestBody"] = {
        "required": True,
        "content": {
            "application/json": _schema("V2InferRequest"),
            "application/octet-stream": _BINARY_BODY,
        },
    }
    operation["responses"]["200"]["content"]["application/octet-stream"] = _BINARY_BODY
    operation["responses"].update(errors)
    return operation


def _add_torchserve_paths(spec: APISpec, secured: bool) -> None:
    error = {
        "description": "An error.",
        "content": {"application/json": _schema("TorchServeError")},
    }
    ping_ok = {
        "description": "Healthy or not.",
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": {"status": {"type": "string"}}}
            }
        },
    }
    spec.path(
        path="/ping",
        operations={
            "get": {
                "summary": 'TorchServe health: {"status": "Healthy"}.',
                "responses": {"200": ping_ok, "503": ping_ok},
            }
        },
    )
    scores = {
        "description": "{label: probability} for the 5 best classes (a list for several images).",
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"type": "object", "additionalProperties": {"type": "number"}},
                        {
                            "type": "array",
                            "items": {"type": "object", "additionalProperties": {"type": "number"}},
                        },
                    ]
                }
            }
        },
    }
    for path, parameters in (
        ("/predictions/{name}", [MODEL_NAME_PARAMETER]),
        ("/predictions/{name}/{version}", [MODEL_NAME_PARAMETER, _VERSION_PARAMETER]),
    ):
        operations = {}
        for method in ("post", "put"):
            operation: dict[str, Any] = {
                "summary": "TorchServe-compatible classification: a raw image or multipart files.",
                "parameters": parameters,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": _BINARY_BODY,
                        "image/*": _BINARY_BODY,
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {"data": {"type": "string", "format": "binary"}},
                                "required": ["data"],
                            }
                        },
                    },
                },
                "responses": {
                    "200": scores,
                    **{str(s): error for s in (400, 404, 413, 503, *((401,) if secured else ()))},
                },
            }
            if secured:
                operation["security"] = [{"bearer": []}]
            operations[method] = operation
        spec.path(path=path, operations=operations)


def _get(summary: str, schema: str, secured: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {"description": schema, "content": {"application/json": _schema(schema)}}
        },
    }
    if secured:
        operation["security"] = [{"bearer": []}]
    return operation


def _schema(name: str) -> dict[str, Any]:
    return {"schema": ref(name)}
