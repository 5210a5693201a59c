"""Model registry: architectures by name, built for a dataset's input shape and class count."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol, TypeVar

from torch import nn

from fedunlearn.errors import ConfigError, UnknownNameError

logger = logging.getLogger(__name__)

#: Side length of every image set fedunlearn loads (MNIST, MedMNIST at 28x28).
IMAGE_SIZE = 28


class ModelBuilder(Protocol):
    """Builds a fresh, randomly initialised model for inputs of ``input_shape``.

    ``input_shape`` is one sample's shape: ``(C, H, W)`` for images, ``(F,)`` for tabular
    data. A builder raises ConfigError for shapes its architecture cannot take.
    """

    def __call__(self, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        """Return a new model whose forward maps (N, *input_shape) to (N, num_classes) logits."""
        ...


B = TypeVar("B", bound=ModelBuilder)

_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[B], B]:
    """Register a builder under ``name`` (lower case); a name can be registered only once.

    Use as ``@register_model("mymodel")`` on a function ``(*, input_shape, num_classes) ->
    nn.Module``; the module defining it must be imported by ``fedunlearn/models/__init__.py``.
    """
    key = name.lower()

    def decorator(builder: B) -> B:
        if key in _BUILDERS:
            raise ConfigError(
                f"model {key!r} is already registered (by {_describe(_BUILDERS[key])}); "
                "register the new builder under another name"
            )
        _BUILDERS[key] = builder
        return builder

    return decorator


def available_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_BUILDERS)


def build_model(name: str, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build the registered model ``name`` for ``input_shape`` and ``num_classes`` outputs.

    Initialisation draws from torch's global RNG, so ``torch.manual_seed(s)`` before the
    call gives identical weights on every machine.

    Raises
    ------
    UnknownNameError
        ``name`` is not registered (the message lists the registered names).
    ConfigError
        ``input_shape`` or ``num_classes`` is invalid, or the architecture cannot take
        the input (e.g. a convolutional net given tabular ``(F,)`` input).

    >>> model = build_model("lenet", input_shape=(1, 28, 28), num_classes=10)
    >>> type(model).__name__
    'LeNet'
    """
    builder = _BUILDERS.get(name.lower())
    if builder is None:
        raise UnknownNameError("model", name, available_models())
    _check_shape_and_classes(name, input_shape, num_classes)
    model = builder(input_shape=tuple(input_shape), num_classes=num_classes)
    logger.debug(
        "built model %s for input %s, %d classes: %d parameters",
        name,
        tuple(input_shape),
        num_classes,
        count_parameters(model),
    )
    return model


def count_parameters(model: nn.Module) -> int:
    """Count the trainable parameter entries (``requires_grad``); buffers are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def require_image_input(name: str, input_shape: tuple[int, ...], *, size: int = IMAGE_SIZE) -> int:
    """Check that ``input_shape`` is ``(C, size, size)`` and return ``C``.

    Convolutional builders call this; the message says what was received and what to use.
    """
    if len(input_shape) != 3:
        raise ConfigError(
            f"model {name!r} needs image input (C, H, W); got input shape {tuple(input_shape)}; "
            "use 'mlp' for tabular data"
        )
    channels, height, width = input_shape
    if (height, width) != (size, size):
        raise ConfigError(
            f"model {name!r} is built for {size}x{size} images; got input shape {tuple(input_shape)} "
            f"(H={height}, W={width}); resize the images to {size}x{size} or use 'mlp'"
        )
    return channels


def _check_shape_and_classes(name: str, input_shape: tuple[int, ...], num_classes: int) -> None:
    """Problems every architecture shares, collected and raised once."""
    problems: list[str] = []
    shape = tuple(input_shape)
    if len(shape) not in (1, 3) or not all(isinstance(d, int) and d >= 1 for d in shape):
        problems.append(
            f"input_shape must be (F,) for tabular data or (C, H, W) for images with positive "
            f"integer sizes; got {shape} for model {name!r}"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        problems.append(f"num_classes must be an integer >= 2, got {num_classes!r} for model {name!r}")
    if problems:
        raise ConfigError(problems)


def _describe(builder: ModelBuilder) -> str:
    module = getattr(builder, "__module__", "?")
    qualname = getattr(builder, "__qualname__", type(builder).__name__)
    return f"{module}.{qualname}"
