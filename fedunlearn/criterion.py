"""Has this site's deletion been forgotten? The check the forgetting client runs on its own data.

Nothing leaves the site but the verdict and its figures. The criterion depends on the
deletion's kind (``UnlearnConfig`` holds the targets):

- every kind: the deleted samples must score like data the model never saw, drawn like
  them (``like_deleted``: the site's held-out data, corrupted the same way when the
  deleted records are the site's known corrupted records, e.g. given wrong labels). Their
  membership AUC against those non-members (``fedunlearn.metrics.membership_score``) may
  exceed 0.5 by at most ``mia_margin`` (sample and client requests), and their accuracy on
  their recorded labels may exceed the non-members' by at most ``sample_margin``;
- class: the deleted class's accuracy is at most ``class_target_fa`` (the class is to be
  forgotten, not merely made unremarkable);
- a known trigger among the deleted records (an experiment's poisoned or backdoored
  records): its attack success rate on the site's held-out data is at most ``asr_target``.

The same function judges the model before any step: when it already passes (the data left
no measurable trace, common under IID data), a phase may commit without changing anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from fedunlearn.config import FederationConfig, UnlearnConfig
from fedunlearn.data import IndexedDataset
from fedunlearn.data.backdoor import TriggerPattern, triggered_test_set
from fedunlearn.data.corruption import mislabel
from fedunlearn.metrics import accuracy, attack_success_rate, membership_score
from fedunlearn.site import ClientSite
from fedunlearn.types import DeletionKind, SampleIds


@dataclass(frozen=True)
class CriterionResult:
    """The verdict, the figures behind it, and why it failed (empty when it passed)."""

    passed: bool
    figures: dict[str, float]
    failures: tuple[str, ...] = field(default=())

    def reason(self) -> str:
        """One line: the failed checks with their figures (or "criterion holds")."""
        return "; ".join(self.failures) if self.failures else "criterion holds"


def check_forgotten(
    site: ClientSite,
    model: nn.Module,
    *,
    kind: DeletionKind,
    forget: IndexedDataset,
    config: UnlearnConfig,
) -> CriterionResult:
    """Judge ``model`` on the deleted samples ``forget`` of a ``kind`` request, on this site."""
    holdout = site.holdout()
    reference = like_deleted(holdout, config=site.config, deleted=forget.ids(), corrupted=site.corrupted)
    figures = {"FA": accuracy(model, forget), "holdout_accuracy": accuracy(model, reference)}
    failures: list[str] = []
    if kind == "class":
        if figures["FA"] > config.class_target_fa:
            failures.append(f"deleted class still recognised: FA {figures['FA']:.3f} > target {config.class_target_fa}")
    else:
        mia = membership_score(model, forget=forget, nonmembers=reference, seed=site.config.seed)
        figures["MIA"] = mia.auc
        if mia.auc > 0.5 + config.mia_margin:
            failures.append(f"deleted samples look like members: MIA AUC {mia.auc:.3f} > {0.5 + config.mia_margin:.2f}")
        limit = figures["holdout_accuracy"] + config.sample_margin
        if figures["FA"] > limit:
            failures.append(f"deleted samples fitted better than unseen ones: FA {figures['FA']:.3f} > {limit:.3f}")
    trigger = known_trigger(site, forget.ids())
    if trigger is not None:
        figures["ASR"] = attack_success_rate(
            model, holdout, target_label=site.config.experiment.trigger_target, pattern=trigger
        )
        if figures["ASR"] > config.asr_target:
            failures.append(f"trigger still works: ASR {figures['ASR']:.3f} > target {config.asr_target}")
    return CriterionResult(not failures, figures, tuple(failures))


def like_deleted(
    data: IndexedDataset, *, config: FederationConfig, deleted: SampleIds, corrupted: SampleIds
) -> IndexedDataset:
    """Non-members drawn like the deleted records: ``data`` itself, or, when every deleted
    record is one of the known corrupted records, ``data`` corrupted the same way (all of it
    mislabelled; or its records of other classes carrying the trigger, labelled the target).

    A mislabelled record the model memorised must be compared with unseen records that are
    mislabelled too: against clean ones it looks less member-like than they do, fitted or not.
    """
    if not len(corrupted) or not len(deleted) or not bool(np.isin(deleted, corrupted).all()):
        return data
    experiment = config.experiment
    if experiment.corrupt_kind == "mislabel":
        return mislabel(data, fraction=1.0, seed=config.seed)
    triggered = triggered_test_set(
        data, target_label=experiment.trigger_target, pattern=TriggerPattern(size=experiment.trigger_size)
    )
    return triggered.with_labels(torch.full_like(triggered.labels, experiment.trigger_target))


def known_trigger(site: ClientSite, deleted: SampleIds) -> TriggerPattern | None:
    """The trigger this site knows its deleted records carry (its poisoned records), if any."""
    experiment = site.config.experiment
    if experiment.corrupt_kind != "trigger" or not len(site.corrupted):
        return None
    if not bool(np.isin(site.corrupted, deleted).any()):
        return None
    return TriggerPattern(size=experiment.trigger_size)
