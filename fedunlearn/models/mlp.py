"""Multi-layer perceptron: the only model that also takes tabular ``(F,)`` input."""

from __future__ import annotations

import math

import torch
from torch import nn

from fedunlearn.models.registry import register_model


class MLP(nn.Module):
    """Flatten, two hidden ReLU layers (256, 128), then a linear classifier.

    Two hidden layers are the smallest MLP that fits MNIST well (about 97% test accuracy)
    and the shape used as the dense baseline in the unlearning papers; it has several
    layers of different sizes, so layer-wise pruning of updates is exercised, and it
    also serves tabular sets (e.g. breast_cancer) unchanged.

    >>> MLP(in_features=30, num_classes=2)(torch.zeros(4, 30)).shape
    torch.Size([4, 2])
    """

    def __init__(self, *, in_features: int, num_classes: int, hidden: tuple[int, int] = (256, 128)) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden[0]),
            nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (N, num_classes) for inputs (N, F) or (N, C, H, W)."""
        out: torch.Tensor = self.net(x)
        return out


@register_model("mlp")
def build_mlp(*, input_shape: tuple[int, ...], num_classes: int) -> MLP:
    """Build an MLP over the flattened sample (any ``(F,)`` or ``(C, H, W)`` shape)."""
    return MLP(in_features=math.prod(input_shape), num_classes=num_classes)
