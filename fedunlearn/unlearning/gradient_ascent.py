"""Gradient ascent and partial gradient ascent (the seed's optimization-based unlearning).

ALGORITHMS.md, "Optimization-based (gradient ascent) and its partial version": ascend the
mean CE of D_f with true labels, ``Delta = +lr * grad`` per batch (plain SGD, lr
``settings.lr``, batch ``settings.batch_size``); the partial version applies the layer-wise
selection of each step. Budget: ``settings.epochs`` passes and at most ``settings.max_steps``
steps; with ``settings.target_fa`` set, FA on D_f is measured before each epoch (and at the
end) and the ascent stops once FA <= target_fa.

Not included: the optional descent term on a D_r batch that ALGORITHMS.md mentions (no
setting selects it; SFR-on is the method that mixes in D_r), and the official
SFR-on repository's gradient clipping for its GA baseline (ALGORITHMS.md does not ask for it).
"""

from __future__ import annotations

import warnings

from fedunlearn.types import Delta
from fedunlearn.unlearning.base import MethodTraits
from fedunlearn.unlearning.common import Workspace, unlearning_method
from fedunlearn.unlearning.steps import AscentSettings, PartialAscentSettings, run_forget_passes

#: Ascent runs fresh steps from whatever model it is given: a verified phase repeats it.
TRAITS = MethodTraits(fast="once", strengthen="repeat")


def _ascent(ws: Workspace, *, partial: bool) -> Delta:
    report = run_forget_passes(ws, ws.split.forget, ascent=True, partial=partial, target_fa=ws.settings.target_fa)
    ws.info.update(fa=report.fa, reached_target=report.reached_target, target_fa=ws.settings.target_fa)
    return ws.change()


@unlearning_method("gradient_ascent", settings=AscentSettings, traits=TRAITS)
def gradient_ascent(ws: Workspace) -> Delta:
    """Naive gradient ascent on D_f.

    Reads ``epochs``, ``max_steps``, ``batch_size``, ``lr``, ``target_fa``, ``context.seed``.
    ``info`` reports the last FA measured and whether the target was reached.
    """
    return _ascent(ws, partial=False)


@unlearning_method("partial_gradient_ascent", settings=PartialAscentSettings, traits=TRAITS)
def partial_gradient_ascent(ws: Workspace) -> Delta:
    """Gradient ascent with each step restricted to its layer-wise selection.

    Reads what ``gradient_ascent`` reads plus ``select_ratio`` and ``selector``; warns when
    ``select_ratio`` is 1.0 (then it equals ``gradient_ascent``).
    """
    if ws.settings.select_ratio == 1.0:
        warnings.warn(
            "partial_gradient_ascent with select_ratio=1.0 selects every entry: it is gradient_ascent", stacklevel=3
        )
    ws.info["select_ratio"] = ws.settings.select_ratio
    return _ascent(ws, partial=True)
