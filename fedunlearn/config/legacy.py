"""The flat run-config keys of fedunlearn 0.1 and the sectioned keys that replaced them.

An old key is never guessed into a new one: it is an error that names its replacement, so a
config written for 0.1 fails before round 1 with the fix in the message.
"""

from __future__ import annotations

from collections.abc import Iterable

_PER_METHOD = "unlearn.<method>."

#: Old flat key -> its new key (``unlearn.<method>.`` keys now belong to each method).
LEGACY_KEYS: dict[str, str] = {
    "num-server-rounds": "train.rounds",
    "fraction-train": "train.fraction",
    "fraction-evaluate": "train.fraction-evaluate",
    "seed": "run.seed",
    "state-root": "run.state-root",
    "out-dir": "run.out-dir",
    "round-timeout": "run.round-timeout",
    "client-threads": "train.threads",
    "deletion-schedule": "experiment.deletion-schedule",
    "retrain-mode": "experiment.deletion-schedule (RT is run by the simulation driver)",
    "phase-retries": "run.retries",
    "dataset": "data.dataset",
    "data-root": "data.root",
    "num-clients": "data.num-clients",
    "partition": "data.partition",
    "dirichlet-alpha": "data.dirichlet-alpha",
    "classes-per-client": "data.classes-per-client",
    "samples-per-client": "data.samples-per-client",
    "test-samples": "data.test-samples",
    "download": "data.download",
    "model": "train.model",
    "local-epochs": "train.local-epochs",
    "batch-size": "train.batch-size",
    "lr": "train.lr",
    "momentum": "train.momentum",
    "weight-decay": "train.weight-decay",
    "device": "train.device",
    "keep-ratio": "history.keep-ratio",
    "history-selector": "history.selector",
    "history-dtype": "history.dtype",
    "record-history": "history.record",
    "history-record-full": "history.record-full",
    "unlearn-method": "unlearn.method",
    "unlearn-remain-fraction": "unlearn.remain-fraction",
    "unlearn-alpha": "unlearn.alpha",
    "unlearn-apply-scale": "unlearn.apply-scale",
    "unlearn-max-ta-drop": "unlearn.max-ta-drop",
    "unlearn-outer-steps": _PER_METHOD + "outer-steps",
    "unlearn-remain-steps": _PER_METHOD + "remain-steps",
    "unlearn-lr": _PER_METHOD + "lr",
    "unlearn-epochs": _PER_METHOD + "epochs",
    "unlearn-max-steps": _PER_METHOD + "max-steps",
    "unlearn-batch-size": _PER_METHOD + "batch-size",
    "unlearn-select-ratio": _PER_METHOD + "select-ratio",
    "unlearn-selector": _PER_METHOD + "selector",
    "unlearn-target-fa": _PER_METHOD + "target-fa",
    "unlearn-finetune-epochs": "unlearn.amnesiac.finetune-epochs",
    "sfr-iters": "unlearn.sfr_on.iters",
    "sfr-forget-freq": "unlearn.sfr_on.forget-freq",
    "sfr-temperature": "unlearn.sfr_on.temperature",
    "sfr-forget-scale": "unlearn.sfr_on.forget-scale",
    "sfr-clip-norm": "unlearn.sfr_on.clip-norm",
    "sfr-saliency": "unlearn.sfr_on.saliency",
    "sfr-saliency-gamma": "unlearn.sfr_on.saliency-gamma",
    "sfr-lr": "unlearn.sfr_on.lr",
    "sfr-momentum": "unlearn.sfr_on.momentum",
    "sfr-weight-decay": "unlearn.sfr_on.weight-decay",
    "backdoor-client": "experiment.corrupt-client",
    "backdoor-fraction": "experiment.corrupt-fraction",
    "backdoor-target": "experiment.trigger-target",
    "backdoor-trigger-size": "experiment.trigger-size",
}


def legacy_problems(keys: Iterable[str]) -> list[str]:
    """One problem per old flat key among ``keys``, naming the key that replaced it."""
    problems = []
    for key in keys:
        if key in LEGACY_KEYS:
            new = LEGACY_KEYS[key]
            hint = " (e.g. unlearn.partial_label_flip.lr)" if new.startswith(_PER_METHOD) else ""
            problems.append(f"run-config key {key!r} was renamed: use '{new}'{hint}")
    return problems
