"""Grad-CAM through Captum, and Figure 3's grid on a tiny LeNet run (digits bundled with scikit-learn)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from fedunlearn.errors import ConfigError
from fedunlearn.models import build_model
from simulations.paper import fig3
from simulations.paper.cam import grad_cam, last_conv
from simulations.paper.cam_plot import plot_cams
from simulations.paper.runner import run_models
from simulations.paper.settings import PaperSetup


class TwoConv(nn.Module):
    """Two convolutions, then the mean feature per channel; class 1's logit ignores the features."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(1, 2, 3, padding=1)
        self.last = nn.Conv2d(2, 2, 1)
        self.head = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.relu(self.last(torch.relu(self.first(x))))
        return self.head(features.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def cam_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], Path]]:
    out = tmp_path_factory.mktemp("fig3")
    setup = PaperSetup(dataset="digits", models=("lenet",), epochs=2, train_samples=256, batch_size=32)
    run_models("fig3", setup, labels=fig3.LABELS, compute=fig3.compute_model, draw=plot_cams, out=out, data_root=None)
    yield json.loads((out / "fig3.json").read_text()), out


def test_last_conv_is_the_last_convolution_and_mlps_have_none() -> None:
    model = TwoConv()

    assert last_conv(model) is model.last
    with pytest.raises(ConfigError, match="convolutional"):
        last_conv(build_model("mlp", input_shape=(1, 28, 28), num_classes=10))


def test_grad_cam_maps_are_input_sized_and_empty_for_a_class_the_features_do_not_feed(
    generator: torch.Generator,
) -> None:
    torch.manual_seed(0)
    model = TwoConv().train()
    with torch.no_grad():
        model.head.weight[0] = 1.0  # class 0: every channel is evidence
        model.head.weight[1] = 0.0  # class 1: no channel matters
    images = torch.randn(4, 1, 8, 8, generator=generator)

    maps = grad_cam(model, images, torch.tensor([0, 1, 0, 1]))

    assert maps.shape == (4, 8, 8) and bool((maps >= 0).all())
    assert float(maps[[1, 3]].abs().sum()) == 0.0 < float(maps[[0, 2]].sum())
    assert model.training  # train flags restored


def test_fig3_grid_has_every_model_and_the_retained_control(cam_run: tuple[dict[str, Any], Path]) -> None:
    data, out = cam_run

    cell = data["cells"]["lenet"]

    assert {"original", "RT", "partial_amnesiac", "amnesiac", "label_flip"} <= set(cell["variants"]) | set(
        cell["failed"]
    )
    assert cell["images"]["labels"] == [3, 3, 3, 1, 1, 1]
    for name, variant in cell["variants"].items():
        assert len(variant["maps"]) == 6 and len(variant["maps"][0]) == 28 == len(variant["maps"][0][0]), name
        assert set(variant["summary"]) == {"3", "1"}
    assert (out / "fig3.png").stat().st_size > 20_000


def test_rt_never_learned_the_forgotten_class(cam_run: tuple[dict[str, Any], Path]) -> None:
    summary = cam_run[0]["cells"]["lenet"]["variants"]["RT"]["summary"]

    original = cam_run[0]["cells"]["lenet"]["variants"]["original"]["summary"]
    assert summary["3"]["accuracy"] <= 0.1 and summary["3"]["p_true"] < original["3"]["p_true"]
