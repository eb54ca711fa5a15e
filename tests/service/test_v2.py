"""Open Inference Protocol v2: the real tritonclient against the real gunicorn, and raw HTTP."""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from bench.server import Server
from tests.datasets import fashion_mnist_test_images
from tests.images import encode, png
from tests.service.conftest import API_KEY

COUNT = 6
NAME = "model"  # the served name: the checkpoint's file stem


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """Real Fashion-MNIST test images, (COUNT, 28, 28) uint8."""
    try:
        return fashion_mnist_test_images(COUNT)
    except FileNotFoundError:
        if os.environ.get("CI"):
            raise
        pytest.skip("needs dataset-fashion-mnist (make test installs it)")


@pytest.fixture(scope="module")
def pngs(pixels: np.ndarray) -> list[bytes]:
    return [encode(Image.fromarray(image, "L"), "PNG") for image in pixels]


@pytest.fixture(scope="module")
def v1(server: Server, pngs: list[bytes]) -> list[dict[str, Any]]:
    """/v1/predict's predictions for the same images (top_k = all 10 classes)."""
    files = [("file", (f"{i}.png", data)) for i, data in enumerate(pngs)]
    response = server.post("/v1/predict", files=files, params={"top_k": 10})
    assert response.status_code == 200, response.text
    predictions: list[dict[str, Any]] = response.json()["predictions"]
    return predictions


@pytest.fixture(scope="module")
def client(server: Server) -> Iterator[triton.InferenceServerClient]:
    running = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    yield running
    running.close()


def v1_probabilities(v1: list[dict[str, Any]]) -> np.ndarray:
    return np.array([[p["scores"][c] for c in p["scores"]] for p in v1], dtype=np.float32)


def bytes_input(files: list[bytes], binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(files)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(files, dtype=np.object_))
    else:  # JSON carries BYTES as text: the client base64-encodes the files itself
        encoded = [base64.b64encode(f).decode() for f in files]
        tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=False)
    return tensor


def test_server_and_model_metadata(client: triton.InferenceServerClient, server: Server) -> None:
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "convserve"
    assert {"binary_tensor_data", "classification"} <= set(metadata["extensions"])
    version = server.get("/v1/model").json()["version"]
    assert client.is_model_ready(NAME) and client.is_model_ready(NAME, version)
    assert not client.is_model_ready(NAME, "not-a-version")
    assert not client.is_model_ready("no-such-model")
    model = client.get_model_metadata(NAME)
    assert model["name"] == NAME and model["versions"] == [version]
    assert model["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_metadata(NAME, version) == model


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("ask_output", [False, True], ids=["default-outputs", "asked-outputs"])
def test_bytes_images_answer_like_v1(
    client: triton.InferenceServerClient,
    pngs: list[bytes],
    v1: list[dict[str, Any]],
    binary: bool,
    ask_output: bool,
) -> None:
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary)]
    result = client.infer(
        NAME, [bytes_input(pngs, binary)], outputs=outputs if ask_output else None, request_id="r-7"
    )
    response = result.get_response()
    assert response["id"] == "r-7" and response["model_name"] == NAME
    got = result.as_numpy("probabilities")
    assert got is not None and got.dtype == np.float32 and got.shape == (COUNT, 10)
    np.testing.assert_allclose(got, v1_probabilities(v1), rtol=1e-5, atol=1e-6)
    assert got.argmax(axis=1).tolist() == [p["index"] for p in v1]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_class_count_gives_triton_classification_strings(
    client: triton.InferenceServerClient,
    pngs: list[bytes],
    v1: list[dict[str, Any]],
    binary: bool,
) -> None:
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)]
    got = client.infer(NAME, [bytes_input(pngs)], outputs=outputs).as_numpy("probabilities")
    assert got is not None and got.shape == (COUNT, 3)
    for row, prediction in zip(got, v1, strict=True):
        entries = [(e.decode() if isinstance(e, bytes) else e).split(":") for e in row]
        assert [int(index) for _, index, _ in entries] == [
            c["index"] for c in prediction["top_k"][:3]
        ]
        assert [label for _, _, label in entries] == [c["label"] for c in prediction["top_k"][:3]]
        for (score, _, _), expected in zip(entries, prediction["top_k"], strict=False):
            assert float(score) == pytest.approx(expected["score"], abs=2e-6)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC", "FP32"])
