"""Amnesiac and partial amnesiac unlearning: subtract the stored updates of affected batches.

ALGORITHMS.md, "Amnesiac and partial amnesiac unlearning" (Graves et al., AAAI 2021;
Gogineni & Nadimi 2024): with A the stored steps whose batch held a forgotten sample,
the correction is ``C = - sum_{(r,b) in A} w^r * Delta_{r,b}`` (``w^r`` the round's FedAvg
weight when ``context.history_weighted``, else 1), read from ``context.history``.

The two methods run the same code; they differ in what the history holds. ``amnesiac``
expects a full history (keep_ratio 1.0) and is conventionally followed by fine-tuning on
D_r (Graves et al. need it; set ``settings.finetune_epochs``, plain SGD at ``settings.lr``,
batch ``settings.batch_size``); ``partial_amnesiac`` expects a pruned one (keep_ratio < 1) and
fine-tunes only when ``finetune_epochs > 0`` is requested explicitly. Each warns when the
history's keep_ratio suggests the other method.

The history holds trainable parameters only, so the subtraction leaves BatchNorm buffers
as they are; fine-tuning (train mode) moves them, and the correction then includes them.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from fedunlearn.config import Checks, MethodSettings
from fedunlearn.errors import UnlearningError
from fedunlearn.history import HistoryStore, HistorySum
from fedunlearn.types import Delta
from fedunlearn.unlearning.base import MethodTraits
from fedunlearn.unlearning.common import Workspace, float_state, state_difference, unlearning_method
from fedunlearn.unlearning.remain import sgd_descent

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AmnesiacSettings(MethodSettings):
    """Amnesiac settings: the optional fine-tuning on D_r after the subtraction
    (``finetune_epochs`` passes of plain SGD at ``lr``, batches of ``batch_size``; 0: none)."""

    finetune_epochs: int = 0
    lr: float = 0.01
    batch_size: int = 64

    def check(self, checks: Checks) -> None:
        """Add the fine-tuning settings' problems."""
        super().check(checks)
        checks.at_least("finetune-epochs", self.finetune_epochs, 0)
        checks.positive("lr", self.lr)
        checks.at_least("batch-size", self.batch_size, 1)


def _needs_finetune(settings: AmnesiacSettings) -> bool:
    """D_r is needed only for the optional fine-tuning."""
    return settings.finetune_epochs > 0


def _traits(history: str) -> MethodTraits:
    """The stored history is spent once: a verified phase strengthens it by scaling the same correction."""
    return MethodTraits(history=history, needs_retain=_needs_finetune, fast="once", strengthen="scale")  # type: ignore[arg-type]


def history_correction(ws: Workspace, store: HistoryStore) -> HistorySum:
    """Sum the stored deltas of the steps that touched D_f; raise if none did.

    Raises UnlearningError when no forgotten id occurs in any stored step (a request that
    overlaps nothing in the history is an error, not a silent no-op). Ids found in some
    steps but not all are reported in ``ws.info["unmatched_ids"]``.
    """
    ids = ws.split.forget.ids()
    total = store.sum_deltas(ids, weighted=ws.context.history_weighted)
    if total.num_steps == 0:
        shown = ", ".join(map(str, ids[:10])) + (" ..." if len(ids) > 10 else "")
        raise UnlearningError(
            f"{ws.name}: none of the {len(ids)} forgotten sample id(s) ({shown}) occurs in a stored step of the "
            f"history in {store.directory} (rounds {store.rounds()}). They were never trained on by this "
            "client, or their steps were purged already; check the ids and the client, or use another method."
        )
    unmatched = np.asarray(total.unmatched_ids).tolist()
    if unmatched:
        logger.warning(
            "%s: %d of %d forgotten id(s) occur in no stored step (e.g. %s); the others are undone",
            ws.name,
            len(unmatched),
            len(ids),
            unmatched[:5],
        )
    ws.info["unmatched_ids"] = unmatched
    return total


def _subtract(ws: Workspace, total: HistorySum) -> Delta:
    """Apply ``-total.delta`` to the working model's parameters; return that correction."""
    params = dict(ws.model.named_parameters())
    layout = {name: tuple(t.shape) for name, t in total.delta.items()}
    mismatch = [n for n, shape in layout.items() if n not in params or tuple(params[n].shape) != shape]
    if mismatch:
        raise UnlearningError(
            f"{ws.name}: the history's layers {mismatch[:5]} do not match the model's parameters; "
            "use the history recorded for this model"
        )
    correction = {name: -d.to(ws.device) for name, d in total.delta.items()}
    with torch.no_grad():
        for name, d in correction.items():
            params[name].add_(d.to(params[name].dtype))
    return correction


def _amnesiac(ws: Workspace) -> Delta:
    store = ws.context.history
    if store is None:
        raise UnlearningError(
            f"{ws.name} needs the client's update history: pass UnlearnContext(history=HistoryStore(...))"
        )
    total = history_correction(ws, store)
    ws.cost.history_steps = total.num_steps
    ws.info.update(rounds=list(total.rounds), keep_ratio=store.config.keep_ratio, weighted=ws.context.history_weighted)
    correction = _subtract(ws, total)
    if ws.settings.finetune_epochs == 0:
        return correction
    before = float_state(ws.model)
    ws.cost.forward_backward += sgd_descent(
        ws.model,
        ws.split.retain,
        lr=ws.settings.lr,
        batch_size=ws.settings.batch_size,
        generator=ws.generator("finetune"),
        device=ws.device,
        epochs=ws.settings.finetune_epochs,
        what=f"{ws.name} fine-tuning",
    )
    finetuned = state_difference(float_state(ws.model), before)
    return {k: v + correction[k] if k in correction else v for k, v in finetuned.items()}


@unlearning_method("amnesiac", settings=AmnesiacSettings, traits=_traits("dense"))
def amnesiac(ws: Workspace) -> Delta:
    """Conventional amnesiac: subtract the full stored updates, then fine-tune on D_r.

    Reads ``context.history`` (required), ``context.history_weighted``,
    ``finetune_epochs`` (the fine-tune Graves et al. need; 0 skips it), ``lr``,
    ``batch_size``. Warns if the history is pruned (keep_ratio < 1).
    """
    if ws.context.history is not None and ws.context.history.config.keep_ratio < 1.0:
        warnings.warn(
            f"amnesiac expects a full history (keep_ratio=1.0) but this one keeps "
            f"{ws.context.history.config.keep_ratio}; that is partial amnesiac (method 'partial_amnesiac')",
            stacklevel=3,
        )
    return _amnesiac(ws)


@unlearning_method("partial_amnesiac", settings=AmnesiacSettings, traits=_traits("pruned"))
def partial_amnesiac(ws: Workspace) -> Delta:
    """Partial amnesiac: subtract the layer-wise pruned stored updates; no fine-tuning by default.

    Reads what ``amnesiac`` reads; fine-tunes only if ``finetune_epochs > 0``. Warns if the
    history is unpruned (keep_ratio 1.0: then this is conventional amnesiac).
    """
    if ws.context.history is not None and ws.context.history.config.keep_ratio == 1.0:
        warnings.warn(
            "partial_amnesiac got an unpruned history (keep_ratio=1.0): this is conventional amnesiac "
            "(method 'amnesiac')",
            stacklevel=3,
        )
    return _amnesiac(ws)
