"""TorchServe-compatible routes, called the way TorchServe's own docs call them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench.server import Server
from tests.images import png


def v1_top5(server: Server, image: bytes) -> dict[str, float]:
    response = server.post("/v1/predict", data=image, headers={"Content-Type": "image/png"})
    assert response.status_code == 200
    return {c["label"]: c["score"] for c in response.json()["predictions"][0]["top_k"]}


def test_ping(server: Server) -> None:
    response = server.get("/ping")
    assert response.status_code == 200 and response.json() == {"status": "Healthy"}


def test_curl_upload_file_answers_label_probabilities(server: Server, tmp_path: Path) -> None:
    image = png(value=None)
    path = tmp_path / "shoe.png"
    path.write_bytes(image)
    # Exactly the README's line: curl -T sends a PUT with no Content-Type.
    out = subprocess.run(
        ["curl", "-sS", f"{server.url}/predictions/model", "-T", str(path)],
        capture_output=True,
        check=True,
        text=True,
        timeout=30,
    ).stdout
    answer = json.loads(out)
    expected = v1_top5(server, image)
    assert list(answer) == list(expected) and len(answer) == 5
    assert answer == pytest.approx(expected, abs=1e-6)


def test_multipart_and_post_and_version(server: Server) -> None:
    image = png(value=None)
    version = server.get("/v1/model").json()["version"]
    multipart = server.post(f"/predictions/model/{version}", files={"data": ("x.png", image)})
    raw = server.post("/predictions/model", data=image)
    assert multipart.status_code == raw.status_code == 200
    assert multipart.json() == pytest.approx(raw.json(), abs=1e-6)
    several = server.post("/predictions/model", files=[("data", png(value=v)) for v in (0, 200)])
    assert isinstance(several.json(), list) and len(several.json()) == 2


@pytest.mark.parametrize(
    ("path", "body", "status", "kind"),
    [
        ("/predictions/nope", png(), 404, "ModelNotFoundException"),
        ("/predictions/model/other-version", png(), 404, "ModelNotFoundException"),
        ("/predictions/model", b"not an image", 422, "UnprocessableEntityException"),
        ("/predictions/model", b"", 400, "BadRequestException"),
    ],
)
def test_errors_take_torchserve_shape(
    server: Server, path: str, body: bytes, status: int, kind: str
) -> None:
    response = server.post(path, data=body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert set(answer) == {"code", "type", "message"}
    assert answer["code"] == status and answer["type"] == kind and answer["message"]
