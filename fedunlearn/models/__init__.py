"""Model zoo for 28x28 images and tabular data: mlp, lenet, convnet, alexnet, resnet9."""

from fedunlearn.models.registry import available_models, build_model, count_parameters, register_model

# Imported for their registration side effect (each module registers its builder).
from fedunlearn.models import alexnet, convnet, lenet, mlp, resnet9  # noqa: E402, F401  isort: skip

__all__ = ["available_models", "build_model", "count_parameters", "register_model"]
