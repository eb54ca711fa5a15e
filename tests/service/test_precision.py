"""CONVSERVE_PRECISION=bf16 keeps the default model's answers: >= 99.5% top-1 agreement with fp32.

Runs the whole Fashion-MNIST test set (10,000 images) through the engine in both precisions.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from bench.server import REPO
from service.config import Settings
from service.engine import Engine

DEFAULT_CHECKPOINT = REPO / "checkpoints" / "model.pt"
DATASET = Path("/usr/share/datasets/fashion-mnist")
MIN_AGREEMENT = 0.995

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("CI") and not (DEFAULT_CHECKPOINT.exists() and DATASET.exists()),
        reason="needs checkpoints/model.pt and dataset-fashion-mnist (make test provides both)",
    ),
    pytest.mark.skipif(
        not torch.ops.mkldnn._is_mkldnn_bf16_supported(),
        reason="this CPU has no native bf16 (AVX-512-BF16/AMX); bf16 is opt-in for CPUs that do",
    ),
]


def top1(precision: str, pixels: torch.Tensor) -> torch.Tensor:
    engine = Engine(
        Settings(model_path=DEFAULT_CHECKPOINT, precision=precision, reload_interval_s=0)
    )
    assert engine.reload(), engine.load_error
    model = engine.model
    assert model is not None
    return torch.cat([engine.forward(model, chunk).argmax(dim=1) for chunk in pixels.split(500)])


def test_bf16_agrees_with_fp32_on_the_fashion_mnist_test_set() -> None:
    from models.data import load_fashion_mnist

    test = load_fashion_mnist(DATASET).test
    assert test is not None and len(test.pixels) == 10_000
    fp32, bf16 = top1("fp32", test.pixels), top1("bf16", test.pixels)
    agreement = float((fp32 == bf16).double().mean())
    assert agreement >= MIN_AGREEMENT, f"bf16 agrees with fp32 on {agreement:.2%} of the images"
    # A trained model, so the agreement is about real decisions, not noise.
    assert float((fp32 == test.labels).double().mean()) >= 0.7
