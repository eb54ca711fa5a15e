"""Several models from one folder: side by side, each file reloaded on its own, under load."""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import torch

from models.checkpoint import checkpoint_version, save_atomic
from tests.images import png
from tests.reliability.checks import sample, scrape
from tests.reliability.conftest import StartServer, wait_all_workers_ready
from tests.reliability.load import BackgroundLoad, Call
from tests.reliability.test_hot_reload import (
    reloads,
    replace_atomically,
    served_version,
    wait_for,
)

WORKERS = 2
GREY = Call("POST", "/v1/models/model/predict", png(), {"Content-Type": "image/png"})
RGB_INFER = {
    "id": "rgb",
    "inputs": [
        {
            "name": "image",
            "shape": [1],
            "datatype": "BYTES",
            "data": [base64.b64encode(png(size=(32, 32), mode="RGB")).decode()],
        }
    ],
}
RGB = Call("POST", "/v2/models/rgb/infer", orjson.dumps(RGB_INFER), {})


def another_version(checkpoint: Path, target: Path) -> bytes:
    """The same weights with another training note: a valid checkpoint with a new hash."""
    payload: dict[str, Any] = torch.load(checkpoint, weights_only=True)
    payload["training"] = {**payload["training"], "note": "retrained"}
    save_atomic(payload, target)
    return target.read_bytes()


def answered_version(call: Call, body: bytes) -> str:
    if call.path != RGB.path:
        return served_version(body)
    version: str = orjson.loads(body)["model_version"]
    return version


@pytest.mark.slow
def test_models_side_by_side_and_reloaded_file_by_file_under_load(
    tiny_checkpoint: Path, tiny_rgb_checkpoint: Path, tmp_path: Path, start_server: StartServer
) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(tiny_checkpoint, folder / "model.pt")
    shutil.copy(tiny_rgb_checkpoint, folder / "rgb.pt")
    grey, rgb_old = checkpoint_version(tiny_checkpoint), checkpoint_version(tiny_rgb_checkpoint)
    rgb_new_bytes = another_version(tiny_rgb_checkpoint, tmp_path / "rgb-new.pt")
    rgb_new = checkpoint_version(tmp_path / "rgb-new.pt")
    running = start_server(tmp_path / "unused.pt", CONVSERVE_MODEL_DIR=str(folder))
    # start_server waits for WORKERS loads, but each worker loads both files: a load counted
    # late would satisfy a wait below before the reload that wait stands for.
    wait_all_workers_ready(running, expected_loads=2 * WORKERS)

    listed = running.get("/v1/models").json()["models"]
    assert [(m["name"], m["version"], m["default"]) for m in listed] == [
        ("model", grey, True),
        ("rgb", rgb_old, False),
    ]
    assert running.get("/v1/models/rgb").json()["classes"] == ["blue", "green", "red"]
    assert running.get("/v2/models/rgb").json()["outputs"][0]["shape"] == [-1, 3]
    assert running.get("/v1/model").json()["version"] == grey

    loaded = reloads(running, "loaded")
    with BackgroundLoad(
        running.url, [GREY, RGB], connections=4, duration_s=90, keep_body=lambda _c, s: s == 200
    ) as load:
        time.sleep(1.0)
        replace_atomically(folder / "rgb.pt", rgb_new_bytes)  # swap
        wait_for(lambda: reloads(running, "loaded") >= loaded + WORKERS)
        shutil.copy(tiny_checkpoint, folder / ".extra.pt.tmp")
        (folder / ".extra.pt.tmp").rename(folder / "extra.pt")  # add
        wait_for(lambda: reloads(running, "loaded") >= loaded + 2 * WORKERS)
        wait_for(lambda: running.get("/v2/models/extra/ready").status_code == 200)
        failed = reloads(running, "failed")
        replace_atomically(folder / "rgb.pt", b"corrupt")  # refused: rgb_new serves on
        wait_for(lambda: reloads(running, "failed") >= failed + WORKERS)
        (folder / "extra.pt").unlink()  # remove
        wait_for(lambda: running.get("/v2/models/extra/ready").status_code == 404)
        time.sleep(1.0)
    assert load.result is not None
    outcomes = load.result.outcomes
    print(f"model folder under load: {load.result.statuses()} in {load.result.wall_s:.1f} s")
    assert load.result.statuses() == {200: len(outcomes)}, load.result.failures()[:5]
    versions = {
        call.path: [answered_version(call, o.body) for o in outcomes if o.call.path == call.path]
        for call in (GREY, RGB)
    }
    assert set(versions[GREY.path]) == {grey}
    assert versions[RGB.path][0] == rgb_old and versions[RGB.path][-1] == rgb_new
    assert set(versions[RGB.path]) == {rgb_old, rgb_new}
    assert [m["name"] for m in running.get("/v1/models").json()["models"]] == ["model", "rgb"]
    assert running.get("/v2/models/rgb").json()["versions"] == [rgb_new]
    samples = scrape(running.url)
    assert (
        sample(
            samples,
            "convserve_requests_total",
            endpoint="/v2/models/<name>/infer",
            method="POST",
            status="200",
            model="rgb",
        )
        > 0
    )
