"""A small three-block CNN, the usual "ConvNet" of MNIST/MedMNIST unlearning experiments."""

from __future__ import annotations

import torch
from torch import nn

from fedunlearn.models.registry import register_model, require_image_input


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Return a block: conv 3x3 (same padding) - ReLU - max-pool 2 (halves H and W, rounding down)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


class ConvNet(nn.Module):
    """Three conv-ReLU-pool blocks (32, 64, 128 channels), fc 128, fc n; no normalisation.

    Doubling widths with 3x3 kernels and max-pool (28 -> 14 -> 7 -> 3) is the plain CNN
    used for MNIST-scale federated and unlearning baselines. Widths stay small (about
    240k parameters, mostly in the first FC layer) so an MNIST epoch runs in well under a
    minute on two CPU cores. No BatchNorm: every tensor of the state is a trainable
    parameter, so stored updates describe the model completely.

    >>> ConvNet(in_channels=3, num_classes=11)(torch.zeros(2, 3, 28, 28)).shape
    torch.Size([2, 11])
    """

    def __init__(
        self, *, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (32, 64, 128), hidden: int = 128
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(in_channels, widths[0]),  # 14x14
            _block(widths[0], widths[1]),  # 7x7
            _block(widths[1], widths[2]),  # 3x3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(widths[2] * 3 * 3, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images (N, C, 28, 28)."""
        out: torch.Tensor = self.classifier(self.features(x))
        return out


@register_model("convnet")
def build_convnet(*, input_shape: tuple[int, ...], num_classes: int) -> ConvNet:
    """Build the three-block ConvNet for (C, 28, 28) images."""
    return ConvNet(in_channels=require_image_input("convnet", input_shape), num_classes=num_classes)
