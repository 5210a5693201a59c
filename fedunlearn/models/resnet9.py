"""ResNet9 (Myrtle.ai / DAWNBench shape) with narrowed widths for CPU training on 28x28."""

from __future__ import annotations

import torch
from torch import nn

from fedunlearn.models.registry import register_model, require_image_input

#: Channels of prep, layer1, layer2, layer3. Myrtle uses (64, 128, 256, 512) at 32x32;
#: a quarter of that keeps an MNIST epoch on two CPU cores around a minute.
WIDTHS = (8, 16, 32, 160)


def conv_bn(in_channels: int, out_channels: int, *, pool: bool = False) -> nn.Sequential:
    """Return a block: conv 3x3 (no bias: BatchNorm's shift replaces it) - BatchNorm - ReLU [- max-pool 2]."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """``x + f(x)`` with f two conv-BN-ReLU blocks of unchanged width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(channels, channels), conv_bn(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Add the two-block branch to the input."""
        out: torch.Tensor = x + self.body(x)
        return out


class ResNet9(nn.Module):
    """prep - layer1 (+residual) - layer2 - layer3 (+residual) - global max-pool - fc.

    The Myrtle ResNet9 (Page 2018, DAWNBench CIFAR-10): eight conv-BN-ReLU blocks and
    a linear classifier, with residual pairs after layer1 and layer3; 28x28 inputs pool
    28 -> 14 -> 7 -> 3 -> 1. It is the deepest model in the zoo and the only one with
    BatchNorm. Myrtle's final 0.125 logit scaling is left out (it is tuned for its
    one-cycle schedule, not for plain SGD). Widths: see ``WIDTHS``.

    >>> ResNet9(in_channels=3, num_classes=11)(torch.zeros(2, 3, 28, 28)).shape
    torch.Size([2, 11])
    """

    def __init__(self, *, in_channels: int, num_classes: int, widths: tuple[int, int, int, int] = WIDTHS) -> None:
        super().__init__()
        prep, w1, w2, w3 = widths
        self.features = nn.Sequential(
            conv_bn(in_channels, prep),  # 28x28
            conv_bn(prep, w1, pool=True),  # 14x14
            Residual(w1),
            conv_bn(w1, w2, pool=True),  # 7x7
            conv_bn(w2, w3, pool=True),  # 3x3
            Residual(w3),
            nn.AdaptiveMaxPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(w3, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, num_classes) for images (N, C, 28, 28)."""
        out: torch.Tensor = self.classifier(self.features(x))
        return out


@register_model("resnet9")
def build_resnet9(*, input_shape: tuple[int, ...], num_classes: int) -> ResNet9:
    """Build ResNet9 for (C, 28, 28) images."""
    return ResNet9(in_channels=require_image_input("resnet9", input_shape), num_classes=num_classes)
