"""Open Inference Protocol v2 bodies <-> what the predictor takes and gives.

Reads an infer request, JSON or with Triton's binary tensor data extension (a JSON header of
`Inference-Header-Content-Length` bytes, then each binary tensor in input order), into one
`ImageInput`; writes probabilities, or the classification extension's top-k strings, as JSON
data or binary tensors. Every malformed body is a 400 Problem naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch
from pydantic import ValidationError

from service.config import Settings
from service.errors import Problem, validation_summary
from service.loading import LoadedModel
from service.schemas import V2InferInput, V2InferRequest

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
BINARY_HEADER = "Inference-Header-Content-Length"
_TENSOR_TYPES: dict[str, np.dtype[Any]] = {"UINT8": np.dtype(np.uint8), "FP32": np.dtype("<f4")}
_LENGTH = struct.Struct("<I")


def _bad(detail: str) -> Problem:
    return Problem(400, "bad-request", detail)


@dataclass(frozen=True)
class ImageInput:
    """The request's one input: encoded image files (BYTES) or a pixel tensor (UINT8, FP32)."""

    datatype: str
    shape: list[int]
    files: list[bytes] | None = None
    tensor: np.ndarray | None = None

    def pixels(self, model: LoadedModel) -> torch.Tensor:
        """The tensor input as (N, C, H, W) pixels on the 0-255 scale for `model`.

        UINT8 comes as [N, C, H, W] or [N, H, W, C]; FP32 as [N, C, H, W] in 0-1 (what a
        torchvision ToTensor gives). Raises 400 when the shape is not the model's input size.
        """
        assert self.tensor is not None
        channels, height, width = model.checkpoint.config.input_shape
        dims = tuple(self.shape[1:])
        if dims == (channels, height, width):
            array = self.tensor
        elif self.datatype == "UINT8" and dims == (height, width, channels):
            array = self.tensor.transpose(0, 3, 1, 2)
        else:
            accepted = f"[N,{channels},{height},{width}]"
            if self.datatype == "UINT8":
                accepted += f" or [N,{height},{width},{channels}]"
            raise _bad(
                f"Input {INPUT_NAME!r} has shape {self.shape}; model {model.name!r} takes "
                f"{self.datatype} {accepted}."
            )
        tensor = torch.from_numpy(np.array(array, order="C"))  # a writable copy, NCHW
        if self.datatype == "FP32":
            return tensor * 255.0
        return tensor


@dataclass(frozen=True)
class RequestedOutput:
    """How the client wants `probabilities` back: top-k strings or not, binary or JSON."""

    classification: int | None
    binary: bool


@dataclass(frozen=True)
class InferCall:
    """A parsed infer request."""

    id: str | None
    image: ImageInput
    output: RequestedOutput


def parse_infer(body: bytes, header_length: str | None, settings: Settings) -> InferCall:
    """The infer request in `body`; `header_length` is Inference-Header-Content-Length or None.

    Raises Problem 400 for anything malformed and 413 for more images than a request may hold.
    """
    header, binary = _split(body, header_length)
    try:
        document = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise _bad(f"The request header is not valid JSON: {exc}") from exc
    try:
        request = V2InferRequest.model_validate(document)
    except ValidationError as exc:
        problems = validation_summary(exc)
        raise _bad(f"The infer request is malformed: {problems}") from exc
    if not request.inputs:
        raise _bad(f"The request has no inputs; send one named {INPUT_NAME!r}.")
    if len(request.inputs) > 1 or request.inputs[0].name != INPUT_NAME:
        names = ", ".join(repr(i.name) for i in request.inputs)
        raise _bad(f"Unknown inputs {names}; the model takes one input named {INPUT_NAME!r}.")
    given = request.inputs[0]
    size = _binary_size(given)
    if size is None and binary:
        raise _bad(f"{len(binary)} bytes follow the JSON header but no input has binary_data_size.")
    if size is not None and size != len(binary):
        raise _bad(
            f"binary_data_size says {size} bytes but {len(binary)} bytes follow the JSON header."
        )
    image = _read_input(given, binary if size is not None else None, settings)
    return InferCall(request.id, image, _requested_output(request))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 < length <= len(body):
        raise _bad(
            f"{BINARY_HEADER} is {header_length!r}; it must be the JSON header's length, "
            f"from 1 to the body's {len(body)} bytes."
        )
    return body[:length], body[length:]


def _binary_size(given: V2InferInput) -> int | None:
    raw = (given.parameters or {}).get("binary_data_size")
    if raw is None:
        return None
    if not isinstance(raw, int) or isinstance(raw, bool) or raw < 0:
        raise _bad(f"binary_data_size must be a non-negative integer, got {raw!r}.")
    if given.data is not None:
        raise _bad(f"Input {given.name!r} has both data and binary_data_size.")
    return raw


def _read_input(given: V2InferInput, binary: bytes | None, settings: Settings) -> ImageInput:
    shape = given.shape
    if not shape or any(not isinstance(d, int) or d < 0 for d in shape):
        raise _bad(f"Input {given.name!r} has an invalid shape {shape}.")
    count = shape[0]
    if count < 1:
        raise _bad(f"Input {given.name!r} holds no images (shape {shape}).")
    if count > settings.max_images_per_request:
        raise Problem(
            413,
            "too-many-images",
            f"{count} images sent; at most {settings.max_images_per_request} per request.",
        )
    if binary is None and given.data is None:
        raise _bad(f"Input {given.name!r} has neither data nor binary_data_size.")
    if given.datatype == "BYTES":
        if len(shape) > 2 or math.prod(shape) != count:
            raise _bad(
                f"A BYTES input holds one image file per row: shape [N] or [N,1], not {shape}."
            )
        files = _bytes_elements(binary, count) if binary is not None else _base64_elements(given)
        return ImageInput("BYTES", shape, files=files)
    dtype = _TENSOR_TYPES.get(given.datatype)
    if dtype is None:
        raise _bad(
            f"Input datatype {given.datatype!r} is not accepted; send BYTES (image files), "
            "UINT8 or FP32 (pixels)."
        )
    if len(shape) != 4:
        raise _bad(f"A {given.datatype} input is a 4-D pixel tensor, not shape {shape}.")
    tensor = _tensor(given, binary, dtype)
    return ImageInput(given.datatype, shape, tensor=tensor)


