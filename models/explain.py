"""What the CNN sees: feature maps layer by layer, first-layer kernels and Grad-CAM.

Safe on a module that other threads are running at the same time: the layers are walked
explicitly (no hooks, which would fire for every thread's forward pass), the module's
train/eval mode is never touched, and gradients come from `torch.autograd.grad` on an
intermediate tensor, so nothing is ever written to a parameter's `.grad`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from models.cnn import CNN


@dataclass(frozen=True)
class FeatureMaps:
    """The output of one layer of the conv blocks.

    `name` is the layer's name in the module (the one `CNN.summary()` lists), `block` the index
    of its conv block, `maps` a detached float32 copy: (C, H, W) for one image, (N, C, H, W)
    in a `Walk` of a batch.
    """

    name: str
    kind: str
    block: int
    maps: torch.Tensor


@dataclass(frozen=True)
class Walk:
    """Every conv-block layer's output (in order) and the logits, for a batch of images.

    `outputs` keep their autograd graph; `recorded` are detached copies taken as each layer
    ran (an in-place ReLU later overwrites its input, the convolution's output).
    """

    outputs: list[torch.Tensor]
    recorded: list[FeatureMaps]
    logits: torch.Tensor


@dataclass(frozen=True)
class GradCAM:
    """Grad-CAM of one class: where the last rectified conv layer's evidence for it sits.

    `heatmap` is (H, W) at the input's size, min-max scaled to 0-1; `empty` is True when the
    map was flat (no positive evidence anywhere), and then the heatmap is all zeros.
    """

    target: int
    layer: str
    heatmap: torch.Tensor
    empty: bool


@dataclass(frozen=True)
class Explanation:
    """Everything `explain` finds out about one image."""

    logits: torch.Tensor
    layers: list[FeatureMaps]
    kernels: torch.Tensor
    kernel_layer: str
    gradcam: GradCAM


def walk(model: CNN, inputs: torch.Tensor) -> Walk:
    """Runs `model` on normalised (N, C, H, W) `inputs` layer by layer.

    The logits equal `model(inputs)`; autograd records the graph when grad mode is on.
    """
    outputs: list[torch.Tensor] = []
    recorded: list[FeatureMaps] = []
    h = inputs
    for block_index, (block_name, block) in enumerate(model.features.named_children()):
        for layer_name, layer in block.named_children():
            h = layer(h)
            outputs.append(h)
            recorded.append(
                FeatureMaps(
                    f"features.{block_name}.{layer_name}",
                    type(layer).__name__,
                    block_index,
                    h.detach().clone(memory_format=torch.contiguous_format),
                )
            )
    logits = model.classifier(model.pool(h))
    return Walk(outputs, recorded, logits)


def first_conv(model: CNN) -> tuple[str, nn.Conv2d]:
    """The name and module of the first convolution, whose kernels see the pixels."""
    for name, module in model.features.named_modules():
        if isinstance(module, nn.Conv2d):
            return f"features.{name}", module
    raise ValueError("the model has no convolution")


def explain(model: CNN, inputs: torch.Tensor, target: int | None = None) -> Explanation:
    """Feature maps, first-layer kernels and Grad-CAM for one normalised (1, C, H, W) image.

    `target` is the class index to explain; None takes the highest logit. `inputs` must be a
    normal float32 tensor (not made under `torch.inference_mode`). Raises ValueError for a
    batch of more than one image, an inference tensor or a target out of range.
    """
    if inputs.dim() != 4 or inputs.shape[0] != 1:
        raise ValueError(f"explain takes one image (1, C, H, W), got {tuple(inputs.shape)}")
    if inputs.is_inference():
        raise ValueError("inputs made under torch.inference_mode cannot be differentiated")
    classes = model.config.num_classes
    if target is not None and not 0 <= target < classes:
        raise ValueError(f"target must be a class index from 0 to {classes - 1}, got {target}")
    # inference_mode and grad mode are thread-local: this thread alone records a graph.
    with torch.inference_mode(False), torch.enable_grad():
        result = walk(model, inputs.float())
        last = max(i for i, m in enumerate(result.recorded) if m.kind == "ReLU")
        activations = result.outputs[last]
        chosen = int(result.logits[0].argmax()) if target is None else target
        (gradient,) = torch.autograd.grad(result.logits[0, chosen], activations)
    size = (inputs.shape[-2], inputs.shape[-1])
    heatmap, empty = _grad_cam(activations.detach(), gradient, size)
    kernel_layer, conv = first_conv(model)
    return Explanation(
        logits=result.logits.detach()[0],
        layers=[replace(layer, maps=layer.maps[0]) for layer in result.recorded],
        kernels=conv.weight.detach().clone(memory_format=torch.contiguous_format),
        kernel_layer=kernel_layer,
        gradcam=GradCAM(chosen, result.recorded[last].name, heatmap, empty),
    )


def _grad_cam(
    activations: torch.Tensor, gradient: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, bool]:
    """ReLU(sum_k mean_ij(dy/dA_k) * A_k), upsampled to `size`, min-max scaled to 0-1."""
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activations).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=False)[0, 0]
    low, high = cam.min(), cam.max()
    span = float(high - low)
    if span <= 1e-12:
        return torch.zeros(size), True
    return ((cam - low) / span).contiguous(), False
