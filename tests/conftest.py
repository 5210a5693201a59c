"""Test-wide defaults: the shared real data, quiet Flower, a seeded torch, markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
if "FEDUNLEARN_DATA" not in os.environ and SHARED_DATA.is_dir():
    os.environ["FEDUNLEARN_DATA"] = str(SHARED_DATA)
# Decoded datasets are cached here (not in ~/.cache), shared by the Ray actors of e2e tests.
os.environ.setdefault("FEDUNLEARN_CACHE", str(REPO / ".pytest_cache" / "fedunlearn-data"))
# Tiny test tensors are slower with several threads on a busy 2-core machine.
torch.set_num_threads(1)


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded torch generator for synthetic tensors."""
    return torch.Generator().manual_seed(0)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data folder (MNIST); tests needing it fail loudly if it is absent."""
    root = Path(os.environ["FEDUNLEARN_DATA"])
    assert (root / "MNIST" / "raw" / "train-images-idx3-ubyte").exists(), (
        f"real MNIST not found under {root}; set FEDUNLEARN_DATA to the shared data folder"
    )
    return root


@pytest.fixture(scope="session", autouse=True)
def _warm_torch() -> None:
    """Pay torch's one-off lazy imports (the first optimizer pulls in torch._dynamo, ~4 s)
    once per session, outside any single test's timing."""
    param = torch.nn.Parameter(torch.zeros(1))
    torch.optim.SGD([param], lr=0.1).step()
