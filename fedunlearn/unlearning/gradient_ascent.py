"""Gradient ascent and partial gradient ascent (the seed's optimization-based unlearning).

ALGORITHMS.md, "Optimization-based (gradient ascent) and its partial version": ascend the
mean CE of D_f with true labels, ``Delta = +lr * grad`` per batch (plain SGD, lr
``config.lr``, batch ``config.batch_size``); the partial version applies the layer-wise
selection of each step. Budget: ``config.epochs`` passes and at most ``config.max_steps``
steps; with ``config.target_fa`` set, FA on D_f is measured before each epoch (and at the
end) and the ascent stops once FA <= target_fa.

Not included: the optional descent term on a D_r batch that ALGORITHMS.md mentions (no
config field selects it; SFR-on is the method that mixes in D_r), and the official
SFR-on repository's gradient clipping for its GA baseline (ALGORITHMS.md does not ask for it).
"""

from __future__ import annotations

import warnings

from fedunlearn.types import Delta
from fedunlearn.unlearning.common import Workspace, unlearning_method
from fedunlearn.unlearning.steps import run_forget_passes


def _ascent(ws: Workspace, *, partial: bool) -> Delta:
    report = run_forget_passes(ws, ws.split.forget, ascent=True, partial=partial, target_fa=ws.config.target_fa)
    ws.info.update(fa=report.fa, reached_target=report.reached_target, target_fa=ws.config.target_fa)
    return ws.change()


@unlearning_method("gradient_ascent")
def gradient_ascent(ws: Workspace) -> Delta:
    """Naive gradient ascent on D_f.

    Reads ``epochs``, ``max_steps``, ``batch_size``, ``lr``, ``target_fa``, ``context.seed``.
    ``info`` reports the last FA measured and whether the target was reached.
    """
    return _ascent(ws, partial=False)


@unlearning_method("partial_gradient_ascent")
def partial_gradient_ascent(ws: Workspace) -> Delta:
    """Gradient ascent with each step restricted to its layer-wise selection.

    Reads what ``gradient_ascent`` reads plus ``select_ratio`` and ``selector``; warns when
    ``select_ratio`` is 1.0 (then it equals ``gradient_ascent``).
    """
    if ws.config.select_ratio == 1.0:
        warnings.warn(
            "partial_gradient_ascent with select_ratio=1.0 selects every entry: it is gradient_ascent", stacklevel=3
        )
    ws.info["select_ratio"] = ws.config.select_ratio
    return _ascent(ws, partial=True)
