"""The loop every per-model figure shares: load the data, resume, one cell per model, redraw.

``run_models`` loads the dataset (with an optional fallback dataset when its files are
missing), opens the figure's JSON (resuming finished models), computes each missing model
with the figure's ``compute`` function in a temporary folder (histories live there only),
saves it, and redraws the PNG after every model so a long run shows its progress.

Federated variant: ``compute`` is the seam. A ``--federated`` run will pass a function
that trains the federation (5 clients, the deletion served by one client) with the
project's engine and returns the same dict; the loop, the JSON and the plots stay as they
are.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from fedunlearn.data import DatasetBundle
from simulations.centralized_profiles import Profile
from simulations.centralized_training import check_methods
from simulations.paper.cli import load_data
from simulations.paper.results import FigureResults
from simulations.paper.settings import PaperSetup


class ComputeModel(Protocol):
    """``compute(setup, profile, bundle, model_name, workdir=...) -> JSON-ready dict``."""

    def __call__(
        self, setup: PaperSetup, profile: Profile, bundle: DatasetBundle, name: str, *, workdir: Path
    ) -> dict[str, Any]:
        """Compute one model's cell."""
        ...


Draw = Callable[[dict[str, Any], Path], Path | None]


def run_models(
    figure: str,
    setup: PaperSetup,
    *,
    labels: tuple[str, ...],
    compute: ComputeModel,
    draw: Draw,
    out: Path,
    data_root: str | None,
    fresh: bool = False,
    fallback: str | None = None,
) -> dict[str, Any]:
    """Run ``compute`` for every model of ``setup`` not finished yet; write ``<figure>.json/.png``."""
    profile = setup.profile(labels)
    check_methods(m.method for m in profile.methods)
    bundle, setup, facts = load_data(setup, data_root=data_root, fallback=fallback)
    profile = setup.profile(labels)
    results = FigureResults(out, figure, settings={**setup.to_dict(), "labels": list(labels)}, fresh=fresh)
    results.note(**facts)
    png = out / f"{figure}.png"
    for i, name in enumerate(tqdm(setup.models, desc=figure)):
        if results.done(name):
            tqdm.write(f"{figure}: {name} already in {results.path}, skipped (--fresh recomputes it)")
            continue
        with tempfile.TemporaryDirectory(prefix=f"fedunlearn-{figure}-") as tmp:
            results.put(name, compute(setup, profile, bundle, name, workdir=Path(tmp)))
        if i < len(setup.models) - 1:
            draw(results.data, png)  # progress of a long run; the last model is drawn below
    data = results.finish()
    draw(data, png)
    return data
