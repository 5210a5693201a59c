"""Records the pruned update of every local step while a round trains (a training StepObserver).

For each optimizer step: Delta = theta_after - theta_before (the step actually taken, so
momentum and weight decay are included), select ``ceil(rho * |Delta_l|)`` entries per layer
(ALGORITHMS.md, "Update history"), and append them with the batch's sample ids to the
round's file. Buffers are allocated on the first step and reused, so memory stays at one
step's worth whatever the number of steps or rounds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
from torch import nn

from fedunlearn.config import HistoryConfig
from fedunlearn.errors import HistoryError
from fedunlearn.history.layout import RECORD_HEADER, RECORD_MAGIC, LayerSlot, ParamLayout, RecordLayout
from fedunlearn.history.pruning import NumpySelector, get_numpy_selector, select_indices
from fedunlearn.history.roundfile import RoundFileInfo, RoundFileWriter

logger = logging.getLogger(__name__)


Select = Callable[[torch.Tensor, int], torch.Tensor]


class _TorchLayer:
    """One parameter's pre-step snapshot and its slots in the record, using torch ops (any device)."""

    def __init__(self, slot: LayerSlot, param: torch.Tensor, layout: RecordLayout, record: np.ndarray) -> None:
        self.slot, self.param = slot, param
        self.snapshot = torch.empty_like(param, memory_format=torch.contiguous_format)
        index_view = layout.index_view(record, slot)
        self.indices = None if index_view is None else torch.from_numpy(index_view)
        self.values = torch.from_numpy(layout.value_view(record, slot))

    def snap(self) -> None:
        """Copy the parameter into the preallocated snapshot."""
        self.snapshot.copy_(self.param)

    def record(self, select: Select) -> None:
        """Turn the snapshot into theta_after - theta_before and write the kept entries."""
        delta = torch.sub(self.param, self.snapshot, out=self.snapshot).view(-1)
        if self.indices is None:
            self.values.copy_(delta)
            return
        idx = select(delta, self.slot.keep)
        self.indices.copy_(idx)
        self.values.copy_(delta.index_select(0, idx.to(delta.device)))


class _NumpyLayer(_TorchLayer):
    """The same for a contiguous CPU parameter, through numpy views (a few times less overhead per op)."""

    def __init__(
        self,
        slot: LayerSlot,
        param: torch.Tensor,
        layout: RecordLayout,
        record: np.ndarray,
        select_np: NumpySelector | None,
    ) -> None:
        super().__init__(slot, param, layout, record)
        self.select_np = select_np
        self.param_np = param.numpy().reshape(-1)  # shares memory with the parameter
        self.snapshot_np = self.snapshot.numpy().reshape(-1)
        self.indices_np = layout.index_view(record, slot)
        self.values_np = layout.value_view(record, slot)

    def snap(self) -> None:
        """Copy the parameter into the preallocated snapshot."""
        np.copyto(self.snapshot_np, self.param_np)

    def record(self, select: Select) -> None:
        """Turn the snapshot into theta_after - theta_before and write the kept entries."""
        delta = np.subtract(self.param_np, self.snapshot_np, out=self.snapshot_np)
        if self.indices_np is None:
            np.copyto(self.values_np, delta, casting="same_kind")
            return
        if self.select_np is not None:
            idx = self.select_np(delta, self.slot.keep)
        else:
            idx = select(self.snapshot.view(-1), self.slot.keep).numpy()
        np.copyto(self.indices_np, idx, casting="unsafe")  # int64 -> int32 (checked: numel < 2**31)
        np.copyto(self.values_np, delta[idx], casting="same_kind")


def _layer(
    slot: LayerSlot, param: torch.Tensor, layout: RecordLayout, record: np.ndarray, *, select_np: NumpySelector | None
) -> _TorchLayer:
    """Pick the numpy implementation for contiguous float32 CPU parameters, torch otherwise."""
    if param.device.type == "cpu" and param.is_contiguous() and param.dtype == torch.float32:
        return _NumpyLayer(slot, param, layout, record, select_np)
    return _TorchLayer(slot, param, layout, record)


