"""HTTP checks of the running compose stack, for deploy/test/docker-test.sh.

    python docker_smoke.py wait-ready URL [--timeout S]
        polls URL/readyz until it answers 200; prints the seconds it took
    python docker_smoke.py stack --api URL... --prometheus URL --checkpoint PATH ...
        predicts real Fashion-MNIST test images through every API URL (nginx, or replicas;
        --replicas N says how many replicas Prometheus must find) and compares the
        answers with the same checkpoint evaluated here; checks /v1/model, then asks Prometheus
        for the series the dashboard and alerts rely on
    python docker_smoke.py model-version URL --expect VERSION
        checks that URL/v1/model serves the checkpoint with that content hash
    python docker_smoke.py variant IN OUT
        writes a copy of checkpoint IN with another training note, so another content hash
    python docker_smoke.py quick-checkpoint OUT [--images N]
        a small model trained in seconds on part of Fashion-MNIST's training set, for when no
        checkpoint is at hand (the image build then needs no training of its own)

Standard library plus the project's own `models` package (and its torch, numpy, pillow).
Loopback URLs only; every wait is bounded. Prints one line per check: PASS/FAIL name.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

FASHION_LABELS = "t10k-labels-idx1-ubyte.gz"
FASHION_IMAGES = "t10k-images-idx3-ubyte.gz"


class Checks:
    """Counts PASS/FAIL lines."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def ok(self, name: str, detail: str = "") -> None:
        self.passed += 1
        print(f"PASS {name}{': ' + detail if detail else ''}", flush=True)

    def fail(self, name: str, detail: str) -> None:
        self.failed += 1
        print(f"FAIL {name}: {detail}", flush=True)

    def check(self, name: str, condition: bool, detail: str) -> bool:
        (self.ok if condition else self.fail)(name, detail)
        return condition


def _loopback(url: str) -> str:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit(f"refusing a non-loopback target: {url}")
    return url.rstrip("/")


def http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def wait_ready(url: str, timeout: float) -> float:
    start = time.monotonic()
    last = "no answer"
    while time.monotonic() - start < timeout:
        try:
            status, _, _ = http("GET", f"{url}/readyz", timeout=2)
            if status == 200:
                return time.monotonic() - start
            last = f"HTTP {status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{url}/readyz not ready after {timeout:.0f}s ({last})")


def fashion_images(dataset: Path, count: int) -> list[tuple[bytes, int]]:
    """The first `count` test images as PNG bytes with their true label index."""
    from PIL import Image

    with gzip.open(dataset / FASHION_IMAGES) as handle:
        raw = handle.read()
    with gzip.open(dataset / FASHION_LABELS) as handle:
        labels = handle.read()[8:]
    rows, cols = int.from_bytes(raw[8:12], "big"), int.from_bytes(raw[12:16], "big")
    size = rows * cols
    out = []
    for i in range(count):
        pixels = raw[16 + i * size : 16 + (i + 1) * size]
        image = Image.frombytes("L", (cols, rows), pixels)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append((buffer.getvalue(), labels[i]))
    return out


def local_scores(checkpoint: Path, pngs: list[bytes]) -> tuple[list[str], list[list[float]]]:
    """Class names and softmax scores of the checkpoint, evaluated here on the same bytes."""
    import torch
    from PIL import Image

    from models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    model = ckpt.build_model()
    batch = torch.stack([ckpt.preprocessing(Image.open(io.BytesIO(png))) for png in pngs])
    with torch.no_grad():
        probs = torch.softmax(model(batch), dim=1)
    return list(ckpt.classes), probs.tolist()


def checkpoint_version(path: Path) -> str:
    from models.checkpoint import checkpoint_version as version

    return version(path)


