"""The engine turns batching off for a model it cannot help, from the model's own timings."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bench.server import Server
from service import batch_plan
from service.batch_plan import MIN_SAVING, plan_batching
from service.config import Settings
from service.engine import Engine


def passes(fixed_ms: float, per_image_ms: float) -> Callable[[int], None]:
    """A forward pass that takes `fixed_ms` plus `per_image_ms` per image."""

    def forward(size: int) -> None:
        time.sleep((fixed_ms + per_image_ms * size) / 1000.0)

    return forward


def test_a_pass_with_a_large_fixed_cost_is_batched() -> None:
    plan = plan_batching(passes(fixed_ms=4.0, per_image_ms=0.05), 8, limit_was_set=False)
    assert plan.max_batch_size == 8
    assert plan.batched_ms_per_image < (1 - MIN_SAVING) * plan.alone_ms
    assert plan.reason.startswith("batching pays")


def test_a_pass_whose_cost_is_per_image_is_not_batched() -> None:
    plan = plan_batching(passes(fixed_ms=0.0, per_image_ms=3.0), 8, limit_was_set=False)
    assert plan.max_batch_size == 1
    assert plan.alone_ms >= 3.0 and plan.batched_ms_per_image >= 3.0
    assert plan.reason.startswith("batching off:")


@pytest.mark.parametrize(("limit", "expected"), [(8, 8), (1, 1)])
def test_a_configured_limit_is_kept(limit: int, expected: int) -> None:
    plan = plan_batching(passes(fixed_ms=0.0, per_image_ms=3.0), limit, limit_was_set=True)
    assert plan.max_batch_size == expected
    assert plan.measured_batch == limit


def test_the_model_info_says_what_was_chosen_and_why(server: Server) -> None:
    """The real tiny model: a pass over many small images costs far less per image."""
    batching = server.get("/v1/model").json()["batching"]
    assert batching["max_batch_size"] == batching["measured_batch"] == 32
    assert 0 < batching["batched_ms_per_image"] < batching["alone_ms"]
    assert batching["reason"].startswith("batching pays")
    assert "batching pays" in server.log_path.read_text()


def test_the_engine_serves_a_model_batching_cannot_help_alone(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a saving no model can reach, the real tiny model is served without batching."""
    monkeypatch.setattr(batch_plan, "MIN_SAVING", 1.01)
    engine = Engine(Settings(model_path=tiny_checkpoint, reload_interval_s=0))
    engine.start()
    try:
        model = engine.model
        assert model is not None and model.batching is not None
        assert model.batching.max_batch_size == 1
        assert model.batching.reason.startswith("batching off:")
        assert model.batching.measured_batch == 32
    finally:
        engine.stop()
