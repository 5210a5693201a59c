"""Grad-CAM on the last convolutional layer, through Captum's ``LayerGradCam``.

Grad-CAM (Selvaraju et al., ICCV 2017) weighs each channel of a layer's output by the mean
gradient of the target logit over that channel, sums the channels and keeps the positive
part: where in the image the layer saw evidence for the target class. Captum computes it
(``LayerGradCam(..., relu_attributions=True)``) and upsamples it to the input size
(``LayerAttribution.interpolate``, bilinear). Captum is an optional dependency:
``pip install captum``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.data import IndexedDataset
from fedunlearn.errors import ConfigError


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode for the block (gradients stay on); every submodule's train flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, was_training in flags:
            module.training = was_training


def last_conv(model: nn.Module) -> nn.Conv2d:
    """The model's last ``nn.Conv2d`` (in module order); ConfigError if it has none."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(
            f"Grad-CAM needs a convolutional layer; {type(model).__name__} has none (use lenet, convnet, alexnet "
            "or resnet9)"
        )
    return convs[-1]


def grad_cam(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps (N, H, W) >= 0 of ``targets`` on ``images`` (N, C, H, W), at input size.

    The model runs in eval mode; its train flags are restored afterwards.
    """
    try:
        from captum.attr import LayerAttribution, LayerGradCam
    except ImportError as err:  # pragma: no cover - exercised only without captum
        raise ImportError("Figure 3 needs Captum for Grad-CAM: pip install captum") from err
    with eval_mode(model):
        attribution = LayerGradCam(model, last_conv(model)).attribute(
            images, target=targets.tolist(), relu_attributions=True
        )
        maps = LayerAttribution.interpolate(attribution, tuple(images.shape[-2:]), interpolate_mode="bilinear")
    out: torch.Tensor = maps.detach().sum(dim=1).clamp_min(0.0)
    return out


@dataclass(frozen=True)
class ClassSummary:
    """A model on the test images of one class: accuracy, mean probability of the true class,
    and the mean Grad-CAM value (how much evidence for the class the last conv layer finds)."""

    accuracy: float
    p_true: float
    cam_mean: float


def summarize(model: nn.Module, data: IndexedDataset) -> ClassSummary:
    """Accuracy, mean p(true label) and mean Grad-CAM of the true label on ``data``."""
    probs = probabilities(model, data.inputs)
    picked = probs[torch.arange(len(data)), data.labels]
    cams = grad_cam(model, data.inputs, data.labels)
    return ClassSummary(
        accuracy=float((probs.argmax(1) == data.labels).float().mean()),
        p_true=float(picked.mean()),
        cam_mean=float(cams.mean()),
    )


def predictions(model: nn.Module, images: torch.Tensor) -> tuple[list[int], list[float]]:
    """Predicted labels and their probabilities (eval mode, no gradients)."""
    top = probabilities(model, images).max(dim=1)
    return top.indices.tolist(), top.values.tolist()


def probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Softmax outputs (N, classes) in eval mode, without gradients."""
    with eval_mode(model), torch.no_grad():
        return torch.softmax(model(images), dim=1)
