"""Metrics across gunicorn workers, and readiness before the model exists."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from bench.server import Server
from tests.images import png

DOCUMENTED_METRICS = {
    "convserve_requests_total": "counter",
    "convserve_request_duration_seconds": "histogram",
    "convserve_image_decode_duration_seconds": "histogram",
    "convserve_inference_duration_seconds": "histogram",
    "convserve_batch_size": "histogram",
    "convserve_predictions_total": "counter",
    "convserve_inflight_requests": "gauge",
    "convserve_model_info": "gauge",
}


def scrape(server: Server) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every convserve sample: name -> {sorted labels -> value}."""
    text = server.get("/metrics").text
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("convserve_"):
                key = tuple(sorted(sample.labels.items()))
                samples.setdefault(sample.name, {})[key] = sample.value
    return samples


def predict_ok_count(server: Server) -> float:
    counts = scrape(server).get("convserve_requests_total", {})
    key = (("endpoint", "/v1/predict"), ("method", "POST"), ("model", "model"), ("status", "200"))
    return counts.get(key, 0.0)


def test_every_design_metric_is_exposed_with_its_type(server: Server) -> None:
    server.post("/v1/predict", data=png(), headers={"Content-Type": "image/png"})
    families = {f.name: f.type for f in text_string_to_metric_families(server.get("/metrics").text)}
    for name, kind in DOCUMENTED_METRICS.items():
        family = name.removesuffix("_total") if kind == "counter" else name
        assert families.get(family) == kind, f"{name} missing or not a {kind}"


def test_counts_are_exact_across_both_workers(server: Server) -> None:
    requests_to_send = 60
    before = predict_ok_count(server)
    log_offset = server.log_path.stat().st_size
    for _ in range(requests_to_send):
        # A new connection per request lets both workers accept.
        response = requests.post(
            server.url + "/v1/predict",
            data=png(),
            headers={"Content-Type": "image/png", "Connection": "close"},
            timeout=30,
        )
        assert response.status_code == 200
    assert predict_ok_count(server) - before == requests_to_send

    with open(server.log_path, "rb") as log:
        log.seek(log_offset)
        lines = [json.loads(line) for line in log if line.startswith(b"{")]
    pids = Counter(
        entry["pid"]
        for entry in lines
        if entry.get("path") == "/v1/predict" and entry["status"] == 200
    )
    assert sum(pids.values()) == requests_to_send
    assert len(pids) == 2, f"requests were not spread over both workers: {pids}"


def test_probes_are_left_out_of_request_metrics(server: Server) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        server.get(path)
    endpoints = {dict(key)["endpoint"] for key in scrape(server)["convserve_requests_total"]}
    assert not endpoints & {"/healthz", "/readyz", "/metrics"}


def test_batches_and_predictions_are_counted(server: Server) -> None:
    before = scrape(server)
    files = [("file", (f"{i}.png", png(value=10 * i))) for i in range(5)]
    response = server.post("/v1/predict", files=files)
    assert response.status_code == 200
    labels = Counter(p["label"] for p in response.json()["predictions"])
    after = scrape(server)
    for label, count in labels.items():
        key = (("label", label), ("model", "model"))
        previous = before.get("convserve_predictions_total", {}).get(key, 0.0)
        assert after["convserve_predictions_total"][key] - previous == count
    model = (("model", "model"),)  # the checkpoint's file stem
    images_before = before.get("convserve_batch_size_sum", {}).get(model, 0.0)
    assert after["convserve_batch_size_sum"][model] - images_before == 5
    assert after["convserve_inflight_requests"][()] == 0
    info = after["convserve_model_info"]
    version = server.get("/readyz").json()["model_version"]
    assert [dict(k)["version"] for k, v in info.items() if v == 1] == [version]


@pytest.mark.slow
def test_not_ready_until_the_checkpoint_appears(tiny_checkpoint: Path, tmp_path: Path) -> None:
    target = tmp_path / "later.pt"
    server = Server(tmp_path, {"CONVSERVE_MODEL_PATH": str(target), "CONVSERVE_WORKERS": "1"})
    server.start(wait_ready=False)
    try:
        ready = server.get("/readyz")
        assert ready.status_code == 503
        assert "no checkpoint" in ready.json()["detail"]
        assert server.get("/healthz").status_code == 200
        refused = server.post("/v1/predict", data=png(), headers={"Content-Type": "image/png"})
        assert refused.status_code == 503
        assert refused.headers["Content-Type"] == "application/problem+json"
        shutil.copy(tiny_checkpoint, target)
        server.wait_for("/readyz", timeout=30)
        ok = server.post("/v1/predict", data=png(), headers={"Content-Type": "image/png"})
        assert ok.status_code == 200
    finally:
        server.stop()
