"""AlexNet-style network scaled down to 28x28 images (5 conv, 3 FC layers, dropout)."""

from __future__ import annotations

import torch
from torch import nn

from fedunlearn.models.registry import register_model, require_image_input

#: Conv widths: AlexNet's 64-192-384-256-256 (torchvision) divided by 4.
CONV_WIDTHS = (16, 48, 96, 64, 64)
#: FC widths: AlexNet's two equal hidden layers (4096) scaled to the smaller feature map.
FC_WIDTH = 512


class AlexNet(nn.Module):
    """AlexNet's layout for 28x28: five convolutions, three max-pools, a dropout FC head.

    Order: conv-pool, conv-pool, conv, conv, conv-pool, then dropout-fc-ReLU twice and a
    linear classifier. The 11x11 stride-4 stem of the 224x224 original would leave a 6x6 map after one
    layer here, so the stem is a 3x3 stride-1 convolution and the three max-pools take
    28 -> 14 -> 7 -> 3. Widths are torchvision's divided by four and the FC layers are
    512 wide, which keeps the net under 1M parameters and an MNIST epoch on two CPU
    cores near half a minute, while preserving the architecture's character (a deep
    conv stack, large FC head, dropout 0.5).

    >>> AlexNet(in_channels=1, num_classes=10)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        conv_widths: tuple[int, ...] = CONV_WIDTHS,
        fc_width: int = FC_WIDTH,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = conv_widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(c1, c2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 3x3
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c5 * 3 * 3, fc_width),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(fc_width, fc_width),
            nn.ReLU(),
            nn.Linear(fc_width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images (N, C, 28, 28)."""
        out: torch.Tensor = self.classifier(self.features(x))
        return out


@register_model("alexnet")
def build_alexnet(*, input_shape: tuple[int, ...], num_classes: int) -> AlexNet:
    """Build the 28x28 AlexNet for (C, 28, 28) images."""
    return AlexNet(in_channels=require_image_input("alexnet", input_shape), num_classes=num_classes)
