"""The `convserve` console script, run as a subprocess against the real gunicorn server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from bench.server import REPO, Server, free_port
from tests.images import png
from tests.service.conftest import API_KEY

SAMPLES = REPO / "service" / "static" / "samples"
CONVSERVE = Path(sys.executable).parent / "convserve"


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CONVSERVE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_predict_prints_a_table_per_image(server: Server) -> None:
    images = [SAMPLES / "ankle-boot.png", SAMPLES / "bag.png"]
    result = _run("predict", *map(str, images), "--url", server.url, "--top-k", "2")
    assert result.returncode == 0, result.stderr
    for image in images:
        answer = server.post(
            "/v1/predict", data=image.read_bytes(), headers={"Content-Type": "image/png"}
        ).json()["predictions"][0]
        block = result.stdout.split(str(image), 1)[1]
        rows = block.splitlines()[2:4]
        assert rows[0].split()[:2] == ["1", answer["top_k"][0]["label"].split()[0]]
        assert f"{answer['score']:.2%}" in rows[0]
        assert rows[1].split()[0] == "2"


def test_predict_json_is_the_server_answer(server: Server) -> None:
    image = SAMPLES / "sandal.png"
    result = _run("predict", str(image), "--url", server.url, "--json", "--top-k", "4")
    assert result.returncode == 0, result.stderr
    (answer,) = json.loads(result.stdout)
    assert answer["image"] == str(image)
    expected = server.post(
        "/v1/predict?top_k=4", data=image.read_bytes(), headers={"Content-Type": "image/png"}
    ).json()
    assert answer["predictions"] == expected["predictions"]


def test_errors_exit_non_zero_with_the_problem_detail(server: Server, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    good = SAMPLES / "coat.png"
    result = _run("predict", str(broken), str(good), "--url", server.url)
    assert result.returncode == 1
    detail = server.post(
        "/v1/predict", data=broken.read_bytes(), headers={"Content-Type": "image/png"}
    ).json()
    assert f"broken.png: 422 {detail['title']}: {detail['detail']}" in result.stderr
    assert str(good) in result.stdout  # the good image is still answered
    missing = _run("predict", str(tmp_path / "nope.png"), "--url", server.url)
    assert missing.returncode == 1 and "cannot read" in missing.stderr
    down = _run("predict", str(good), "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "cannot reach" in down.stderr
    bad_target = _run(
        "explain", str(good), "--out", str(tmp_path), "--url", server.url, "--target", "Hat"
    )
    assert bad_target.returncode == 1 and "400" in bad_target.stderr and "Hat" in bad_target.stderr
    assert _run("predict").returncode == 2  # usage


def test_api_key_from_flag_or_environment(strict_server: Server) -> None:
    image = str(SAMPLES / "dress.png")
    refused = _run("predict", image, "--url", strict_server.url)
    assert refused.returncode == 1 and "401" in refused.stderr
    assert _run("predict", image, "--url", strict_server.url, "--api-key", API_KEY).returncode == 0
    from_env = _run(
        "predict", image, "--url", strict_server.url, env={"CONVSERVE_API_KEY": API_KEY}
    )
    assert from_env.returncode == 0, from_env.stderr


def test_explain_writes_the_pictures(server: Server, tmp_path: Path) -> None:
    image = tmp_path / "flat.png"
    image.write_bytes(png())
    out = tmp_path / "out"
    result = _run("explain", str(image), "--out", str(out), "--url", server.url, "--target", "3")
    assert result.returncode == 0, result.stderr
    summary = json.loads((out / "explain.json").read_text())
    assert summary["gradcam"]["target"]["index"] == 3
    layers = sorted((out / "layers").iterdir())
    assert [p.name for p in layers] == [
        f"{i:02d}-{layer['name']}-{layer['kind']}" for i, layer in enumerate(summary["layers"])
    ]
    for folder, layer in zip(layers, summary["layers"], strict=True):
        channels, height, width = layer["shape"]
        files = sorted(folder.iterdir())
        assert len(files) == channels
        with Image.open(files[-1]) as picture:
            assert picture.size == (width, height)
    kernels = sorted((out / "kernels").iterdir())
    assert len(kernels) == summary["kernels"]["shape"][0]
    for name in ("input.png", "gradcam-heatmap.png", "gradcam-overlay.png"):
        with Image.open(out / name) as picture:
            assert picture.size == (28, 28)
    written = 3 + len(kernels) + sum(layer["shape"][0] for layer in summary["layers"])
    assert f"wrote {written} PNG files" in result.stdout


def test_the_client_does_not_import_torch() -> None:
    code = "import sys, client.cli; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert result.stdout.strip() == "False"