def check_predictions(
    checks: Checks, api: list[str], checkpoint: Path, dataset: Path, count: int
) -> int:
    """Every replica answers like the checkpoint does here; returns the requests sent."""
    samples = fashion_images(dataset, count)
    classes, expected = local_scores(checkpoint, [png for png, _ in samples])
    sent = 0
    right = 0
    worst = 0.0
    problems: list[str] = []
    for i, (png, truth) in enumerate(samples):
        url = api[i % len(api)]
        status, headers, body = http(
            "POST",
            f"{url}/v1/predict?top_k=3",
            png,
            {"Content-Type": "image/png", "X-Request-ID": f"docker-test-{i}"},
        )
        sent += 1
        if status != 200:
            problems.append(f"image {i} via {url}: HTTP {status} {body[:200]!r}")
            continue
        if headers.get("X-Request-ID") != f"docker-test-{i}":
            problems.append(f"image {i}: X-Request-ID not echoed")
        answer = json.loads(body)
        prediction = answer["predictions"][0]
        want = max(range(len(classes)), key=lambda k: expected[i][k])
        if prediction["index"] != want or prediction["label"] != classes[want]:
            problems.append(
                f"image {i}: container says {prediction['label']!r}, the checkpoint here "
                f"says {classes[want]!r}"
            )
        scores = prediction["scores"]
        worst = max(worst, *(abs(scores[c] - expected[i][k]) for k, c in enumerate(classes)))
        if len(prediction["top_k"]) != 3:
            problems.append(f"image {i}: top_k has {len(prediction['top_k'])} entries, not 3")
        right += prediction["index"] == truth
    checks.check(
        "predict",
        not problems and worst < 1e-4,
        f"{sent} Fashion-MNIST test images through {len(api)} replica(s) answered as the "
        f"checkpoint does here (max score difference {worst:.1e}); {right}/{sent} true labels"
        + (f"; {'; '.join(problems[:3])}" if problems else ""),
    )
    return sent


def check_model(checks: Checks, url: str, expect_version: str) -> None:
    status, _, body = http("GET", f"{url}/v1/model")
    if status != 200:
        checks.fail("model", f"{url}/v1/model: HTTP {status}")
        return
    info = json.loads(body)
    version = info.get("version")
    checks.check(
        "model",
        version == expect_version,
        f"{url}/v1/model serves version {version} (expected {expect_version})",
    )


def prom_query(prometheus: str, expr: str) -> dict[str, Any]:
    query = urllib.parse.urlencode({"query": expr})
    status, _, body = http("GET", f"{prometheus}/api/v1/query?{query}")
    data: dict[str, Any] = json.loads(body)
    if status != 200 or data.get("status") != "success":
        raise ValueError(f"{expr}: HTTP {status} {data.get('error', body[:200])}")
    return data


