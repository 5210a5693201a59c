"""Unit tests of the model zoo: shapes, gradients, registry errors, input checks, determinism."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn

from fedunlearn.errors import ConfigError, UnknownNameError
from fedunlearn.models import available_models, build_model, count_parameters, register_model, registry

EXPECTED_MODELS = ["alexnet", "convnet", "lenet", "mlp", "resnet9"]
CONV_MODELS = [name for name in EXPECTED_MODELS if name != "mlp"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Batches of 1-4 samples gain nothing from intra-op threads, and on a busy CPU the
    thread barriers of many small ops make a 10 ms step take a second."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _images(channels: int, *, batch: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, 28, 28, generator=generator)


def test_all_spec_models_are_registered() -> None:
    # Assert
    assert set(EXPECTED_MODELS) <= set(available_models())
    assert available_models() == sorted(available_models())


@pytest.mark.parametrize("num_classes", [2, 10, 11])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_images_map_to_logits(name: str, channels: int, num_classes: int) -> None:
    # Prepare
    torch.manual_seed(0)
    model = build_model(name, input_shape=(channels, 28, 28), num_classes=num_classes)
    x = _images(channels)
    # Execute
    train_out = model.train()(x)
    with torch.no_grad():
        eval_out = model.eval()(x)
    # Assert
    assert train_out.shape == (2, num_classes)
    assert eval_out.shape == (2, num_classes)
    assert torch.isfinite(train_out).all() and torch.isfinite(eval_out).all()


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_backward_reaches_every_parameter(name: str) -> None:
    # Prepare
    torch.manual_seed(1)
    model = build_model(name, input_shape=(3, 28, 28), num_classes=10).train()
    x, y = _images(3, batch=4, seed=1), torch.tensor([0, 3, 7, 9])
    # Execute
    nn.functional.cross_entropy(model(x), y).backward()
    # Assert: every parameter got a finite, non-zero gradient (a bias feeding BatchNorm would get ~0)
    for pname, param in model.named_parameters():
        assert param.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(param.grad).all(), f"{name}.{pname} has a non-finite gradient"
        assert param.grad.abs().max() > 1e-8, f"{name}.{pname} has an all-zero gradient"


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_same_seed_gives_identical_initial_weights(name: str) -> None:
    # Prepare / Execute
    torch.manual_seed(123)
    first = build_model(name, input_shape=(1, 28, 28), num_classes=10).state_dict()
    torch.manual_seed(123)
    second = build_model(name, input_shape=(1, 28, 28), num_classes=10).state_dict()
    torch.manual_seed(124)
    other = build_model(name, input_shape=(1, 28, 28), num_classes=10).state_dict()
    # Assert
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first if first[k].is_floating_point())


def test_unknown_name_lists_registered_models() -> None:
    # Execute
    with pytest.raises(UnknownNameError) as info:
        build_model("vgg16", input_shape=(1, 28, 28), num_classes=10)
    # Assert
    message = str(info.value)
    assert "vgg16" in message
    assert all(name in message for name in available_models())
    assert isinstance(info.value, ConfigError)


@pytest.mark.parametrize("name", CONV_MODELS)
def test_conv_models_reject_tabular_input(name: str) -> None:
    # Execute
    with pytest.raises(ConfigError) as info:
        build_model(name, input_shape=(30,), num_classes=2)
    # Assert: the message names the model, the shape received, and the way out
    message = str(info.value)
    assert repr(name) in message and "(30,)" in message and "'mlp'" in message


@pytest.mark.parametrize("name", CONV_MODELS)
def test_conv_models_reject_other_image_sizes(name: str) -> None:
    # Execute
    with pytest.raises(ConfigError) as info:
        build_model(name, input_shape=(1, 32, 32), num_classes=10)
    # Assert
    assert "28x28" in str(info.value) and "(1, 32, 32)" in str(info.value)


def test_mlp_takes_tabular_input() -> None:
    # Prepare
    torch.manual_seed(0)
    model = build_model("mlp", input_shape=(30,), num_classes=2)
    x = torch.randn(5, 30, generator=torch.Generator().manual_seed(0))
    # Execute
    out = model(x)
    out.sum().backward()
    # Assert
    assert out.shape == (5, 2)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("input_shape", "num_classes", "fragments"),
    [
        ((1, 28), 10, ["input_shape", "(1, 28)"]),
        ((0, 28, 28), 10, ["input_shape", "(0, 28, 28)"]),
        ((1, 28, 28), 1, ["num_classes", ">= 2", "got 1"]),
        ((1, 28), 0, ["input_shape", "num_classes"]),  # both problems in one error
    ],
)
def test_invalid_shape_or_classes_raise_config_error(
    input_shape: tuple[int, ...], num_classes: int, fragments: list[str]
) -> None:
    # Execute
    with pytest.raises(ConfigError) as info:
        build_model("mlp", input_shape=input_shape, num_classes=num_classes)
    # Assert
    assert all(fragment in str(info.value) for fragment in fragments)


def test_count_parameters_counts_only_trainable_entries() -> None:
    # Prepare
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))
    model[0].weight.requires_grad_(False)
    # Execute
    count = count_parameters(model)
    # Assert: 3 (bias) + 6 (BatchNorm affine; running stats are buffers) + 8 (second Linear)
    assert count == 3 + 6 + 3 * 2 + 2


def test_lenet_has_lenet5_size() -> None:
    # Execute
    count = count_parameters(build_model("lenet", input_shape=(1, 28, 28), num_classes=10))
    # Assert: the spec's LeNet-5 band
    assert 44_000 <= count <= 62_000


@pytest.mark.parametrize(
    ("name", "low", "high"), [("convnet", 0, 500_000), ("alexnet", 0, 2_500_000), ("resnet9", 500_000, 2_500_000)]
)
def test_models_stay_within_their_size_budget(name: str, low: int, high: int) -> None:
    # Execute
    count = count_parameters(build_model(name, input_shape=(3, 28, 28), num_classes=11))
    # Assert
    assert low <= count < high


def test_register_model_adds_a_buildable_name_and_rejects_duplicates(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: register into a copy so the real registry is untouched
    monkeypatch.setattr(registry, "_BUILDERS", dict(registry._BUILDERS))

    @register_model("Tiny")
    def build_tiny(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return nn.Linear(input_shape[0], num_classes)

    # Execute
    model = build_model("tiny", input_shape=(4,), num_classes=3)
    # Assert
    assert "tiny" in available_models()
    assert model(torch.zeros(1, 4)).shape == (1, 3)
    with pytest.raises(ConfigError, match="already registered"):
        register_model("tiny")(build_tiny)


@pytest.mark.parametrize("name", EXPECTED_MODELS)
def test_a_single_sample_batch_trains(name: str) -> None:
    # Prepare: a client's last batch can hold one sample (BatchNorm must still work)
    torch.manual_seed(0)
    model = build_model(name, input_shape=(1, 28, 28), num_classes=10).train()
    # Execute
    loss = nn.functional.cross_entropy(model(_images(1, batch=1)), torch.tensor([4]))
    loss.backward()
    # Assert
    assert torch.isfinite(loss)
