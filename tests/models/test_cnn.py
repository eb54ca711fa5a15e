"""models.cnn: the architecture is rebuilt from its config; the summary matches the network."""

from __future__ import annotations

import pytest
import torch

from models.cnn import CNN, CNNConfig
from models.recipe import PRESETS


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_fashion_mnist_models(preset: str) -> None:
    model = CNN(PRESETS[preset].model).eval()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    summary = model.summary()
    assert summary.parameters == sum(p.numel() for p in model.parameters())
    assert summary.parameters == sum(layer.parameters for layer in summary.layers)
    assert summary.layers[-1].output_shape == (10,)
    assert "total parameters" in summary.to_text()


def test_config_round_trips_and_validates() -> None:
    config = CNNConfig(in_channels=3, height=32, width=32, num_classes=3, channels=(8, 16, 32))
    assert CNNConfig.from_dict(config.to_dict()) == config
    assert config.input_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="at least 8x8"):
        CNNConfig(height=4, width=4, channels=(8, 8, 8))
    with pytest.raises(TypeError):
        CNNConfig.from_dict({**config.to_dict(), "unknown": 1})


def test_global_pool_model_on_a_larger_input() -> None:
    model = CNN(CNNConfig(height=64, width=48, channels=(4, 8), global_pool=True)).eval()
    assert model(torch.zeros(1, 1, 64, 48)).shape == (1, 10)
