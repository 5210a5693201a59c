"""Benchmark profiles: which cells ``fedunlearn bench`` runs, and with which settings.

A *cell* is one dataset x model x partition x deletion, run as one Flower simulation in
which every method serves the same request from the same snapshot, followed by RT
(``simulations.bench_cell``). A profile is a frozen dataclass listing the grid, the
federation settings shared by all its cells, and the per-method unlearning settings.

Class deletion, chosen deliberately: under IID data every client holds every class, so when
one client forgets its samples of class 7 the retrained model still learns 7 from the other
clients and RT's FA on those samples stays near the test accuracy: the right answer is then
"change almost nothing". So the class is picked per partition as the label the forgetting
client holds the largest share of (``class-major``, from the seeded partition): under IID
that share is ~1/5 (the cell tests that methods do not over-forget); under the full
profile's Dirichlet(0.3) partition client 2 holds ~3/4 of one class, and RT's FA falls.
Client deletion always uses a backdoored client (trigger -> label 0), so attack success
rate measures whether its contribution is really gone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedunlearn.config import DataConfig, FederationConfig

DeletionKind = Literal["sample", "class", "client"]

#: Methods of every cell, in serving order (``pga`` and ``federaser`` only when registered).
CLIENT_METHODS: tuple[str, ...] = (
    "partial_amnesiac",
    "partial_label_flip",
    "partial_gradient_ascent",
    "amnesiac",
    "label_flip",
    "gradient_ascent",
    "sfr_on",
    "finetune",
    "pga",
)
#: Server-side phases, for client-level deletion only (FedEraser removes whole clients).
CLIENT_LEVEL_METHODS: tuple[str, ...] = ("federaser",)
#: The fedunlearn methods (the ones whose best result the headline reports).
FEDUNLEARN_METHODS: tuple[str, ...] = ("partial_amnesiac", "partial_label_flip", "partial_gradient_ascent", "sfr_on")
#: Methods of the Figure 4 sweep cells (the seed paper compares these two there).
SWEEP_METHODS: tuple[str, ...] = ("partial_amnesiac", "amnesiac")


@dataclass(frozen=True)
class Deletion:
    """One deletion request, filed by client ``client`` after the last training round.

    ``amount``: sample deletion, a fraction (< 1) or a count (>= 1) of the client's samples;
    ``label``: class deletion, the label (None: the class this client holds the largest
    share of, ``class-major``); client deletion: the client trains with a backdoor trigger.
    """

    kind: DeletionKind
    client: int
    amount: float | None = None
    label: int | None = None

    @property
    def tag(self) -> str:
        """Short name used in cell ids: sample10pct, sample8, class7, class-major, client."""
        if self.kind == "sample":
            assert self.amount is not None
            return f"sample{round(100 * self.amount)}pct" if self.amount < 1 else f"sample{int(self.amount)}"
        if self.kind == "class":
            return "class-major" if self.label is None else f"class{self.label}"
        return "client"

    def schedule(self, *, last_round: int, label: int | None = None) -> str:
        """The ``deletion-schedule`` entry (``label`` resolves a ``class-major`` deletion)."""
        if self.kind == "sample":
            amount = self.amount if self.amount is not None and self.amount < 1 else int(self.amount or 1)
            return f"{last_round}:{self.client}:sample:{amount}"
        if self.kind == "class":
            chosen = self.label if self.label is not None else label
            assert chosen is not None, "class-major needs the resolved label"
            return f"{last_round}:{self.client}:class:{chosen}"
        return f"{last_round}:{self.client}:client"


@dataclass(frozen=True)
class Cell:
    """One benchmark cell; ``role`` is ``main`` (all methods) or ``sweep`` (Figure 4)."""

    dataset: str
    model: str
    partition: str
    deletion: Deletion
    seed: int
    role: Literal["main", "sweep"] = "main"

    @property
    def cell_id(self) -> str:
        """``<dataset>-<model>-<partition>-<deletion tag>-s<seed>``: the cell's file name."""
        return f"{self.dataset}-{self.model}-{self.partition}-{self.deletion.tag}-s{self.seed}"


