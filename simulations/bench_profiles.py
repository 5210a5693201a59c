"""Benchmark profiles: which cells ``fedunlearn bench`` runs, on which seeds, with which methods.

A *cell* is one federation with one deletion, run as a comparison (``simulations.comparison``):
the methods and the controls ``none`` and ``finetune`` (one per method, with that method's
step budget) serve the same request from the same trained trunk, and RT is retrained
without the deleted records. The cells are chosen so that doing nothing is FAR from RT,
so they can show whether a method forgets (ALGORITHMS.md, DESIGN.md; the evidence standard):

- ``poisoned-samples``: a small share of one client's records carry a BadNets trigger
  relabelled to class 0, and exactly those are deleted (metric: the trigger's ASR);
- ``mislabelled-samples``: a small share of one client's records carry a wrong label, which
  the model can only fit by memorising them, and exactly those are deleted (metric: FA on
  their recorded labels; MIA on them);
- ``class-only-client``: every sample of one class is on the forgetting client (the rest
  IID), which deletes that class (metric: FA on it);
- ``backdoor-client-iid`` / ``backdoor-client-dirichlet``: a backdoored client leaves
  (metric: ASR), under IID and under Dirichlet(0.1) data.

Every deletion is served after the last round (primary); ``*-mid`` cells file it earlier and
keep training (secondary rows, always with ``none`` beside them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from fedunlearn.config import DataConfig

#: The fedunlearn methods every evidence cell compares (with the controls and RT).
EVIDENCE_METHODS: tuple[str, ...] = ("partial_amnesiac", "partial_label_flip", "sfr_on", "sfr_on@uniform")


@dataclass(frozen=True)
class BenchCell:
    """One cell: its name, the flat run-config values that make it, and its deletion.

    ``deletion`` is a schedule entry with ``{R}`` for the last round (and ``{label}`` for
    the class a ``class`` deletion's client holds most of), e.g. ``"{R}:1:corrupted"``;
    ``filed_at`` moves it earlier (secondary, mid-training cells).
    """

    name: str
    description: str
    deletion: str
    settings: Mapping[str, Any] = field(default_factory=dict)
    role: Literal["primary", "secondary"] = "primary"
    filed_at: int | None = None

    def schedule(self, *, rounds: int, label: int | None = None) -> str:
        """The cell's deletion schedule for a run of ``rounds`` rounds."""
        when = self.filed_at if self.filed_at is not None else rounds
        return self.deletion.format(R=when, label=label)


@dataclass(frozen=True)
class Profile:
    """A benchmark: its cells, seeds, shared settings and methods.

    ``settings`` are flat run-config values shared by every cell (a cell's own override
    them); ``method_settings`` are each method's ``unlearn.<method>.*`` values, tuned on
    ``tune_seeds`` (never the reported ``seeds``).
    """

    name: str
    cells: tuple[BenchCell, ...]
    seeds: tuple[int, ...]
    settings: Mapping[str, Any]
    methods: tuple[str, ...] = EVIDENCE_METHODS
    method_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tune_seeds: tuple[int, ...] = (100, 101, 102)

    def cell(self, name: str) -> BenchCell:
        """The cell called ``name``."""
        return next(c for c in self.cells if c.name == name)

    def flat(self, cell: BenchCell, *, seed: int) -> dict[str, Any]:
        """The flat run config of one cell and seed (its schedule not yet resolved)."""
        return {**self.settings, **cell.settings, "run.seed": seed}


def largest_share(counts: np.ndarray, *, client: int, min_count: int = 20) -> tuple[int, float]:
    """From per-client class counts (clients x classes): the label whose samples ``client``
    holds the largest share of, among labels it has at least ``min_count`` samples of
    (fewer when it has none that many), and that share."""
    share = counts[client] / np.maximum(counts.sum(axis=0), 1)
    enough = counts[client] >= min(min_count, int(counts[client].max()))
    label = int(np.argmax(np.where(enough, share, -1.0)))
    return label, float(share[label])


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


_LENET = {
    "data.dataset": "mnist",
    "train.model": "lenet",
    "data.num-clients": 5,
    "train.momentum": 0.9,
    "train.lr": 0.05,
    "train.batch-size": 32,
    "history.keep-ratio": 0.1,
    "train.rounds": 10,
    "train.local-epochs": 2,
    "data.samples-per-client": 2000,
    "data.test-samples": 2000,
}


def _cells(*, sample_share: float, backdoor_share: float, mislabel_epochs: int) -> tuple[BenchCell, ...]:
    trigger = {"experiment.corrupt-kind": "trigger", "experiment.trigger-target": 0}
    return (
        BenchCell(
            "poisoned-samples",
            f"{100 * sample_share:.0f}% of client 1's records carry a trigger relabelled 0; exactly those are deleted",
            "{R}:1:corrupted",
            {**trigger, "experiment.corrupt-client": 1, "experiment.corrupt-fraction": sample_share},
        ),
        BenchCell(
            "mislabelled-samples",
            f"{100 * sample_share:.0f}% of client 1's records carry a wrong label; exactly those are deleted",
            "{R}:1:corrupted",
            {
                "experiment.corrupt-client": 1,
                "experiment.corrupt-kind": "mislabel",
                "experiment.corrupt-fraction": sample_share,
                "train.local-epochs": mislabel_epochs,
            },
        ),
        BenchCell(
            "class-only-client",
            "every sample of class 7 is on client 1 (the rest IID); client 1 deletes class 7",
            "{R}:1:class:7",
            {"data.exclusive-class": 7, "data.exclusive-client": 1},
        ),
        BenchCell(
            "backdoor-client-iid",
            f"client 3 trains with a trigger on {100 * backdoor_share:.0f}% of its records (relabelled 0), then leaves",
            "{R}:3:client",
            {**trigger, "experiment.corrupt-client": 3, "experiment.corrupt-fraction": backdoor_share},
        ),
        BenchCell(
            "backdoor-client-dirichlet",
            "as backdoor-client-iid, with Dirichlet(0.1) non-IID data",
            "{R}:3:client",
            {
                **trigger,
                "experiment.corrupt-client": 3,
                "experiment.corrupt-fraction": backdoor_share,
                "data.partition": "dirichlet",
                "data.dirichlet-alpha": 0.1,
            },
        ),
    )


#: Per-method phase settings: the budget of outer steps I (a verified phase stops earlier),
#: the remain steps K, and method knobs. The verified phase adapts the strength within I.
METHOD_SETTINGS: Mapping[str, Mapping[str, Any]] = {
    "partial_amnesiac": {"unlearn.partial_amnesiac.outer-steps": 6, "unlearn.partial_amnesiac.remain-steps": 2},
    "partial_label_flip": {
        "unlearn.partial_label_flip.outer-steps": 5,
        "unlearn.partial_label_flip.remain-steps": 5,
        "unlearn.partial_label_flip.epochs": 5,
        "unlearn.partial_label_flip.lr": 0.05,
    },
    "sfr_on": {"unlearn.sfr_on.outer-steps": 3, "unlearn.sfr_on.remain-steps": 5, "unlearn.sfr_on.iters": 60},
    # SFR-on with equal weights on the deleted records (temperature 0, a documented deviation):
    # the official adaptive weights stall on records fitted with ~0 loss (docs/SFR_ON.md).
    "sfr_on@uniform": {
        "unlearn.sfr_on.outer-steps": 3,
        "unlearn.sfr_on.remain-steps": 5,
        "unlearn.sfr_on.iters": 60,
        "unlearn.sfr_on.temperature": 0.0,
    },
}
#: Partial amnesiac with no remain steps: the history sum in one exchange, then the commit
#: (the paper's "without fine-tuning"; the cheapest phase shape).
_NO_SLOW = {**METHOD_SETTINGS["partial_amnesiac"], "unlearn.partial_amnesiac.remain-steps": 0}
#: Verification targets of the benchmark: forget down to RT's level where it can be known.
_TARGETS = {"unlearn.asr-target": 0.02, "unlearn.class-target-fa": 0.02}

#: Secondary cells: what the primary ones leave open, each chosen before its results were seen.
_EVIDENCE_SECONDARY = (
    BenchCell(
        "iid-samples",
        "client 1 deletes 100 random records of IID data (a patient's images; nothing sets them apart)",
        "{R}:1:sample:100",
        role="secondary",
    ),
    BenchCell(
        "backdoor-client-dirichlet-guard10",
        "as backdoor-client-dirichlet, with a 10-point accuracy guard (unlearn.max-ta-drop=0.1) instead of 3: "
        "a client leaving a non-IID federation takes accuracy only it provided",
        "{R}:3:client",
        {
            "experiment.corrupt-kind": "trigger",
            "experiment.trigger-target": 0,
            "experiment.corrupt-client": 3,
            "experiment.corrupt-fraction": 0.5,
            "data.partition": "dirichlet",
            "data.dirichlet-alpha": 0.1,
            "unlearn.max-ta-drop": 0.1,
        },
        role="secondary",
    ),
)

EVIDENCE = Profile(
    name="evidence",
    cells=(*_cells(sample_share=0.05, backdoor_share=0.5, mislabel_epochs=5), *_EVIDENCE_SECONDARY),
    seeds=(0, 1, 2),
    settings={**_LENET, **_TARGETS},
    method_settings=METHOD_SETTINGS,
)

#: A small MLP federation: the same kinds of cells in a few minutes (a regression check).
QUICK = Profile(
    name="quick",
    cells=tuple(
        c
        for c in _cells(sample_share=0.1, backdoor_share=0.5, mislabel_epochs=3)
        if c.name in ("poisoned-samples", "class-only-client", "backdoor-client-iid")
    ),
    seeds=(0,),
    settings={
        **_LENET,
        **_TARGETS,
        "train.model": "mlp",
        "data.num-clients": 4,
        "data.samples-per-client": 500,
        "data.test-samples": 1000,
        "train.rounds": 5,
        "train.local-epochs": 3,
        "train.lr": 0.1,
        "train.momentum": 0.0,
    },
    method_settings=METHOD_SETTINGS,
)

_FULL_MNIST = {
    **_LENET,
    "data.num-clients": 10,
    "data.samples-per-client": "",
    "data.test-samples": "",
    "train.rounds": 20,
    "train.local-epochs": 1,
    "train.batch-size": 64,
    "history.keep-ratio": 0.02,
    "history.dtype": "float16",
}


def _concurrent(clients: int) -> BenchCell:
    entries = ";".join(f"{{R}}:{k}:sample:0.01" for k in range(1, clients + 1))
    return BenchCell(f"concurrent-{clients}", f"clients 1-{clients} each delete 1% of their records at once", entries)


#: Issue "unlearning at a thousandth of retraining's cost": full MNIST, 10 clients, 20 rounds.
#: Sample, class and client deletions after the last round, concurrent requests, a history
#: budget, and 100 clients with client sampling.
COST = Profile(
    name="cost",
    cells=(
        BenchCell("sample-1pct", "client 1 deletes a random 1% of its records", "{R}:1:sample:0.01"),
        *(
            c
            for c in _cells(sample_share=0.05, backdoor_share=0.5, mislabel_epochs=1)
            if c.name != "mislabelled-samples" and c.name != "backdoor-client-dirichlet"
        ),
        _concurrent(2),
        _concurrent(9),
        BenchCell(
            "poisoned-budget",
            "as poisoned-samples, each client's history capped at 5 MB (its oldest rounds dropped)",
            "{R}:1:corrupted",
            {
                "experiment.corrupt-client": 1,
                "experiment.corrupt-kind": "trigger",
                "experiment.corrupt-fraction": 0.05,
                "history.budget-mb": 5.0,
            },
        ),
        BenchCell(
            "clients-100",
            "100 clients, 20% sampled per round: client 0 (sampled once) and client 5 (never sampled) delete 5%",
            "{R}:0:sample:0.05;{R}:5:sample:0.05",
            {"data.num-clients": 100, "train.fraction": 0.2, "train.rounds": 5},
        ),
    ),
    seeds=(0,),
    settings={**_FULL_MNIST, **_TARGETS},
    # The amnesiac path with its slow steps in the fast exchange (two round trips in all),
    # next to the sequential one: what the saved round trip costs in fidelity.
    # The cheaper shapes: no remain steps at all (the history sum and the commit), and the slow
    # steps in the fast exchange on a 20% sample of the remaining clients.
    methods=(*EVIDENCE_METHODS, "partial_amnesiac@parallel", "partial_amnesiac@no-slow", "partial_amnesiac@sampled"),
    method_settings={
        **METHOD_SETTINGS,
        "partial_amnesiac@parallel": {**METHOD_SETTINGS["partial_amnesiac"], "unlearn.parallel-slow": True},
        "partial_amnesiac@no-slow": _NO_SLOW,
        "partial_amnesiac@sampled": {
            **METHOD_SETTINGS["partial_amnesiac"],
            "unlearn.parallel-slow": True,
            "unlearn.remain-fraction": 0.2,
        },
    },
)

#: The partial-unlearning paper's methods, federated (issue "the paper's four figures"):
#: a class held by one client, deleted by that client after the last round. Each naive method
#: runs with its partial version's settings; ``partial_amnesiac@no-slow`` has no remain steps,
#: which is the paper's "without fine-tuning". Final points, not per-step curves.
PAPER_METHODS: tuple[str, ...] = (
    "amnesiac",
    "partial_amnesiac",
    "partial_amnesiac@no-slow",
    "label_flip",
    "partial_label_flip",
    "gradient_ascent",
    "partial_gradient_ascent",
)


def _as_method(settings: Mapping[str, Any], method: str) -> dict[str, Any]:
    """``settings`` of one method (``unlearn.<a>.key``) as another's (``unlearn.<method>.key``)."""
    return {f"unlearn.{method}.{key.split('.', 2)[2]}": value for key, value in settings.items()}


PAPER = Profile(
    name="paper",
    cells=tuple(
        c for c in _cells(sample_share=0.05, backdoor_share=0.5, mislabel_epochs=5) if c.name == "class-only-client"
    ),
    seeds=(0, 1, 2),
    settings={**_LENET, **_TARGETS},
    methods=PAPER_METHODS,
    method_settings={
        **METHOD_SETTINGS,
        "amnesiac": _as_method(METHOD_SETTINGS["partial_amnesiac"], "amnesiac"),
        "partial_amnesiac@no-slow": _NO_SLOW,
        "label_flip": _as_method(METHOD_SETTINGS["partial_label_flip"], "label_flip"),
    },
)

#: SFR-on's ``fisher-max-batches`` (the F_r cap a deviation would keep): its effect, measured
#: where it bites. Clients of full MNIST hold 12,000 records, 94 batches of SFR-on's 128, so
#: a cap of 50 batches estimates F_r from about half of each client's retained data.
FISHER_CAP = Profile(
    name="fisher-cap",
    cells=tuple(
        c for c in _cells(sample_share=0.05, backdoor_share=0.5, mislabel_epochs=5) if c.name == "class-only-client"
    ),
    seeds=(0, 1, 2),
    settings={
        **_LENET,
        **_TARGETS,
        "data.samples-per-client": "",
        "data.test-samples": "",
        "train.rounds": 5,
        "train.local-epochs": 1,
        "train.batch-size": 64,
    },
    methods=("sfr_on@uniform", "sfr_on@uniform-cap50"),
    method_settings={
        "sfr_on@uniform": METHOD_SETTINGS["sfr_on@uniform"],
        "sfr_on@uniform-cap50": {**METHOD_SETTINGS["sfr_on@uniform"], "unlearn.sfr_on.fisher-max-batches": 50},
    },
)

PROFILES: Mapping[str, Profile] = {p.name: p for p in (QUICK, EVIDENCE, COST, PAPER, FISHER_CAP)}


def with_seeds(profile: Profile, seeds: tuple[int, ...]) -> Profile:
    """The same profile on other seeds (tuning runs on ``tune_seeds``)."""
    return dataclasses.replace(profile, seeds=seeds)
