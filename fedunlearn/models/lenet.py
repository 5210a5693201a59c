"""LeNet-5 for 28x28 images: the seed paper's small convolutional model."""

from __future__ import annotations

import torch
from torch import nn

from fedunlearn.models.registry import register_model, require_image_input


class LeNet(nn.Module):
    """conv 5x5 (6) - pool - conv 5x5 (16) - pool - fc 120 - fc 84 - fc n, ReLU, max-pool.

    The classic LeNet-5 layout (LeCun et al. 1998) with the modern ReLU/max-pool choice.
    The first convolution pads by 2 so a 28x28 input yields the original 5x5x16 feature
    map (400 features) that LeNet-5 computes from 32x32; about 62k parameters on 1x28x28,
    cheap enough for many clients and many unlearning runs on a CPU.

    >>> LeNet(in_channels=1, num_classes=10)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, *, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),  # 28x28
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(6, 16, kernel_size=5),  # 10x10
            nn.ReLU(),
            nn.MaxPool2d(2),  # 5x5
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images (N, C, 28, 28)."""
        out: torch.Tensor = self.classifier(self.features(x))
        return out


@register_model("lenet")
def build_lenet(*, input_shape: tuple[int, ...], num_classes: int) -> LeNet:
    """Build LeNet-5 for (C, 28, 28) images."""
    return LeNet(in_channels=require_image_input("lenet", input_shape), num_classes=num_classes)