@dataclass(frozen=True)
class Profile:
    """A benchmark grid and the settings its cells share.

    ``method_settings``: per-method ``unlearn-*`` / ``sfr-*`` run-config values, tuned on the
    ``quick`` profile's cells with another seed (``python -m simulations.bench --tune``;
    the grid searched is ``TUNING_GRID``); ``unlearn`` holds values shared by all methods.
    """

    name: str
    datasets: tuple[str, ...]
    models: tuple[str, ...]
    partitions: tuple[str, ...]
    deletions: tuple[Deletion, ...]
    sweep: tuple[Deletion, ...] = ()  # Figure 4: sample deletions of growing size (first model, iid)
    num_clients: int = 5
    rounds: int = 5
    samples_per_client: int | None = None
    test_samples: int | None = None
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    local_epochs: int = 1
    dirichlet_alpha: float = 0.3
    keep_ratio: float = 0.02
    history_dtype: str = "float16"
    seed: int = 0
    unlearn: Mapping[str, Any] = field(default_factory=dict)
    method_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def cells(self, *, seed: int | None = None) -> list[Cell]:
        """Every cell in run order: the grid (dataset, model, partition, deletion), then the sweep."""
        s = self.seed if seed is None else seed
        grid = [
            Cell(d, m, p, x, s)
            for d in self.datasets
            for m in self.models
            for p in self.partitions
            for x in self.deletions
        ]
        sweep = [Cell(self.datasets[0], self.models[0], "iid", x, s, "sweep") for x in self.sweep]
        return grid + sweep

    def data_config(self, cell: Cell, *, data_root: str | None) -> DataConfig:
        """The cell's data and partition settings."""
        return DataConfig(
            dataset=cell.dataset,
            root=data_root,
            num_clients=self.num_clients,
            partition=cell.partition,  # type: ignore[arg-type]
            dirichlet_alpha=self.dirichlet_alpha,
            samples_per_client=self.samples_per_client,
            test_samples=self.test_samples,
        )

    def federation_config(
        self, cell: Cell, *, out_dir: Path, data_root: str | None, label: int | None = None
    ) -> FederationConfig:
        """The cell's federation (``label``: the resolved class of a ``class-major`` deletion)."""
        data = self.data_config(cell, data_root=data_root)
        run_config: dict[str, Any] = {
            "dataset": cell.dataset,
            "num-clients": self.num_clients,
            "partition": cell.partition,
            "dirichlet-alpha": self.dirichlet_alpha,
            "num-server-rounds": self.rounds,
            "seed": cell.seed,
            "model": cell.model,
            "batch-size": self.batch_size,
            "lr": self.lr,
            "momentum": self.momentum,
            "local-epochs": self.local_epochs,
            "keep-ratio": self.keep_ratio,
            "history-dtype": self.history_dtype,
            "history-record-full": True,
            "client-threads": 1,
            "out-dir": str(out_dir),
            "state-root": str(out_dir / "state"),
            "deletion-schedule": cell.deletion.schedule(last_round=self.rounds, label=label),
            **dict(self.unlearn),
        }
        if data.root is not None:
            run_config["data-root"] = data.root
        for key, value in (("samples-per-client", self.samples_per_client), ("test-samples", self.test_samples)):
            if value is not None:
                run_config[key] = value
        if cell.deletion.kind == "client":
            run_config["backdoor-client"] = cell.deletion.client
        return FederationConfig.from_run_config(run_config)

    def methods(self, cell: Cell, available: set[str]) -> list[str]:
        """The cell's method labels that are registered (``available``), in serving order."""
        wanted = CLIENT_METHODS + (CLIENT_LEVEL_METHODS if cell.deletion.kind == "client" else ())
        return [m for m in (SWEEP_METHODS if cell.role == "sweep" else wanted) if m in available]


def class_major(data: DataConfig, *, client: int, seed: int) -> tuple[int, float]:
    """The label ``client`` holds the largest share of (after the size cap), and that share."""
    from fedunlearn.data import build_federated_data

    federated = build_federated_data(data, seed=seed)
    counts = np.stack(
        [
            np.bincount(federated.client_train(k).labels.numpy(), minlength=federated.num_classes)
            for k in range(data.num_clients)
        ]
    )
    return largest_share(counts, client=client)


def largest_share(counts: np.ndarray, *, client: int, min_count: int = 20) -> tuple[int, float]:
    """From per-client class counts (clients x classes): the label whose samples ``client``
    holds the largest share of, among labels it has at least ``min_count`` samples of
    (fewer when it has none that many), and that share."""
    share = counts[client] / np.maximum(counts.sum(axis=0), 1)
    enough = counts[client] >= min(min_count, int(counts[client].max()))
    label = int(np.argmax(np.where(enough, share, -1.0)))
    return label, float(share[label])


def _v(
    outer: int,
    remain: int,
    extra: Mapping[str, Any] | None = None,
    *,
    epochs: int | None = None,
    lr: float | None = None,
) -> dict[str, Any]:
    """A tuning variant: outer steps I, remain steps K per outer step, and method knobs."""
    variant: dict[str, Any] = {"unlearn-outer-steps": outer, "unlearn-remain-steps": remain, **(extra or {})}
    variant.update({k: v for k, v in (("unlearn-epochs", epochs), ("unlearn-lr", lr)) if v is not None})
    return variant


