"""A training run draws the trained network's kernels and one test image's feature maps."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image


@pytest.mark.parametrize("fixture", ["tiny_checkpoint", "tiny_rgb_checkpoint"])
def test_training_writes_kernels_and_feature_maps_beside_curves(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    checkpoint: Path = request.getfixturevalue(fixture)
    folder = checkpoint.parent
    assert (folder / "curves.png").exists()
    for name in ("kernels.png", "feature-maps.png"):
        with Image.open(folder / name) as picture:
            assert picture.format == "PNG"
            width, height = picture.size
            assert width > 300 and height > 100
            # Drawn, not blank: many distinct colours.
            assert len(picture.convert("L").getcolors(256) or []) > 20