def test_pixel_tensor_inputs_answer_like_v1(
    client: triton.InferenceServerClient,
    pixels: np.ndarray,
    v1: list[dict[str, Any]],
    layout: str,
) -> None:
    if layout == "NHWC":
        array, datatype = pixels[:, :, :, None], "UINT8"
    elif layout == "NCHW":
        array, datatype = pixels[:, None], "UINT8"
    else:
        array, datatype = (pixels[:, None] / 255.0).astype(np.float32), "FP32"
    tensor = triton.InferInput("image", list(array.shape), datatype)
    tensor.set_data_from_numpy(np.ascontiguousarray(array))
    got = client.infer(NAME, [tensor]).as_numpy("probabilities")
    assert got is not None
    np.testing.assert_allclose(got, v1_probabilities(v1), rtol=1e-4, atol=1e-5)


def test_json_tensor_input_without_binary(
    client: triton.InferenceServerClient, pixels: np.ndarray, v1: list[dict[str, Any]]
) -> None:
    tensor = triton.InferInput("image", [2, 1, 28, 28], "UINT8")
    tensor.set_data_from_numpy(np.ascontiguousarray(pixels[:2, None]), binary_data=False)
    outputs = [triton.InferRequestedOutput("probabilities", binary_data=False)]
    got = client.infer(NAME, [tensor], outputs=outputs).as_numpy("probabilities")
    assert got is not None
    np.testing.assert_allclose(got, v1_probabilities(v1)[:2], rtol=1e-4, atol=1e-5)


def raises(call: Any, status: str, words: str) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == status, caught.value
    assert words in caught.value.message(), caught.value.message()
    return caught.value


def test_client_errors_are_readable(
    client: triton.InferenceServerClient, pngs: list[bytes]
) -> None:
    raises(lambda: client.infer("no-such", [bytes_input(pngs[:1])]), "404", "no model named")
    raises(lambda: client.get_model_metadata("no-such"), "404", "no model named")
    raises(lambda: client.infer(NAME, [bytes_input([b"not an image"])]), "400", "not an image")
    raises(
        lambda: client.infer(NAME, [bytes_input(pngs[:1])], model_version="other"),
        "404",
        "has no version 'other'",
    )


def test_limits_and_api_key(strict_server: Server, pngs: list[bytes]) -> None:
    client = triton.InferenceServerClient(url=strict_server.url.removeprefix("http://"))
    key = {"Authorization": f"Bearer {API_KEY}"}
    error = raises(lambda: client.infer(NAME, [bytes_input(pngs[:1])]), "401", "Bearer")
    assert "Traceback" not in str(error)
    assert client.is_server_ready()  # health needs no key
    raises(lambda: client.infer(NAME, [bytes_input(pngs[:5])], headers=key), "413", "at most 4")
    # The strict server queues one image per worker: two in one request are shed.
    raises(lambda: client.infer(NAME, [bytes_input(pngs[:2])], headers=key), "503", "capacity")
    large = encode(Image.effect_noise((300, 300), 60).convert("RGB"), "BMP")
    raises(lambda: client.infer(NAME, [bytes_input([large])], headers=key), "413", "bytes")
    client.close()
    # The server closes a connection whose body it did not read; a new client connects afresh.
    client = triton.InferenceServerClient(url=strict_server.url.removeprefix("http://"))
    result = client.infer(NAME, [bytes_input(pngs[:1])], headers=key)
    assert result.as_numpy("probabilities") is not None
    client.close()


def test_not_ready_is_503_with_retry_after(tmp_path: Path) -> None:
    server = Server(
        tmp_path, {"CONVSERVE_MODEL_PATH": str(tmp_path / "model.pt"), "CONVSERVE_WORKERS": "1"}
    )
    server.start(wait_ready=False)
    try:
        client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
        assert client.is_server_live() and not client.is_server_ready()
        assert not client.is_model_ready(NAME)
        raises(lambda: client.infer(NAME, [bytes_input([png()])]), "503", "not loaded")
        response = server.post("/v2/models/model/infer", data=b"{}")
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert set(response.json()) == {"error"}
        client.close()
    finally:
        server.stop()


def binary_request(
    header: dict[str, Any], binary: bytes, length: int | None = None
) -> dict[str, Any]:
    text = orjson.dumps(header)
    return {
        "data": text + binary,
        "headers": {
            "Inference-Header-Content-Length": str(len(text) if length is None else length)
        },
    }


def one_image(data: bytes, **parameters: Any) -> dict[str, Any]:
    entry = {"name": "image", "shape": [1], "datatype": "BYTES", "parameters": parameters}
    return {"inputs": [entry]}


