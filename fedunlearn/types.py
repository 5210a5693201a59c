"""Type aliases shared across fedunlearn, so signatures read in the papers' vocabulary."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeAlias

import numpy as np
import numpy.typing as npt
import torch

#: A model's tensors by name, as returned by ``nn.Module.state_dict()``.
StateDict: TypeAlias = dict[str, torch.Tensor]
#: A read-only view of named tensors (parameters or deltas).
TensorMap: TypeAlias = Mapping[str, torch.Tensor]
#: A change of parameters by name: ``theta_after - theta_before`` (same keys as the model's
#: trainable parameters).
Delta: TypeAlias = dict[str, torch.Tensor]
#: Stable integer ids of training samples (index in the official training split).
SampleIds: TypeAlias = npt.NDArray[np.int64]

PartitionKind: TypeAlias = Literal["iid", "dirichlet", "by_class"]
SelectorName: TypeAlias = Literal["topk", "random"]
ValueDtype: TypeAlias = Literal["float32", "float16"]
DeletionKind: TypeAlias = Literal["sample", "class", "client"]
