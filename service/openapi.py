"""The OpenAPI 3.1 document, assembled by apispec from the pydantic models in service.schemas."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from apispec import APISpec
from pydantic import BaseModel

from service.config import Settings
from service.errors import PROBLEM_CONTENT_TYPE
from service.schemas import (
    ExplainResponse,
    Health,
    ModelInfo,
    PredictJSONRequest,
    PredictResponse,
    ProblemDetail,
)

_SCHEMAS: tuple[type[BaseModel], ...] = (
    PredictJSONRequest,
    PredictResponse,
    ExplainResponse,
    ModelInfo,
    Health,
    ProblemDetail,
)
_BINARY = {"schema": {"type": "string", "format": "binary"}}
# pydantic knows only that each JSON image is a string; the API decodes it as strict base64
# (padded, standard alphabet), optionally behind a data: URL prefix.
_BASE64_ITEM = {
    "type": "string",
    "contentEncoding": "base64",
    "pattern": r"^(data:[^,]*,)?(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
}


def build_openapi(settings: Settings) -> dict[str, Any]:
    """The document served at /openapi.json, describing every endpoint and error."""
    spec = APISpec(
        title="convserve",
        version=_package_version(),
        openapi_version="3.1.0",
        info={"description": "Image classification with a CNN: POST images, get class scores."},
    )
    for model in _SCHEMAS:
        _add_schema(spec, model)
    spec.components.schemas["PredictJSONRequest"]["properties"]["images"]["items"] = _BASE64_ITEM
    secured = settings.api_key is not None
    if secured:
        spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    spec.path(path="/v1/predict", operations={"post": _predict_operation(secured)})
    spec.path(path="/v1/explain", operations={"post": _explain_operation(secured)})
    spec.path(
        path="/v1/model",
        operations={
            "get": _operation(
                "The model being served: classes, input, normalization, architecture, training.",
                _json_response("ModelInfo"),
                (401,) if secured else (),
                secured,
            )
        },
    )
    for path, summary in (
        ("/healthz", "200 while the process serves."),
        ("/readyz", "200 once the model is loaded and warmed up, 503 before."),
    ):
        responses = {"200": _json_response("Health"), "503": _json_response("Health")}
        spec.path(path=path, operations={"get": {"summary": summary, "responses": responses}})
    metrics_response = {"description": "Prometheus text exposition.", "content": {"text/plain": {}}}
    spec.path(
        path="/metrics",
        operations={
            "get": _operation(
                "Prometheus metrics, merged over all workers.",
                metrics_response,
                (401,) if secured and settings.metrics_need_api_key else (),
                secured and settings.metrics_need_api_key,
            )
        },
    )
    return spec.to_dict()


def _predict_operation(secured: bool) -> dict[str, Any]:
    operation = _operation(
        "Classify one image (raw body) or a batch (multipart/form-data or JSON base64).",
        _json_response("PredictResponse"),
        (400, 401, 413, 415, 422, 503) if secured else (400, 413, 415, 422, 503),
        secured,
    )
    operation["parameters"] = [
        {
            "name": "top_k",
            "in": "query",
            "required": False,
            "description": "How many classes to list in top_k, best first (capped at the classes).",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5},
        }
    ]
    operation["requestBody"] = {
        "required": True,
        "content": {
            "image/*": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                        }
                    },
                    "required": ["file"],
                    "additionalProperties": False,
                }
            },
            "application/json": {"schema": _ref("PredictJSONRequest")},
        },
    }
    return operation


def _explain_operation(secured: bool) -> dict[str, Any]:
    """POST /v1/explain: the body types of /v1/predict (one image only) and a `target`."""
    operation = _predict_operation(secured)
    operation["summary"] = (
        "Explain one image: its prediction, every conv-block layer's feature maps as PNGs, "
        "the first layer's kernels and a Grad-CAM heat map for the top or the target class."
    )
    operation["responses"]["200"] = _json_response("ExplainResponse")
    operation["parameters"].append(
        {
            "name": "target",
            "in": "query",
            "required": False,
            "description": "Class for Grad-CAM, a label or an index (default: the top class).",
            "schema": {"type": "string", "minLength": 1},
        }
    )
    return operation


def _operation(
    summary: str, ok: dict[str, Any], errors: tuple[int, ...], secured: bool
) -> dict[str, Any]:
    responses = {"200": ok}
    for status in errors:
        responses[str(status)] = {
            "description": "Problem details (RFC 9457).",
            "content": {PROBLEM_CONTENT_TYPE: {"schema": _ref("ProblemDetail")}},
        }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if secured:
        operation["security"] = [{"bearer": []}]
    return operation


def _json_response(schema: str) -> dict[str, Any]:
    return {
        "description": schema,
        "content": {"application/json": {"schema": _ref(schema)}},
    }


def _ref(schema: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{schema}"}


def _add_schema(spec: APISpec, model: type[BaseModel]) -> None:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        if name not in spec.components.schemas:
            spec.components.schema(name, definition)
    if model.__name__ not in spec.components.schemas:
        spec.components.schema(model.__name__, schema)


def _package_version() -> str:
    try:
        return version("convserve")
    except PackageNotFoundError:
        return "0.0.0"