def prom_value(prometheus: str, expr: str) -> float | None:
    result = prom_query(prometheus, expr)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def poll(predicate: Any, timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def check_prometheus(
    checks: Checks, prometheus: str, replicas: int, predicted: int, dashboard: Path, timeout: float
) -> None:
    up = 'count(up{job="convserve"} == 1)'
    got = poll(lambda: (prom_value(prometheus, up) or 0) >= replicas, timeout)
    checks.check(
        "prometheus-targets",
        bool(got),
        f"{prom_value(prometheus, up) or 0:.0f} of {replicas} api replicas scraped "
        "through DNS service discovery",
    )
    total = (
        'sum(convserve_requests_total{job="convserve", endpoint="/v1/predict", '
        'method="POST", status="200"})'
    )
    got = poll(lambda: (prom_value(prometheus, total) or 0) >= predicted, timeout)
    checks.check(
        "prometheus-requests",
        bool(got),
        f"convserve_requests_total for POST /v1/predict 200 from the api target = "
        f"{prom_value(prometheus, total)} (sent {predicted})",
    )
    # Every panel query of the dashboard is valid PromQL and finds data in the live stack.
    substitutions = {
        "$__rate_interval": "1m",
        "$instance": ".*",
        "$endpoint": ".*",
        "${datasource}": "",
    }
    empty: list[str] = []
    errors: list[str] = []
    exprs = dashboard_exprs(json.loads(dashboard.read_text()))
    for expr in exprs:
        for key, value in substitutions.items():
            expr = expr.replace(key, value)
        try:
            if not prom_query(prometheus, expr)["data"]["result"]:
                empty.append(expr)
        except ValueError as exc:
            errors.append(str(exc))
    checks.check(
        "dashboard-queries",
        not errors,
        f"{len(exprs)} panel queries evaluated by Prometheus, {len(exprs) - len(empty)} with data"
        + (f"; errors: {errors[:2]}" if errors else ""),
    )
    status, _, body = http("GET", f"{prometheus}/api/v1/rules")
    groups = json.loads(body)["data"]["groups"] if status == 200 else []
    rules = [rule for group in groups for rule in group["rules"]]
    bad = [rule["name"] for rule in rules if rule.get("health") not in ("ok", "unknown")]
    checks.check(
        "prometheus-rules",
        bool(rules) and not bad,
        f"{len(rules)} alerting rules loaded" + (f", unhealthy: {bad}" if bad else ""),
    )


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = []
    for panel in dashboard.get("panels", []):
        exprs += [target["expr"] for target in panel.get("targets", []) if target.get("expr")]
        for inner in panel.get("panels", []):
            exprs += [target["expr"] for target in inner.get("targets", []) if target.get("expr")]
    return exprs


def variant(source: Path, target: Path) -> str:
    from models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(source)
    ckpt.training = {**ckpt.training, "note": "docker-test mounted variant"}
    save_checkpoint(ckpt, target)
    return checkpoint_version(target)


def quick_checkpoint(
    dataset: Path, target: Path, images: int, epochs: int = 1, seed: int = 0
) -> float:
    """Trains the default CNN briefly on `images` training images; returns held-out accuracy."""
    import numpy as np
    import torch
    from torch import nn

    from models.checkpoint import Checkpoint, save_checkpoint
    from models.cnn import CNN, CNNConfig
    from models.data import FASHION_MNIST_CLASSES
    from models.transforms import Preprocessing

    torch.manual_seed(seed)
    with gzip.open(dataset / "train-images-idx3-ubyte.gz") as handle:
        raw = np.frombuffer(handle.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    with gzip.open(dataset / "train-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(), dtype=np.uint8, offset=8)
    held_out = 1000
    pixels = torch.from_numpy(raw[: images + held_out].copy()).float().div_(255.0)
    targets = torch.from_numpy(labels[: images + held_out].astype(np.int64))
    mean, std = float(pixels[:images].mean()), float(pixels[:images].std())
    inputs = (pixels - mean) / std
    config = CNNConfig()
    model = CNN(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(images)
        for start in range(0, images, 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            loss_fn(model(inputs[batch]), targets[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(inputs[images:]).argmax(dim=1)
    accuracy = float((predicted == targets[images:]).float().mean())
    checkpoint = Checkpoint(
        config=config,
        state_dict=model.state_dict(),
        classes=list(FASHION_MNIST_CLASSES),
        preprocessing=Preprocessing(
            mode="L", height=28, width=28, mean=(mean,), std=(std,), background=0
        ),
        training={
            "dataset": "fashion-mnist",
            "images": images,
            "epochs": epochs,
            "accuracy": accuracy,
            "note": "docker-test quick checkpoint",
        },
    )
    save_checkpoint(checkpoint, target)
    return accuracy


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ready = sub.add_parser("wait-ready")
    ready.add_argument("url")
    ready.add_argument("--timeout", type=float, default=120)
    stack = sub.add_parser("stack")
    stack.add_argument("--api", nargs="+", required=True)
    stack.add_argument("--prometheus", required=True)
    stack.add_argument("--checkpoint", type=Path, required=True)
    stack.add_argument("--dataset", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    stack.add_argument("--dashboard", type=Path, required=True)
    stack.add_argument("--images", type=int, default=12)
    stack.add_argument("--timeout", type=float, default=60)
    stack.add_argument(
        "--replicas", type=int, help="api replicas behind the URLs (default: one per URL)"
    )
    model = sub.add_parser("model-version")
    model.add_argument("url")
    model.add_argument("--expect", required=True)
    var = sub.add_parser("variant")
    var.add_argument("source", type=Path)
    var.add_argument("target", type=Path)
    quick = sub.add_parser("quick-checkpoint")
    quick.add_argument("target", type=Path)
    quick.add_argument("--dataset", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    quick.add_argument("--images", type=int, default=6000)
    quick.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args(argv)

    if args.command == "wait-ready":
        print(f"{wait_ready(_loopback(args.url), args.timeout):.2f}")
        return 0
    if args.command == "quick-checkpoint":
        accuracy = quick_checkpoint(args.dataset, args.target, args.images, args.epochs)
        print(f"{accuracy:.3f}")
        return 0
    if args.command == "variant":
        print(variant(args.source, args.target))
        return 0
    checks = Checks()
    if args.command == "model-version":
        check_model(checks, _loopback(args.url), args.expect)
    else:
        api = [_loopback(url) for url in args.api]
        prometheus = _loopback(args.prometheus)
        version = checkpoint_version(args.checkpoint)
        for url in api:
            check_model(checks, url, version)
        sent = check_predictions(checks, api, args.checkpoint, args.dataset, args.images)
        replicas = args.replicas or len(api)
        check_prometheus(checks, prometheus, replicas, sent, args.dashboard, args.timeout)
    print(f"checks: {checks.passed} passed, {checks.failed} failed", flush=True)
    return 0 if checks.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
