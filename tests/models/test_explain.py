"""models.explain: the layer walk is the model's forward, Grad-CAM matches a hook-based one."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.cnn import CNN, CNNConfig
from models.explain import explain, first_conv, walk

CONFIGS = {
    "default": CNNConfig(),
    "batch_norm": CNNConfig(batch_norm=True, channels=(8, 16)),
    "two_convs_per_block": CNNConfig(convs_per_block=2, channels=(8, 16)),
    "global_pool": CNNConfig(global_pool=True, channels=(8, 16, 32)),
    "hidden_dropout": CNNConfig(hidden=24, dropout=0.3, channels=(8, 16)),
    "rgb_three_blocks": CNNConfig(
        in_channels=3, height=32, width=32, num_classes=3, channels=(4, 8, 16)
    ),
    "everything": CNNConfig(
        channels=(8, 16),
        convs_per_block=2,
        batch_norm=True,
        hidden=16,
        dropout=0.2,
        global_pool=True,
    ),
}


def _model(config: CNNConfig, seed: int = 0) -> CNN:
    torch.manual_seed(seed)
    model = CNN(config)
    for module in model.modules():  # trained-looking batch-norm statistics, not 0 and 1
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None and module.running_var is not None
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    # The serving layout: eval mode, channels_last weights.
    return model.eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]


def _inputs(config: CNNConfig, count: int = 1, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((count, *config.input_shape), generator=generator)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_walk_equals_forward_and_follows_the_summary(name: str) -> None:
    config = CONFIGS[name]
    model = _model(config)
    inputs = _inputs(config, count=3)
    with torch.no_grad():
        expected = model(inputs)
        result = walk(model, inputs)
    torch.testing.assert_close(result.logits, expected, rtol=0, atol=1e-5)
    summary = [row for row in model.summary().layers if row.name.startswith("features.")]
    assert [(m.name, m.kind, tuple(m.maps.shape[1:])) for m in result.recorded] == [
        (row.name, row.kind, row.output_shape) for row in summary
    ]
    assert {m.kind for m in result.recorded} >= {"Conv2d", "ReLU", "MaxPool2d"}


def test_recorded_convolution_output_is_not_overwritten_by_the_inplace_relu() -> None:
    model = _model(CONFIGS["default"])
    inputs = _inputs(CONFIGS["default"])
    with torch.no_grad():
        result = walk(model, inputs)
        conv = first_conv(model)[1](inputs)
    assert torch.equal(result.recorded[0].maps, conv)
    assert (result.recorded[0].maps < 0).any()  # pre-ReLU values survive
    assert torch.equal(result.recorded[1].maps, conv.clamp_min(0))


def _hook_grad_cam(
    model: CNN, inputs: torch.Tensor, target: int | None
) -> tuple[int, torch.Tensor]:
    """The usual hook-based Grad-CAM (forward hook + tensor hook, backward()) on `model`:
    the target and the unscaled map at the input's size."""
    relu = [m for m in model.features.modules() if isinstance(m, nn.ReLU)][-1]
    captured: dict[str, torch.Tensor] = {}

    def forward_hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        captured["activations"] = output.detach().clone()
        output.register_hook(lambda grad: captured.__setitem__("gradient", grad.detach().clone()))

    handle = relu.register_forward_hook(forward_hook)
    try:
        logits = model(inputs)
    finally:
        handle.remove()
    chosen = int(logits[0].argmax()) if target is None else target
    model.zero_grad()
    logits[0, chosen].backward()
    weights = captured["gradient"].mean(dim=(2, 3), keepdim=True)
    cam = (weights * captured["activations"]).sum(dim=1, keepdim=True).clamp_min(0)
    return chosen, F.interpolate(cam, size=inputs.shape[-2:], mode="bilinear")[0, 0]


@pytest.mark.parametrize(
    "name", ["default", "batch_norm", "two_convs_per_block", "global_pool", "rgb_three_blocks"]
)
@pytest.mark.parametrize("target", [None, 0])
def test_grad_cam_equals_a_hook_based_reference_on_a_private_copy(
    name: str, target: int | None
) -> None:
    config = CONFIGS[name]
    model = _model(config)
    inputs = _inputs(config, seed=7)
    reference_target, cam = _hook_grad_cam(copy.deepcopy(model), inputs, target)
    explanation = explain(model, inputs, target)
    assert explanation.gradcam.target == reference_target
    # These seeds give every case some positive evidence, so the scaled maps are compared.
    assert float(cam.max() - cam.min()) > 1e-6
    assert not explanation.gradcam.empty
    reference = (cam - cam.min()) / (cam.max() - cam.min())
    torch.testing.assert_close(explanation.gradcam.heatmap, reference, rtol=0, atol=1e-5)
    relus = [m.name for m in explanation.layers if m.kind == "ReLU"]
    assert explanation.gradcam.layer == relus[-1]


def test_explain_leaves_no_gradients_and_keeps_the_mode() -> None:
    config = CONFIGS["batch_norm"]
    model = _model(config)
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    explanation = explain(model, _inputs(config))
    assert all(p.grad is None for p in model.parameters())
    assert not model.training
    assert all(torch.equal(before[name], p) for name, p in model.state_dict().items())
    name, conv = first_conv(model)
    assert explanation.kernel_layer == name == "features.0.0"
    assert torch.equal(explanation.kernels, conv.weight)
    assert explanation.kernels.shape == (8, 1, 3, 3)
    assert [(m.kind, tuple(m.maps.shape)) for m in explanation.layers][:4] == [
        ("Conv2d", (8, 28, 28)),
        ("BatchNorm2d", (8, 28, 28)),
        ("ReLU", (8, 28, 28)),
        ("MaxPool2d", (8, 14, 14)),
    ]
    with torch.no_grad():
        torch.testing.assert_close(explanation.logits, model(_inputs(config))[0])


def test_explain_refuses_what_it_cannot_differentiate_or_explain() -> None:
    config = CONFIGS["default"]
    model = _model(config)
    with pytest.raises(ValueError, match="one image"):
        explain(model, _inputs(config, count=2))
    with torch.inference_mode():
        frozen = _inputs(config)
    with pytest.raises(ValueError, match="inference_mode"):
        explain(model, frozen)
    with pytest.raises(ValueError, match="from 0 to 9"):
        explain(model, _inputs(config), target=10)


def test_explain_works_inside_a_no_grad_block() -> None:
    config = CONFIGS["default"]
    model = _model(config)
    with torch.no_grad():
        explanation = explain(model, _inputs(config))
    assert not explanation.gradcam.empty
    assert float(explanation.gradcam.heatmap.max()) == pytest.approx(1.0)
