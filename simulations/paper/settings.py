"""What one paper-figure run trains and unlearns: frozen settings, their quick and full sizes.

A ``PaperSetup`` fixes the dataset, the models, the training (plain SGD on fixed
class-stratified batches, see ``simulations.paper.batches``), the keep ratio rho of the
partial methods, the deletion (which class, or how many batches), the evaluation caps and
the seed. ``profile`` turns it into the ``simulations.centralized_profiles.Profile`` that
the shared adapter (``simulations.centralized_training``) reads, so every unlearning method
runs with the hyper-parameters tuned for the centralized reproduction (see the comments in
``centralized_profiles``).

The forget class defaults to 3: the paper's Figure 3 shows class activation maps of classes
3 and 1, which we read as the forgotten class and a retained control.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from fedunlearn.errors import ConfigError
from simulations.centralized_profiles import METHODS, UNLEARN_DEFAULTS, DatasetSpec, MethodSpec, Profile
from simulations.paper.batches import DELETION_KINDS, PLANS, DeletionKind

#: Rows of Figures 1-2: the paper's methods, naive and layer-wise partial.
CURVE_LABELS = (
    "amnesiac",
    "partial_amnesiac",
    "label_flip",
    "partial_label_flip",
    "gradient_ascent",
    "partial_gradient_ascent",
)
#: Extra rows: the gold standard and conventional amnesiac followed by its fine-tuning.
REFERENCE_LABELS = ("RT", "amnesiac+ft")


@dataclass(frozen=True)
class PaperSetup:
    """Settings of one figure run (validated on construction).

    ``train_samples`` / ``test_samples`` cap the splits (seeded; None: all); ``batches``
    names the fixed batch plan (``batches.PLANS``: "stratified" or "class_sorted"). The deletion is
    ``delete`` ("class": samples of ``forget_class``; "sample": one random sample per
    affected batch) in ``affected`` of the batches (1.0 with "class": the whole class).
    ``eval_samples`` caps each of FA/RA/TA's evaluation sets along the curves;
    ``curve_points`` is the number of points of each unlearning curve.
    """

    dataset: str
    models: tuple[str, ...]
    epochs: int
    train_samples: int | None = None
    test_samples: int | None = None
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.0
    keep_ratio: float = 0.1
    forget_class: int = 3
    batches: str = "stratified"
    delete: DeletionKind = "class"
    affected: float = 1.0
    eval_samples: int = 2000
    curve_points: int = 11
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if not self.models:
            problems.append("at least one model is needed")
        if not 0.0 < self.keep_ratio < 1.0:
            problems.append(f"keep_ratio must be in (0, 1), got {self.keep_ratio}")
        if self.batches not in PLANS:
            problems.append(f"batches must be one of {sorted(PLANS)}, got {self.batches!r}")
        if self.delete not in DELETION_KINDS:
            problems.append(f"delete must be one of {DELETION_KINDS}, got {self.delete!r}")
        if not 0.0 < self.affected <= 1.0:
            problems.append(f"affected must be in (0, 1], got {self.affected}")
        for name in ("epochs", "batch_size", "eval_samples", "curve_points"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ConfigError(problems)

    def profile(self, labels: tuple[str, ...] = CURVE_LABELS + REFERENCE_LABELS) -> Profile:
        """The centralized Profile with these settings and the method rows ``labels`` (+ RT)."""
        rows = {m.label: m for m in METHODS}
        unknown = [x for x in labels if x not in rows]
        if unknown:
            raise ConfigError(f"unknown method row(s) {unknown}; known: {sorted(rows)}")
        spec = DatasetSpec(self.dataset, self.models, self.train_samples, self.test_samples, self.forget_class)
        return Profile(
            name="paper",
            datasets=(spec,),
            methods=tuple(rows[x] for x in dict.fromkeys(("RT", *labels))),
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            momentum=self.momentum,
            keep_ratio=self.keep_ratio,
            unlearn=dict(UNLEARN_DEFAULTS),
        )

    def replace(self, **changes: Any) -> PaperSetup:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings (recorded in every output file)."""
        return dataclasses.asdict(self)


def row(profile: Profile, label: str) -> MethodSpec:
    """The method row ``label`` of ``profile`` (ConfigError naming the rows it has)."""
    found = profile.method(label)
    if found is None:
        raise ConfigError(f"the profile has no row {label!r}; rows: {[m.label for m in profile.methods]}")
    return found


#: Sizes per figure: quick (about a minute or two on one core, used by the tests) and full.
#: Full Figure 1/3/4 runs use 57,600 MNIST training images: 900 batches of 64, so that every
#: percentage of Figure 4 is a whole number of batches.
QUICK_MNIST = PaperSetup(
    dataset="mnist", models=("mlp", "lenet"), epochs=2, train_samples=6400, test_samples=2000, eval_samples=1000
)
FULL_MNIST = PaperSetup(dataset="mnist", models=("mlp", "lenet", "resnet9"), epochs=5, train_samples=57_600)
QUICK_ORGAN = QUICK_MNIST.replace(dataset="organamnist", models=("convnet",))
FULL_ORGAN = FULL_MNIST.replace(dataset="organamnist", models=("convnet", "alexnet", "resnet9"), train_samples=None)