def _bytes_elements(binary: bytes, count: int) -> list[bytes]:
    """Splits Triton's BYTES serialization: each element is a little-endian uint32 length + data."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(binary):
        if offset + _LENGTH.size > len(binary):
            raise _bad(
                f"The BYTES tensor ends inside the length prefix of element {len(elements)}."
            )
        (length,) = _LENGTH.unpack_from(binary, offset)
        offset += _LENGTH.size
        if offset + length > len(binary):
            raise _bad(
                f"BYTES element {len(elements)} claims {length} bytes but only "
                f"{len(binary) - offset} remain."
            )
        elements.append(binary[offset : offset + length])
        offset += length
    if len(elements) != count:
        raise _bad(f"The BYTES tensor holds {len(elements)} elements; its shape says {count}.")
    return elements


def _base64_elements(given: V2InferInput) -> list[bytes]:
    values = _flatten(given.data)
    if len(values) != given.shape[0]:
        raise _bad(
            f"Input {given.name!r} holds {len(values)} elements; its shape says {given.shape[0]}."
        )
    files = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            raise _bad(f"BYTES element {index} must be a base64 string in JSON.")
        if value.startswith("data:") and "," in value:
            value = value.split(",", 1)[1]
        try:
            files.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise _bad(f"BYTES element {index} is not valid base64.") from exc
    return files


def _tensor(given: V2InferInput, binary: bytes | None, dtype: np.dtype[Any]) -> np.ndarray:
    expected = math.prod(given.shape)
    if binary is not None:
        if len(binary) != expected * dtype.itemsize:
            raise _bad(
                f"A {given.datatype} tensor of shape {given.shape} is {expected * dtype.itemsize} "
                f"bytes; {len(binary)} were sent."
            )
        array = np.frombuffer(binary, dtype=dtype)
    else:
        values = _flatten(given.data)
        if len(values) != expected:
            raise _bad(
                f"Input {given.name!r} holds {len(values)} values; "
                f"shape {given.shape} needs {expected}."
            )
        try:
            array = np.array(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise _bad(f"Input {given.name!r} holds values that are not numbers.") from exc
        if dtype == np.uint8 and not (
            np.all(array == np.floor(array)) and array.min() >= 0 and array.max() <= 255
        ):
            raise _bad("UINT8 values must be integers from 0 to 255.")
        array = array.astype(dtype)
    if dtype != np.uint8 and not (
        np.isfinite(array).all() and array.min() >= 0.0 and array.max() <= 1.0
    ):
        raise _bad("FP32 pixel values must be finite and from 0 to 1.")
    return array.reshape(given.shape)


def _flatten(data: list[object] | None) -> list[object]:
    """Row-major elements of `data`, which may be flat or nested."""
    flat: list[object] = []
    stack: list[object] = [data or []]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def _requested_output(request: V2InferRequest) -> RequestedOutput:
    binary_default = _flag(
        (request.parameters or {}).get("binary_data_output"), "binary_data_output"
    )
    if not request.outputs:
        return RequestedOutput(None, binary_default)
    if len(request.outputs) > 1 or request.outputs[0].name != OUTPUT_NAME:
        names = ", ".join(repr(o.name) for o in request.outputs)
        raise _bad(f"Unknown outputs {names}; the model has one output named {OUTPUT_NAME!r}.")
    parameters = request.outputs[0].parameters or {}
    k = parameters.get("classification")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise _bad(f"classification must be a positive integer, got {k!r}.")
    binary = parameters.get("binary_data")
    return RequestedOutput(k, binary_default if binary is None else _flag(binary, "binary_data"))


def _flag(value: object, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"{name} must be true or false, got {value!r}.")
    return value


def encode_outputs(
    probabilities: torch.Tensor, classes: list[str], wanted: RequestedOutput
) -> tuple[dict[str, Any], bytes]:
    """The response's output entry and the binary data that follows the JSON (b"" for none)."""
    count, width = probabilities.shape
    if wanted.classification is None:
        output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": "FP32", "shape": [count, width]}
        if wanted.binary:
            data = probabilities.numpy().astype("<f4").tobytes()
            output["parameters"] = {"binary_data_size": len(data)}
            return output, data
        output["data"] = probabilities.flatten().tolist()
        return output, b""
    k = min(wanted.classification, width)
    scores, indices = probabilities.topk(k, dim=1)
    # Triton's format: std::to_string of the score (six decimals), the index, the label.
    strings = [
        f"{score:f}:{index}:{classes[index]}"
        for row_scores, row_indices in zip(scores.tolist(), indices.tolist(), strict=True)
        for score, index in zip(row_scores, row_indices, strict=True)
    ]
    output = {"name": OUTPUT_NAME, "datatype": "BYTES", "shape": [count, k]}
    if wanted.binary:
        data = b"".join(_LENGTH.pack(len(e)) + e for e in (s.encode() for s in strings))
        output["parameters"] = {"binary_data_size": len(data)}
        return output, data
    output["data"] = strings
    return output, b""
