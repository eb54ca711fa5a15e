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


def passes(
    fixed_ms: float, per_image_ms: float, cache_size: int = 1 << 30, spill_ms: float = 0.0
) -> Callable[[int], None]:
    """A forward pass that takes `fixed_ms` plus `per_image_ms` per image, plus `spill_ms` per
    image once the pass has more than `cache_size` images."""

    def forward(size: int) -> None:
        spill = spill_ms * size if size > cache_size else 0.0
        time.sleep((fixed_ms + per_image_ms * size + spill) / 1000.0)

    return forward


def test_a_pass_with_a_large_fixed_cost_is_batched_up_to_the_limit() -> None:
    plan = plan_batching(passes(fixed_ms=4.0, per_image_ms=0.05), 8, limit_was_set=False)
    assert plan.max_batch_size == 8
    assert sorted(plan.ms_per_image) == [1, 2, 4, 8]
    assert plan.ms_per_image[8] < (1 - MIN_SAVING) * plan.ms_per_image[1]
    assert plan.reason.startswith("batching pays")


def test_batches_stop_where_an_image_costs_least() -> None:
    """Past the size whose activations fit the caches, an image costs more again."""
    forward = passes(fixed_ms=4.0, per_image_ms=0.05, cache_size=4, spill_ms=3.0)
    plan = plan_batching(forward, 12, limit_was_set=False)
    assert sorted(plan.ms_per_image) == [1, 2, 4, 8, 12]
    assert plan.max_batch_size == 4


def test_a_pass_whose_cost_is_per_image_is_not_batched() -> None:
    plan = plan_batching(passes(fixed_ms=0.0, per_image_ms=3.0), 8, limit_was_set=False)
    assert plan.max_batch_size == 1
    assert min(plan.ms_per_image.values()) >= 3.0
    assert plan.reason.startswith("batching off:")


@pytest.mark.parametrize(("limit", "expected"), [(8, 8), (1, 1)])
def test_a_configured_limit_is_kept(limit: int, expected: int) -> None:
    plan = plan_batching(passes(fixed_ms=0.0, per_image_ms=3.0), limit, limit_was_set=True)
    assert plan.max_batch_size == expected
    assert max(plan.ms_per_image) == limit


def test_the_model_info_says_what_was_chosen_and_why(server: Server) -> None:
    """The real tiny model: a pass over many small images costs far less per image."""
    batching = server.get("/v1/model").json()["batching"]
    per_image = batching["ms_per_image"]
    assert sorted(per_image, key=int) == ["1", "2", "4", "8", "16", "32"]
    assert batching["max_batch_size"] > 1
    assert 0 < per_image[str(batching["max_batch_size"])] < (1 - MIN_SAVING) * per_image["1"]
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
        assert max(model.batching.ms_per_image) == 32
    finally:
        engine.stop()
