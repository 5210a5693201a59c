"""Evaluation of unlearning: FA/RA/TA, MIA, KL and Avg.D to RT, backdoor ASR.

The definitions are those of docs/METRICS.md and are used everywhere: every fraction is in
[0, 1], Avg.D alone is in percentage points. MIA is ``membership_score`` (AUC of LiRA's
logit-scaled confidence on D_f against unseen data), on the server and on the clients alike;
the SalUn SVC MIA-efficacy is an extra (``mia_svc``). ``evaluate_unlearning`` computes the
whole row of a results table in one call.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedunlearn.data.indexed import IndexedDataset
from fedunlearn.metrics.accuracy import (
    DEFAULT_BATCH_SIZE,
    EvalResult,
    accuracy,
    accuracy_from_logits,
    evaluate_loss_accuracy,
    predict_logits,
)
from fedunlearn.metrics.backdoor import BackdoorSpec, attack_success_rate
from fedunlearn.metrics.divergence import AVG_GAP_KEYS, average_gap, kl_divergence, kl_to_reference
from fedunlearn.metrics.mia import (
    DEFAULT_MAX_NONMEMBERS,
    DEFAULT_MAX_SHADOW,
    MembershipScore,
    MIAResult,
    SeedSpread,
    logit_confidence,
    membership_auc,
    membership_score,
    membership_score_from_logits,
    mia_efficacy,
    mia_from_probabilities,
    mia_from_shadow_probabilities,
    mia_svc,
    nonmember_positions,
    probabilities,
    shadow_positions,
    spread_over_seeds,
)

logger = logging.getLogger(__name__)

#: Default cap on the retained samples RA is measured on (a seeded random subset).
DEFAULT_MAX_RETAIN_EVAL = 10_000

__all__ = [
    "AVG_GAP_KEYS",
    "BackdoorSpec",
    "EvalResult",
    "MIAResult",
    "MembershipScore",
    "SeedSpread",
    "UnlearningMetrics",
    "accuracy",
    "attack_success_rate",
    "average_gap",
    "evaluate_loss_accuracy",
    "evaluate_unlearning",
    "kl_divergence",
    "kl_to_reference",
    "logit_confidence",
    "membership_auc",
    "membership_score",
    "membership_score_from_logits",
    "mia_efficacy",
    "mia_from_probabilities",
    "mia_svc",
    "predict_logits",
    "spread_over_seeds",
]


@dataclass(frozen=True)
class UnlearningMetrics:
    """One row of a results table; fractions in [0, 1], ``None`` where not computed.

    FA, RA, TA: accuracy on the forget, retain and test sets. MIA: ``membership_score``, the
    AUC of LiRA's logit-scaled confidence on D_f against unseen test samples (0.5: D_f looks
    unseen; 1: memorised), with its DeLong standard error ``mia_std_error``.
    ``mia_svc`` / ``mia_svc_entropy`` / ``mia_svc_modified_entropy``: the SalUn SVC
    MIA-efficacy of the three features (fraction of D_f predicted non-member), for
    comparison with papers only. ``kl_rt_forget`` / ``kl_rt_test``: mean ``KL(p_RT || p_model)``
    in nats on the forget and test sets. ``backdoor_asr``: attack success rate of the trigger.

    >>> m = UnlearningMetrics(FA=0.75, RA=0.9, TA=0.8, MIA=0.6)
    >>> m.average_gap_to(UnlearningMetrics(FA=0.5, RA=0.9, TA=0.8, MIA=0.6))
    6.25
    """

    FA: float
    RA: float
    TA: float
    MIA: float
    mia_std_error: float | None = None
    mia_svc: float | None = None
    mia_svc_entropy: float | None = None
    mia_svc_modified_entropy: float | None = None
    kl_rt_forget: float | None = None
    kl_rt_test: float | None = None
    backdoor_asr: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """All fields by name (JSON-ready; ``nan`` stays ``nan``)."""
        return dataclasses.asdict(self)

    def average_gap_to(self, reference: UnlearningMetrics) -> float:
        """Avg.D to ``reference`` (normally RT's metrics), in percentage points."""
        return average_gap(self.to_dict(), reference.to_dict())


def _retain_eval_subset(retain: IndexedDataset, max_retain_eval: int | None, seed: int) -> IndexedDataset:
    """``retain``, or a seeded random ``max_retain_eval`` of it (a stream apart from the MIA's)."""
    if max_retain_eval is not None and max_retain_eval < 1:
        raise ValueError(f"max_retain_eval must be >= 1 or None, got {max_retain_eval}")
    if max_retain_eval is None or len(retain) <= max_retain_eval:
        return retain
    rng = np.random.default_rng([seed, 1])
    return retain.select(np.sort(rng.choice(len(retain), size=max_retain_eval, replace=False)))


def _svc_with_logits(
    model: nn.Module,
    forget: tuple[torch.Tensor, torch.Tensor],
    retain: IndexedDataset,
    test: tuple[torch.Tensor, torch.Tensor],
    *,
    seed: int,
    max_shadow: int | None,
    batch_size: int,
    device: torch.device | str | None,
) -> MIAResult:
    """``mia_svc`` reusing already computed forget and test logits."""
    retain_pos, test_pos = shadow_positions(len(retain), len(test[0]), seed=seed, max_shadow=max_shadow)
    members = retain.select(retain_pos)
    member_logits = predict_logits(model, members, batch_size=batch_size, device=device)
    t_idx = torch.from_numpy(test_pos)
    return mia_from_shadow_probabilities(
        probabilities(forget[0]),
        forget[1],
        probabilities(member_logits),
        members.labels,
        probabilities(test[0][t_idx]),
        test[1][t_idx],
    )


def _membership(
    model: nn.Module,
    forget: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    nonmembers: IndexedDataset | None,
    *,
    seed: int,
    max_nonmembers: int | None,
    batch_size: int,
    device: torch.device | str | None,
) -> MembershipScore:
    """``membership_score`` against ``nonmembers``, or against the test set (its logits reused)."""
    if nonmembers is not None:
        positions = nonmember_positions(len(nonmembers), seed=seed, max_nonmembers=max_nonmembers)
        chosen = nonmembers.select(positions)
        test = (predict_logits(model, chosen, batch_size=batch_size, device=device), chosen.labels)
        max_nonmembers = None
    return membership_score_from_logits(
        forget_logits=forget[0],
        forget_labels=forget[1],
        nonmember_logits=test[0],
        nonmember_labels=test[1],
        seed=seed,
        max_nonmembers=max_nonmembers,
    )


def _reference_kl(
    reference_model: nn.Module | None,
    forget: IndexedDataset,
    test: IndexedDataset,
    logits: tuple[torch.Tensor, torch.Tensor],
    *,
    batch_size: int,
    device: torch.device | str | None,
) -> tuple[float | None, float | None]:
    """``KL(p_RT || p_model)`` on the forget and test sets, or ``(None, None)`` without RT."""
    if reference_model is None:
        return None, None
    ref_forget = predict_logits(reference_model, forget, batch_size=batch_size, device=device)
    ref_test = predict_logits(reference_model, test, batch_size=batch_size, device=device)
    return kl_to_reference(ref_forget, logits[0]), kl_to_reference(ref_test, logits[1])


def evaluate_unlearning(
    model: nn.Module,
    *,
    forget: IndexedDataset,
    retain: IndexedDataset,
    test: IndexedDataset,
    reference_model: nn.Module | None = None,
    backdoor: BackdoorSpec | None = None,
    seed: int = 0,
    nonmembers: IndexedDataset | None = None,
    max_nonmembers: int | None = DEFAULT_MAX_NONMEMBERS,
    max_shadow: int | None = DEFAULT_MAX_SHADOW,
    svc: bool = True,
    max_retain_eval: int | None = DEFAULT_MAX_RETAIN_EVAL,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> UnlearningMetrics:
    """FA, RA, TA, MIA and, if asked, KL to RT and backdoor ASR, in one call.

    Parameters
    ----------
    model
        The model to evaluate (its train/eval mode is restored afterwards).
    forget, retain, test
        D_f (with the labels it was trained on), D_r and the test set.
    reference_model
        RT; when given, ``kl_rt_forget`` and ``kl_rt_test`` are computed.
    backdoor
        Target label and trigger; when given, ``backdoor_asr`` is computed on ``test``.
    seed
        Seeds the MIA's non-member sample, the SVC shadow sampling and the RA subset.
    nonmembers, max_nonmembers
        The MIA's non-members (``membership_score``), at most ``max_nonmembers`` of them
        (a seeded subset). ``None``: the test set. Pass held-out data drawn like D_f when
        D_f is atypical, e.g. test samples mislabelled like the forgotten mislabelled
        records (docs/METRICS.md).
    max_shadow, svc
        Cap on each side of the SVC attack's shadow set (``mia_svc``); ``svc=False`` skips
        the SVC extras (three SVC fits, seconds each), leaving them ``None``.
    max_retain_eval
        RA is measured on a seeded random subset of at most this many retained samples (D_r
        can be the whole training set; 10,000 samples give RA within about +-1 point at 95%
        confidence). ``None``: all of D_r.
    batch_size, device
        Passed to ``predict_logits``.

    Returns
    -------
    UnlearningMetrics
        FA and the MIA fields are ``nan`` for an empty forget set. ``MIA`` is
        ``membership_score(model, forget=forget, nonmembers=nonmembers or test, seed=seed,
        max_nonmembers=max_nonmembers).auc``, the definition the clients verify with.
    """
    on_forget = (predict_logits(model, forget, batch_size=batch_size, device=device), forget.labels)
    on_test = (predict_logits(model, test, batch_size=batch_size, device=device), test.labels)
    mia = _membership(
        model,
        on_forget,
        on_test,
        nonmembers,
        seed=seed,
        max_nonmembers=max_nonmembers,
        batch_size=batch_size,
        device=device,
    )
    attack = None
    if svc:
        attack = _svc_with_logits(
            model, on_forget, retain, on_test, seed=seed, max_shadow=max_shadow, batch_size=batch_size, device=device
        )
    logits = (on_forget[0], on_test[0])
    kl_forget, kl_test = _reference_kl(reference_model, forget, test, logits, batch_size=batch_size, device=device)
    asr = None
    if backdoor is not None:
        asr = attack_success_rate(
            model,
            test,
            target_label=backdoor.target_label,
            pattern=backdoor.pattern,
            batch_size=batch_size,
            device=device,
        )
    retain_eval = _retain_eval_subset(retain, max_retain_eval, seed)
    result = UnlearningMetrics(
        FA=accuracy_from_logits(logits[0], forget.labels),
        RA=accuracy(model, retain_eval, batch_size=batch_size, device=device),
        TA=accuracy_from_logits(logits[1], test.labels),
        MIA=mia.auc,
        mia_std_error=mia.std_error,
        mia_svc=None if attack is None else attack.confidence,
        mia_svc_entropy=None if attack is None else attack.entropy,
        mia_svc_modified_entropy=None if attack is None else attack.modified_entropy,
        kl_rt_forget=kl_forget,
        kl_rt_test=kl_test,
        backdoor_asr=asr,
    )
    logger.debug("unlearning metrics: %s", result)
    return result
