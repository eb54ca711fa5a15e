"""The OpenAPI 3.1 document, assembled by apispec from the pydantic models in service.schemas."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from apispec import APISpec
from pydantic import BaseModel

from service.config import MODEL_NAME_PATTERN, Settings
from service.problems import PROBLEM_CONTENT_TYPE
from service.schemas import (
    ExplainResponse,
    Health,
    ModelInfo,
    ModelList,
    PredictJSONRequest,
    PredictQuery,
    PredictResponse,
    ProblemDetail,
)

_SCHEMAS: tuple[type[BaseModel], ...] = (
    PredictJSONRequest,
    PredictResponse,
    ExplainResponse,
    ModelInfo,
    ModelList,
    Health,
    ProblemDetail,
)
# An empty raw body is a 400 (body missing), not an image.
_BINARY = {"schema": {"type": "string", "format": "binary", "minLength": 1}}
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
        version=package_version(),
        openapi_version="3.1.0",
        info={"description": "Image classification with a CNN: POST images, get class scores."},
    )
    for model in _SCHEMAS:
        add_schema(spec, model)
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
                "The default model: classes, input, normalization, architecture, training.",
                _json_response("ModelInfo"),
                (401, 503) if secured else (503,),
                secured,
            )
        },
    )
    _add_named_model_paths(spec, secured)
    # Imported here: the protocol paths are built with this module's helpers.
    from service.openapi_protocols import add_protocol_paths

    add_protocol_paths(spec, secured)
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


def _add_named_model_paths(spec: APISpec, secured: bool) -> None:
    errors = (401, 404, 503) if secured else (404, 503)
    spec.path(
        path="/v1/models",
        operations={
            "get": _operation(
                "Every model this server found, by name, with its serving version.",
                _json_response("ModelList"),
                (401,) if secured else (),
                secured,
            )
        },
    )
    info = _operation("The model served as {name}.", _json_response("ModelInfo"), errors, secured)
    info["parameters"] = [MODEL_NAME_PARAMETER]
    spec.path(path="/v1/models/{name}", operations={"get": info})
    predict = _predict_operation(secured, named=True)
    predict["parameters"].insert(0, MODEL_NAME_PARAMETER)
    spec.path(path="/v1/models/{name}/predict", operations={"post": predict})


MODEL_NAME_PARAMETER = {
    "name": "name",
    "in": "path",
    "required": True,
    "description": "The model's name: its checkpoint's file stem.",
    "schema": {"type": "string", "pattern": MODEL_NAME_PATTERN},
}


def _predict_operation(secured: bool, named: bool = False) -> dict[str, Any]:
    errors = (400, 413, 415, 422, 503) + ((404,) if named else ())
    operation = _operation(
        "Classify one image (raw body) or a batch (multipart/form-data or JSON base64).",
        _json_response("PredictResponse"),
        (401, *errors) if secured else errors,
        secured,
    )
    top_k = PredictQuery.model_json_schema()["properties"]["top_k"]
    operation["parameters"] = [
        {
            "name": "top_k",
            "in": "query",
            "required": False,
            "description": top_k["description"],
            "schema": {k: top_k[k] for k in ("type", "minimum", "maximum", "default")},
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
            "application/json": {"schema": ref("PredictJSONRequest")},
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
            "content": {PROBLEM_CONTENT_TYPE: {"schema": ref("ProblemDetail")}},
        }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if secured:
        operation["security"] = [{"bearer": []}]
    return operation


def _json_response(schema: str) -> dict[str, Any]:
    return {
        "description": schema,
        "content": {"application/json": {"schema": ref(schema)}},
    }


def ref(schema: str) -> dict[str, str]:
    """A $ref to the component schema named `schema`."""
    return {"$ref": f"#/components/schemas/{schema}"}


def add_schema(spec: APISpec, model: type[BaseModel]) -> None:
    """Adds `model`'s JSON schema, and those it refers to, to the document's components."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, definition in schema.pop("$defs", {}).items():
        if name not in spec.components.schemas:
            spec.components.schema(name, definition)
    if model.__name__ not in spec.components.schemas:
        spec.components.schema(model.__name__, schema)


@functools.cache
def package_version() -> str:
    """convserve's installed version ("0.0.0" when run from a tree that is not installed)."""
    try:
        return version("convserve")
    except PackageNotFoundError:
        return "0.0.0"