#: Ascent variants, shared by the partial and conventional versions. Ascent diverged (NaN) on
#: the client-level cell in all first-round variants: @4-@6 were added in a second round (run
#: with --methods '*gradient_ascent@[456]'); gradient_ascent@3 was not run.
_ASCENT_VARIANTS = (
    _v(1, 0, epochs=1),
    _v(1, 5, epochs=1),
    _v(1, 5, epochs=5, lr=0.001),
    _v(3, 5, epochs=5),
    _v(1, 5, epochs=1, lr=0.001),
    _v(1, 5, {"unlearn-max-steps": 5}, lr=0.01),
    _v(3, 5, epochs=1, lr=0.001),
)

#: Per-method variants searched by ``--tune`` (on the quick cells, seed + 1); the winners
#: (lowest mean Avg.D to RT over the tuning cells) are copied into ``QUICK.method_settings``.
TUNING_GRID: Mapping[str, tuple[Mapping[str, Any], ...]] = {
    "partial_amnesiac": (_v(1, 0), _v(1, 2), _v(1, 5), _v(3, 5)),
    "amnesiac": (_v(1, 0), _v(1, 5), _v(3, 5), _v(1, 5, {"unlearn-finetune-epochs": 1})),
    "partial_label_flip": (_v(1, 0, epochs=1), _v(1, 5, epochs=1), _v(1, 5, epochs=5), _v(3, 5, epochs=5)),
    "label_flip": (_v(1, 0, epochs=1), _v(1, 5, epochs=1), _v(3, 5, epochs=5)),
    "partial_gradient_ascent": _ASCENT_VARIANTS,
    "gradient_ascent": _ASCENT_VARIANTS,
    "sfr_on": (
        _v(3, 5, {"sfr-iters": 30, "sfr-forget-scale": 5.0}),
        _v(3, 5, {"sfr-iters": 30, "sfr-forget-scale": 1.0}),
        _v(3, 5, {"sfr-iters": 150, "sfr-forget-scale": 1.0}),
        _v(3, 5, {"sfr-iters": 150, "sfr-forget-scale": 25.0}),
    ),
    "finetune": (_v(1, 0, epochs=1), _v(1, 5, epochs=1), _v(3, 5, epochs=1)),
    "pga": (_v(1, 5, epochs=1), _v(1, 5, epochs=5), _v(3, 5, epochs=5)),
}

QUICK = Profile(
    name="quick",
    datasets=("mnist",),
    models=("lenet",),
    partitions=("iid",),
    deletions=(Deletion("sample", 1, amount=0.1), Deletion("class", 2), Deletion("client", 4)),
    sweep=(Deletion("sample", 1, amount=2), Deletion("sample", 1, amount=8), Deletion("sample", 1, amount=32)),
    num_clients=5,
    rounds=5,
    samples_per_client=800,
    test_samples=1000,
    batch_size=32,
    unlearn={"unlearn-batch-size": 32},
    # Tuned with --tune (results/bench-tune*/tuning.md): per method the TUNING_GRID variant served
    # in every tuning cell with the lowest mean Avg.D to RT. Values equal to UnlearnConfig's
    # defaults are spelled out anyway, so the report lists every method's phase shape.
    method_settings={
        "partial_amnesiac": _v(1, 2),  # TUNING_GRID @1
        "amnesiac": _v(3, 5),  # @2 (the defaults)
        "partial_label_flip": _v(3, 5, epochs=5),  # @3 (the defaults)
        "label_flip": _v(3, 5, epochs=5),  # @2 (the defaults)
        "partial_gradient_ascent": _v(1, 5, epochs=1, lr=0.001),  # @4
        "gradient_ascent": _v(1, 5, epochs=1, lr=0.001),  # @4
        "sfr_on": _v(3, 5, {"sfr-iters": 30, "sfr-forget-scale": 5.0}),  # @0
        "finetune": _v(3, 5, epochs=1),  # @2
        "pga": _v(1, 5, epochs=1),  # @0
    },
)

FULL = dataclasses.replace(
    QUICK,
    name="full",
    datasets=("mnist", "organamnist"),
    models=("lenet", "mlp", "convnet"),
    partitions=("iid", "dirichlet"),
    sweep=(Deletion("sample", 1, amount=4), Deletion("sample", 1, amount=32), Deletion("sample", 1, amount=256)),
    samples_per_client=None,
    test_samples=None,
    batch_size=64,
    unlearn={"unlearn-batch-size": 64},
)

PROFILES: Mapping[str, Profile] = {"quick": QUICK, "full": FULL}