class RoundRecorder:
    """Context manager and training observer that writes one round of a HistoryStore.

    Get one from ``HistoryStore.record_round``; pass it as ``observer`` to ``train_local``.
    On normal exit the round is committed atomically; on an exception the partial file is
    deleted, nothing is committed, and the exception propagates.

    >>> import tempfile
    >>> from fedunlearn.history import HistoryStore
    >>> model = nn.Linear(4, 3)
    >>> store = HistoryStore.for_model(tempfile.mkdtemp(), model=model, config=HistoryConfig(keep_ratio=0.5))
    >>> with store.record_round(1) as rec:
    ...     rec.before_step(model)
    ...     with torch.no_grad():
    ...         _ = model.weight.add_(1.0)
    ...     rec.after_step(model, torch.tensor([7, 8]))
    >>> store.rounds(), rec.steps
    ([1], 1)
    """

    def __init__(
        self,
        *,
        round_number: int,
        path: Path,
        layout: ParamLayout,
        config: HistoryConfig,
        digest: bytes,
        generator: torch.Generator | None,
        commit: Callable[[Path, RoundFileInfo], None],
    ) -> None:
        self.round = round_number
        self._path, self._layout, self._digest, self._commit = path, layout, digest, commit
        self._records = RecordLayout(layout, config)
        self._selector = config.selector
        self._select_np = get_numpy_selector(self._selector)  # unknown name fails before training starts
        self._generator = generator if generator is not None else torch.Generator().manual_seed(round_number)
        self._record = np.zeros(self._records.record_bytes, dtype=np.uint8)
        self._layers: list[_TorchLayer] = []
        self._model: nn.Module | None = None
        self._writer: RoundFileWriter | None = None
        self._pending = False
        self._steps = 0
        self._used = False

    @property
    def steps(self) -> int:
        """Steps recorded so far in this round."""
        return self._steps

    def __enter__(self) -> RoundRecorder:
        if self._writer is not None or self._used:
            raise HistoryError(f"this recorder of round {self.round} was already used; call store.record_round again")
        self._used = True
        self._writer = RoundFileWriter(self._path, round_number=self.round, digest=self._digest)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        writer, self._writer = self._writer, None
        if writer is None:
            return
        if exc_type is not None:
            writer.abort()
            logger.info("round %d not recorded: training raised %s", self.round, exc_type.__name__)
            return
        try:
            info = writer.finish()
        except BaseException:
            writer.abort()
            raise
        try:
            self._commit(self._path, info)
        except BaseException:
            self._path.unlink(missing_ok=True)
            raise

    def before_step(self, model: nn.Module) -> None:
        """Snapshot the trainable parameters into preallocated buffers."""
        if self._writer is None:
            raise HistoryError("before_step called outside 'with store.record_round(r) as rec:'")
        with torch.no_grad():
            for layer in self._bind(model):
                layer.snap()
        self._pending = True

    def after_step(self, model: nn.Module, sample_ids: torch.Tensor) -> None:
        """Select and append ``theta_after - theta_before`` with the batch's sample ids."""
        if self._writer is None or not self._pending or model is not self._model:
            raise HistoryError("after_step must follow before_step on the same model, inside record_round")
        with torch.no_grad(), np.errstate(over="ignore", invalid="ignore"):  # overflow is checked next
            for layer in self._layers:
                layer.record(self._select)
        self._check_finite()
        RECORD_HEADER.pack_into(self._record.data, 0, RECORD_MAGIC, self._steps)
        self._writer.append(self._record, sample_ids.detach().cpu().numpy())
        self._steps += 1
        self._pending = False

    def _select(self, flat: torch.Tensor, k: int) -> torch.Tensor:
        return select_indices(flat, k, selector=self._selector, generator=self._generator)

    def _check_finite(self) -> None:
        values = self._records.all_values(self._record)
        if not np.isfinite(values).all():
            raise HistoryError(
                f"round {self.round}, step {self._steps}: the update holds NaN/Inf after conversion to "
                f"{values.dtype.name} (float16 overflows above 65504). Use value_dtype='float32' or lower "
                "the learning rate."
            )

    def _bind(self, model: nn.Module) -> list[_TorchLayer]:
        """Allocate buffers on the first step; check the model keeps the store's layout."""
        if self._layers and model is self._model:
            return self._layers
        problem = self._layout.difference(ParamLayout.from_model(model))
        if problem:
            raise HistoryError(f"the model does not match this history's parameter layout: {problem}")
        params = [p.detach() for p in model.parameters()]
        pairs = zip(self._records.slots, params, strict=True)
        self._model, self._layers = (
            model,
            [_layer(slot, p, self._records, self._record, select_np=self._select_np) for slot, p in pairs],
        )
        return self._layers