PREFIXED = struct.pack("<I", len(png())) + png()
JSON_IMAGE = {
    "inputs": [
        {
            "name": "image",
            "shape": [1],
            "datatype": "BYTES",
            "data": [base64.b64encode(png()).decode()],
        }
    ]
}
RAW_ERRORS: dict[str, tuple[dict[str, Any], int, str]] = {
    "header length past the body": (
        binary_request(one_image(png(), binary_data_size=len(PREFIXED)), PREFIXED, 10**6),
        400,
        "Inference-Header-Content-Length",
    ),
    "header length not a number": (
        binary_request(one_image(png(), binary_data_size=len(PREFIXED)), PREFIXED)
        | {"headers": {"Inference-Header-Content-Length": "twelve"}},
        400,
        "Inference-Header-Content-Length",
    ),
    "header length cuts the JSON": (
        binary_request(one_image(png(), binary_data_size=len(PREFIXED)), PREFIXED, 20),
        400,
        "not valid JSON",
    ),
    "binary_data_size that does not add up": (
        binary_request(one_image(png(), binary_data_size=len(PREFIXED) + 5), PREFIXED),
        400,
        "binary_data_size says",
    ),
    "truncated length prefix": (
        binary_request(
            one_image(png(), binary_data_size=len(PREFIXED) + 2), PREFIXED + b"\x01\x00"
        ),
        400,
        "ends inside the length prefix",
    ),
    "element longer than the data": (
        binary_request(one_image(png(), binary_data_size=len(PREFIXED) - 9), PREFIXED[:-9]),
        400,
        "claims",
    ),
    "wrong datatype": (
        {"json": {"inputs": [{"name": "image", "shape": [1], "datatype": "INT64", "data": [1]}]}},
        400,
        "datatype 'INT64' is not accepted",
    ),
    "BYTES shape not [N] or [N,1]": (
        {
            "json": {
                "inputs": [
                    {"name": "image", "shape": [1, 2], "datatype": "BYTES", "data": ["a", "b"]}
                ]
            }
        },
        400,
        "shape [N] or [N,1]",
    ),
    "UINT8 shape not the model's input": (
        {
            "json": {
                "inputs": [
                    {"name": "image", "shape": [1, 2, 2, 2], "datatype": "UINT8", "data": [0] * 8}
                ]
            }
        },
        400,
        "takes UINT8 [N,1,28,28] or [N,28,28,1]",
    ),
    "missing input": ({"json": {"inputs": []}}, 400, "no inputs"),
    "unknown input name": (
        {"json": {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["aGk="]}]}},
        400,
        "Unknown inputs 'x'",
    ),
    "unknown output": (
        {"json": JSON_IMAGE | {"outputs": [{"name": "logits"}]}},
        400,
        "Unknown outputs 'logits'",
    ),
    "not base64": (
        {
            "json": {
                "inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["@@"]}]
            }
        },
        400,
        "not valid base64",
    ),
    "not JSON": ({"data": b"\x00\x01"}, 400, "not valid JSON"),
    "inputs missing from the JSON": ({"json": {"id": "1"}}, 400, "inputs"),
}


@pytest.mark.parametrize("case", list(RAW_ERRORS))
def test_raw_protocol_errors_are_documented_4xx(server: Server, case: str) -> None:
    kwargs, status, words = RAW_ERRORS[case]
    response = server.post("/v2/models/model/infer", **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and words in body["error"], body
    assert server.get("/v2/health/ready").json() == {"ready": True}


def test_raw_binary_request_without_content_type(server: Server) -> None:
    header = one_image(png(), binary_data_size=len(PREFIXED)) | {"id": "x"}
    kwargs = binary_request(header, PREFIXED)
    response = requests.post(
        server.url
        + "/v2/models/model/versions/"
        + server.get("/v1/model").json()["version"]
        + "/infer",
        timeout=30,
        **kwargs,
    )
    assert "Content-Type" not in response.request.headers
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "x" and body["outputs"][0]["shape"] == [1, 10]
    assert sum(body["outputs"][0]["data"]) == pytest.approx(1.0, abs=1e-5)


def test_v2_routes_are_labelled_in_metrics_and_openapi(server: Server) -> None:
    assert server.post("/v2/models/model/infer", json=JSON_IMAGE).status_code == 200
    metrics = server.get("/metrics").text
    assert 'endpoint="/v2/models/<name>/infer"' in metrics
    paths = set(server.get("/openapi.json").json()["paths"])
    assert {
        "/v2",
        "/v2/health/ready",
        "/v2/models/{name}/infer",
        "/ping",
        "/predictions/{name}",
    } <= paths
